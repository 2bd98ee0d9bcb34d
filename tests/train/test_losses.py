"""The KD and target-only losses against direct computations on small tensors."""

import math

import pytest
import torch

from sentiray.train import losses


def make(batch=2, length=6, vocab=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g)
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    return logits, labels


def test_target_ce_only_counts_target_tokens():
    logits, labels = make()
    labels[0, :3] = -100  # prompt of sample 0
    labels[1, :2] = -100  # prompt of sample 1
    labels[1, 5] = -100  # padding of sample 1
    # direct: position t predicts labels[t + 1]
    total, count = 0.0, 0
    for b in range(2):
        for t in range(5):
            y = labels[b, t + 1].item()
            if y == -100:
                continue
            logp = torch.log_softmax(logits[b, t], -1)[y].item()
            total -= logp
            count += 1
    assert count == 3 + 3
    assert losses.target_ce(logits, labels).item() == pytest.approx(total / count, rel=1e-5)
    # changing logits at prompt/padding positions changes nothing
    logits2 = logits.clone()
    logits2[0, 0:2] += 10
    logits2[1, 4:] += 10  # position 4 predicts label[5] = padding, position 5 predicts nothing
    assert losses.target_ce(logits2, labels).item() == pytest.approx(losses.target_ce(logits, labels).item(), rel=1e-6)


@pytest.mark.parametrize("tau, scale", [(1.0, True), (2.0, True), (2.0, False), (4.0, True)])
def test_kd_kl_matches_direct_formula(tau, scale):
    s, _ = make(1, 4, 7, seed=1)
    t, _ = make(1, 4, 7, seed=2)
    s, t = s[0], t[0]
    direct = 0.0
    for i in range(4):
        pt = torch.softmax(t[i] / tau, -1)
        ps = torch.softmax(s[i] / tau, -1)
        direct += sum(pt[v].item() * math.log(pt[v].item() / ps[v].item()) for v in range(7))
    direct /= 4
    if scale:
        direct *= tau * tau
    assert losses.kd_kl(s, t, tau, scale).item() == pytest.approx(direct, rel=1e-5)
    assert losses.kd_kl(t, t, tau).item() == pytest.approx(0.0, abs=1e-6)


def test_distill_stream_loss_masks_and_mixes():
    lam, tau = 0.3, 2.0
    s_logits, labels = make(2, 6, 5, seed=3)
    labels[:, :3] = -100  # prompt
    labels[1, 5] = -100  # padding
    # the teacher sees a longer prompt (say more image tokens): 2 extra leading positions
    t_full = torch.randn(2, 8, 5, generator=torch.Generator().manual_seed(4))
    t_labels = torch.cat([torch.full((2, 2), -100), labels], dim=1)
    t_target = losses.target_logits(t_full, t_labels)
    s_target = losses.target_logits(s_logits, labels)
    loss, ce, kl = losses.distill_stream_loss(s_target, losses.target_tokens(labels), t_target, lam, tau)
    # direct computation over the target positions only
    pairs = [(b, t) for b in range(2) for t in range(5) if labels[b, t + 1] != -100]
    assert len(pairs) == 3 + 2
    ce_direct = -sum(torch.log_softmax(s_logits[b, t], -1)[labels[b, t + 1]].item() for b, t in pairs) / len(pairs)
    kl_direct = 0.0
    for b, t in pairs:
        pt = torch.softmax(t_full[b, t + 2] / tau, -1)
        ps = torch.softmax(s_logits[b, t] / tau, -1)
        kl_direct += (pt * (pt.log() - ps.log())).sum().item()
    kl_direct = kl_direct / len(pairs) * tau * tau
    assert ce.item() == pytest.approx(ce_direct, rel=1e-5)
    assert kl.item() == pytest.approx(kl_direct, rel=1e-5)
    assert loss.item() == pytest.approx((1 - lam) * ce_direct + lam * kl_direct, rel=1e-5)


def test_kd_gradient_flows_to_student_only():
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5)
    losses.kd_kl(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_kd_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        losses.kd_kl(torch.zeros(2, 5), torch.zeros(3, 5), 1.0)


def test_hidden_mse_with_projection():
    proj = torch.nn.Linear(4, 6, bias=False)
    s, t = torch.randn(5, 4), torch.randn(5, 6)
    assert losses.hidden_mse(s, t, proj).item() == pytest.approx(((proj(s) - t) ** 2).mean().item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["vlm", "causal_lm"])
def test_target_forward_computes_only_the_target_logits(tiny_models, kind):
    """The model is asked for the target positions' logits only, and they are the full forward's."""
    from sentiray.models.inputs import PromptEncoder
    from sentiray.models.loading import load_model

    model, processor = load_model(tiny_models[kind], kind=kind)
    model.eval()
    encoder = PromptEncoder(processor)
    from PIL import Image

    image = Image.new("RGB", (32, 32), (200, 30, 30)) if kind == "vlm" else None
    items = [
        encoder.encode("Is this post positive?", image, "Yes, it is positive.", max_length=128),
        encoder.encode("A longer prompt about the post, to pad the other row.", image, "No.", max_length=128),
    ]
    batch = encoder.collate(items)
    labels = batch.pop("labels")
    with torch.no_grad():
        full = model(**batch).logits
        out, gathered = losses.target_forward(model, batch, labels)
    n_targets = int((labels[:, 1:] != -100).sum())
    assert out.logits.dim() == 2 and out.logits.shape[0] == n_targets  # only those positions were computed
    assert torch.allclose(gathered, losses.target_logits(full, labels), atol=1e-5)
    ce = losses.gathered_ce(gathered, losses.target_tokens(labels))
    assert ce.item() == pytest.approx(losses.target_ce(full, labels).item(), rel=1e-5)
