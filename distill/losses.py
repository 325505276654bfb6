"""Distillation losses. Shapes: B batch, T target length, V vocabulary, D model width, L supervised layer pairs.

Every loss averages over the target positions that `mask` keeps (labels != -100) and returns 0, not NaN, when the mask
keeps nothing (a batch of padding only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against labels (B, T), -100 ignored; computed in fp32.

    Summed, then divided by the kept-token count clamped at 1: the mean of `F.cross_entropy`, but 0 on a batch of
    padding only, without reading a device tensor back to Python (no host sync per step).
    """
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                           label_smoothing=smoothing, reduction="sum")
    return loss / (labels != -100).sum().clamp(min=1)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float = 2.0) -> torch.Tensor:
    """KL(teacher/T || student/T) * T^2 per target token (Hinton et al.), summed over V, averaged over kept tokens.

    student_logits, teacher_logits: (B, T, V); mask: (B, T) bool. The T^2 factor keeps the gradient scale of the soft
    targets independent of the temperature, so `alpha_ce` means the same at any T.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} != teacher logits "
                         f"{tuple(teacher_logits.shape)}: student and teacher need the same vocabulary")
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, T, V)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)  # (B, T)
    kept = mask.sum()
    return (kl * mask).sum() / kept.clamp(min=1) * temperature**2


def hidden_mse(student_states: list[torch.Tensor], teacher_states: list[torch.Tensor], mask: torch.Tensor,
               normalize: bool = True) -> torch.Tensor:
    """Mean squared error between paired hidden states, each (B, T, D), over kept positions of mask (B, T).

    With `normalize`, each state is layer-normalized first (no affine weights), as in Shleifer's SFT+hidden runs: the
    student then matches the direction of the teacher's states rather than their scale.
    """
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError(f"need as many student as teacher states (got {len(student_states)} and "
                         f"{len(teacher_states)}), at least one")
    s = torch.stack([h.float() for h in student_states])  # (L, B, T, D)
    t = torch.stack([h.float() for h in teacher_states])
    if normalize:
        s = F.layer_norm(s, s.shape[-1:])
        t = F.layer_norm(t, t.shape[-1:])
    weights = mask.to(s.dtype)[None, :, :, None]  # (1, B, T, 1)
    denominator = (weights.sum() * s.shape[0] * s.shape[-1]).clamp(min=1)
    return ((s - t) ** 2 * weights).sum() / denominator


def default_hidden_pairs(layer_map: list[int], n_teacher: int) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs whose outputs the hidden loss matches.

    Student layer i was copied from teacher layer layer_map[i] and stands in for the teacher layers up to the next
    copied one, so its output imitates the output of the teacher layer just before layer_map[i + 1] (the last student
    layer imitates the teacher's last). 6->2 with [0, 5]: pairs (0, 4), (1, 5).
    """
    ends = [nxt - 1 for nxt in layer_map[1:]] + [n_teacher - 1]
    return list(enumerate(ends))


def topk_distill_kl(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_ids: torch.Tensor,
                    mask: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """`distill_kl` against a teacher kept as its top k tokens per position (`distill.logit_cache`), times T^2.

    teacher_logprobs, teacher_ids: (B, T, k), the teacher's log-probabilities at temperature T of its k most likely
    tokens and their ids. The teacher's distribution is those k tokens plus one bucket holding the rest of its mass,
    and the student's is grouped the same way (its probability of the k tokens, and the rest): the KL between the
    two groupings, never above the full KL, and equal to it when the teacher's rest is 0. Padded positions may hold
    anything finite; they are masked out.
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, T, V)
    s_top = s.gather(-1, teacher_ids.long())  # (B, T, k)
    t_top = teacher_logprobs.float()
    p_top = t_top.exp()
    p_rest = (1 - p_top.sum(-1)).clamp(min=0)  # (B, T)
    # log of the student's rest, 1 - sum(top), computed as log(-expm1(logsumexp)) to stay accurate near 0 and 1
    s_top_mass = torch.logsumexp(s_top, dim=-1).clamp(max=-1e-6)
    s_rest = torch.log(-torch.expm1(s_top_mass))
    kl = (p_top * (t_top - s_top)).sum(-1) + torch.xlogy(p_rest, p_rest) - p_rest * s_rest  # (B, T)
    kl = torch.where(mask, kl, torch.zeros_like(kl))
    return kl.sum() / mask.sum().clamp(min=1) * temperature**2
