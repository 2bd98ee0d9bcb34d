"""Losses: target-only cross-entropy, knowledge distillation, hidden-state matching.

Conventions: ``labels`` holds the token id to predict at each position, ``-100`` where no
loss is taken (prompt, padding). Causal models predict token t+1 at position t, so
logits and labels are shifted by one before comparing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from sentiray.models.inputs import IGNORE  # noqa: F401 (re-exported: the loss side of the same convention)


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align position t's logits with token t+1."""
    return logits[:, :-1, :], labels[:, 1:]


def target_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over target tokens only."""
    logits, labels = shift(logits, labels)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE)


def target_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The (n_target_tokens, vocab) logits that predict target tokens, in order."""
    logits, labels = shift(logits, labels)
    return logits[labels != IGNORE]


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    """(batch, length) True at the positions whose logits predict a target token (token t+1)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask


def target_tokens(labels: torch.Tensor) -> torch.Tensor:
    """The target token ids, in the order of :func:`target_logits`."""
    shifted = labels[:, 1:]
    return shifted[shifted != IGNORE]


def target_forward(model: torch.nn.Module, inputs: dict[str, Any], labels: torch.Tensor, **kwargs: Any):
    """Run ``model`` and return (its output, the (n_target_tokens, vocab) logits that predict
    ``labels``' target tokens, in order).

    The model is asked for those positions' logits only (``logits_to_keep`` as a boolean mask,
    which transformers' generative models take): the LM head over every prompt and padding
    position was a fifth of a tiny model's step, and on a real vocabulary (152k for Qwen2.5)
    the full logits are most of the activation memory. A model that returns every position's
    logits anyway has them gathered here.
    """
    out = model(**inputs, logits_to_keep=target_mask(labels), **kwargs)
    logits = out.logits
    if logits.dim() == 3:
        logits = target_logits(logits, labels)
    return out, logits


def gathered_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of gathered target logits (:func:`target_forward`) against their tokens;
    the same number as :func:`target_ce` on the full logits."""
    return F.cross_entropy(logits.float(), tokens)


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float, scale_tau2: bool = True) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher / tau) || softmax(student / tau)).

    ``student`` and ``teacher`` are (n, vocab) logits of the same target tokens. Scaling by
    tau^2 keeps the gradient size independent of tau (Hinton et al.); it is a config choice.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    if student.numel() == 0:
        return student.sum() * 0.0
    log_p_s = F.log_softmax(student.float() / tau, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / tau, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
    return kl * (tau * tau) if scale_tau2 else kl


def distill_stream_loss(
    student_target_logits: torch.Tensor,
    student_targets: torch.Tensor,
    teacher_target_logits: torch.Tensor,
    lambda_kd: float,
    tau: float,
    scale_tau2: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1 - lambda) * CE + lambda * KL over one stream's target tokens; returns (loss, ce, kl).

    Both models' logits come gathered at their own target positions (:func:`target_forward`,
    :func:`target_logits`), with ``student_targets`` the tokens they predict
    (:func:`target_tokens`), so teacher and student may see different prompt lengths (for
    instance different numbers of image tokens) as long as the targets are the same tokens.
    """
    ce = gathered_ce(student_target_logits, student_targets)
    s = student_target_logits
    t = teacher_target_logits
    if t.size(-1) != s.size(-1):
        # Vocabularies were aligned on load; padded rows beyond the tokenizer never occur
        # as targets, so comparing over the shared prefix is exact.
        v = min(t.size(-1), s.size(-1))
        s, t = s[..., :v], t[..., :v]
    kl = kd_kl(s, t, tau, scale_tau2)
    return (1 - lambda_kd) * ce + lambda_kd * kl, ce, kl


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, projection: torch.nn.Module) -> torch.Tensor:
    """MSE between projected student states and teacher states at matching target tokens.

    Both inputs are (n_target_tokens, dim) rows gathered with the same mask as the logits.
    """
    if student_hidden.numel() == 0:
        return student_hidden.sum() * 0.0
    return F.mse_loss(projection(student_hidden.float()), teacher_hidden.float())
