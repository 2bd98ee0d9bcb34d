"""The MSE-Adapter module: the paper's parameter count, packed sequences, ablations, the layout."""

import pytest
import torch

from sentiray.models.mse_adapter import AdapterShape, Layout, MseAdapter, count_trainable

MOSEI = AdapterShape(
    hidden_size=4096,
    audio_dim=74,
    vision_dim=35,
    width=256,
    audio_hidden=64,
    vision_hidden=32,
    pseudo_tokens=4,
    scales=(8, 32, 16),
    layer_norm=False,
)


def test_paper_parameter_count_at_mosei_sizes():
    # ChatGLM3-6B on MOSEI (method.md): 2,631,692 trainable parameters, 0.042% of 6.25B
    adapter = MseAdapter(MOSEI)
    assert count_trainable(adapter) == 2_631_692
    parts = {name: sum(p.numel() for p in module.parameters()) for name, module in adapter.named_children()}
    # LSTM gates 4 x (h x (in + h) + 2h) plus the linear h -> 256 (weights and bias)
    assert parts["audio"] == 4 * (64 * (74 + 64) + 2 * 64) + 64 * 256 + 256 == 52_480
    assert parts["vision"] == 4 * (32 * (35 + 32) + 2 * 32) + 32 * 256 + 256 == 17_280
    assert parts["mixer"] == 4096 * 256 + 256  # W_t, d -> 256
    # three MLPs 256 -> d/k -> 256, the weighted sum (3 weights + bias), the projection 256 -> d
    mlps = sum(256 * (4096 // k) + 4096 // k + (4096 // k) * 256 + 256 for k in (8, 32, 16))
    assert parts["fusion"] == mlps + 4 + 256 * 4096 + 4096
    assert parts["tokens"] == 2 * 4  # alpha_j, beta_j
    assert 2_631_692 / 6.25e9 == pytest.approx(0.00042, abs=1e-5)


def test_ablations_remove_exactly_their_part():
    full = count_trainable(MseAdapter(MOSEI))
    no_tgm = AdapterShape(**{**MOSEI.to_dict(), "text_guide": False})
    no_msf = AdapterShape(**{**MOSEI.to_dict(), "multi_scale": False})
    with_norm = AdapterShape(**{**MOSEI.to_dict(), "layer_norm": True})
    text_only = AdapterShape(**{**MOSEI.to_dict(), "text_only": True})
    assert count_trainable(MseAdapter(no_tgm)) == full - (4096 * 256 + 256)
    msf = sum(256 * (4096 // k) + 4096 // k + (4096 // k) * 256 + 256 for k in (8, 32, 16)) + 4
    assert count_trainable(MseAdapter(no_msf)) == full - msf
    assert count_trainable(MseAdapter(with_norm)) == full + 2 * 256
    assert count_trainable(MseAdapter(text_only)) == full - 52_480 - 17_280  # no audio / video encoders


def _inputs(batch=3, d=64, length=6, lengths_a=(5, 2, 7), lengths_v=(3, 4, 1)):
    torch.manual_seed(0)
    text = torch.randn(batch, length, d)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    audio = torch.randn(batch, max(lengths_a), 5)
    vision = torch.randn(batch, max(lengths_v), 3)
    return text, mask, audio, torch.tensor(lengths_a), vision, torch.tensor(lengths_v)


def test_packed_sequences_ignore_padding_frames_and_text_padding():
    adapter = MseAdapter(AdapterShape(64, 5, 3, width=16, audio_hidden=8, vision_hidden=4, pseudo_tokens=3)).eval()
    text, mask, audio, la, vision, lv = _inputs()
    out = adapter(text, mask, audio, la, vision, lv)
    assert out.shape == (3, 3, 64)
    noisy_audio, noisy_vision, noisy_text = audio.clone(), vision.clone(), text.clone()
    noisy_audio[1, 2:] = 1e3  # beyond row 1's 2 real frames
    noisy_vision[2, 1:] = -1e3
    noisy_text[0, :2] = 1e3  # masked text padding
    again = adapter(noisy_text, mask, noisy_audio, la, noisy_vision, lv)
    assert torch.allclose(out, again, atol=1e-6)
    changed = audio.clone()
    changed[1, 0] += 1.0  # a real frame does change the answer
    assert not torch.allclose(out[1], adapter(text, mask, changed, la, vision, lv)[1])


def test_pseudo_tokens_are_alpha_h_plus_beta():
    adapter = MseAdapter(
        AdapterShape(32, 5, 3, width=16, audio_hidden=8, vision_hidden=4, pseudo_tokens=4, scales=(8, 4, 2))
    )
    text, mask, audio, la, vision, lv = _inputs(d=32)
    out = adapter(text, mask, audio, la, vision, lv)
    a, v = adapter.audio(audio, la), adapter.vision(vision, lv)
    h = adapter.fusion(adapter.mixer(a, v, (text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)))
    alpha, beta = adapter.tokens.weight[:, 0], adapter.tokens.bias
    assert torch.allclose(out, alpha[None, :, None] * h[:, None, :] + beta[None, :, None], atol=1e-5)


def test_text_only_needs_no_features_and_bad_scales_are_refused():
    adapter = MseAdapter(AdapterShape(64, 0, 0, width=16, pseudo_tokens=2, text_only=True))
    text, mask, *_ = _inputs()
    assert adapter(text, mask).shape == (3, 2, 64)
    with pytest.raises(ValueError, match="d/k must be at least 1"):
        AdapterShape(16, 5, 3, scales=(8, 32))


def test_layout_pads_text_left_to_a_fixed_length():
    layout = Layout(head=(7, 8), pseudo_tokens=3, text_length=4, tail=(9,), pad_id=0, eos_id=1)
    ids, mask, cut = layout.prompt([21, 22])
    assert ids == [7, 8, 0, 0, 0, 0, 0, 21, 22, 9] and mask == [1, 1, 1, 1, 1, 0, 0, 1, 1, 1] and not cut
    assert layout.prompt_length == len(ids) == 10 and layout.pseudo_start == 2 and layout.text_start == 5
    ids, _, cut = layout.prompt([1, 2, 3, 4, 5, 6])
    assert cut and ids[5:9] == [1, 2, 3, 4]
