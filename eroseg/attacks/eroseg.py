"""EroSeg: select sensitive pixels by confidence, then erode the correct region from the fooled one.

This project's specification of Song et al. (2026), "Erosion Attack for
Adversarial Training to Enhance Semantic Segmentation Robustness": the paper
selects sensitive pixels by pixel-level confidence and progressively
propagates the perturbation to higher-confidence pixels. At step t
(T steps; c = p_y the confidence of the true class at each valid pixel;
K the correctly classified valid pixels, F the valid pixels already fooled):

1. sensitive pixels ``S_t = {i in K : c_i <= Q_t}``, ``Q_t`` the per-image
   ``q_t``-quantile of c over K, ``q_t`` rising from ``q0`` to 1;
2. erosion front ``E_t = K ∩ dilate_k(F)``: correct pixels in a k x k
   neighbourhood of a fooled pixel;
3. weights 1 on ``S_t ∪ E_t``, ``gamma`` on F, 0 elsewhere; loss
   ``sum(w * CE) / N`` and the usual signed (Linf) or normalised (L2) step.

Quantile: the nearest order statistic, ``Q_t = sort(c over K)[round(q_t * (n_K - 1))]``,
so ``q_t = 0`` keeps the least confident correct pixel (and its ties) and
``q_t = 1`` all of K. Confidences are ranked by the log-odds of the true class,
``u_y - logsumexp_{j != y} u_j``, which orders pixels exactly as ``p_y`` does
but does not saturate: in float32, ``p_y`` rounds to 1.0 for every pixel with
a margin above about 17, and those ties would put all of them in ``S_t`` at
once.

Fallback: an image that still has correct pixels but no attacked pixel (for
example "erosion only" at t = 0, before anything is fooled) gets weight 1 on
all of K, so the attack never stalls; the erosion-only ablation therefore
starts like PGD until a fooled region exists.

Everything is vectorised over the batch on the inputs' device: one sort per
image row for the quantile, one ``max_pool2d`` for the dilation.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from eroseg.attacks.core import class_map, run_attack

SCHEDULES = ("linear", "cosine", "constant")


def quantile_schedule(t: int, steps: int, q0: float, schedule: str = "linear") -> float:
    """``q_t``: from ``q0`` at t = 0 to 1 at t = T - 1 (``constant``: always ``q0``)."""
    if schedule == "constant":
        return q0
    r = t / max(steps - 1, 1)
    if schedule == "linear":
        return q0 + (1 - q0) * r
    if schedule == "cosine":
        return q0 + (1 - q0) * (1 - math.cos(math.pi * r)) / 2
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def order_statistic(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per row ``b``, the ``idx[b]``-th smallest (0-based) of ``values[b]``; ``[B, N]``, ``[B]`` -> ``[B]``.

    On CUDA a batched sort. On CPU, where sorting is the slow part of an EroSeg
    step, one batched ``kthvalue``: row ``b`` is prefixed with
    ``k_max - 1 - idx[b]`` copies of -inf (and +inf for the rest of the prefix),
    so the common ``k_max``-th smallest of every padded row is its own
    ``idx[b]``-th smallest. Both give exactly the same values.
    """
    if values.is_cuda:
        return values.sort(dim=1).values.gather(1, idx.unsqueeze(1)).squeeze(1)
    k_max = int(idx.max()) + 1
    if k_max == 1:
        return values.min(dim=1).values
    cols = torch.arange(k_max - 1, device=values.device)
    n_low = (k_max - 1 - idx).unsqueeze(1)
    prefix = torch.where(cols.unsqueeze(0) < n_low, -math.inf, math.inf).to(values.dtype)
    return torch.cat([prefix, values], dim=1).kthvalue(k_max, dim=1).values


def eroseg_masks(
    logits: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    *,
    q: float,
    kernel_size: int = 3,
    gamma: float = 0.0,
    front: bool = True,
    selection: bool = True,
) -> tuple[torch.Tensor, dict]:
    """EroSeg's weights and masks for one step.

    Args:
        logits: ``[B, C, H, W]``.
        labels: ``[B, H, W]``.
        valid: ``[B, H, W]`` bool, False at void pixels.
        q: quantile level ``q_t`` in [0, 1].
        kernel_size: odd size k of the dilation neighbourhood.
        gamma: weight on already fooled pixels.
        front: use the erosion front E_t.
        selection: use the sensitive pixels S_t.

    Returns:
        ``(weights [B, H, W], {"sensitive", "front", "attacked", "fooled", "correct"})`` with bool masks.
    """
    b = logits.shape[0]
    y = torch.where(valid, labels, torch.zeros_like(labels))
    pred = class_map(logits)
    correct = valid & (pred == labels)
    fooled = valid & (pred != labels)
    if selection:
        # Rank by the log-odds of the true class, log(p_y / (1 - p_y)): the same order as p_y, but
        # without the ties p_y = 1.0 that float32 softmax gives every confidently correct pixel.
        u_y = logits.gather(1, y.unsqueeze(1))
        others = logits.scatter(1, y.unsqueeze(1), -math.inf)
        conf = (u_y - others.logsumexp(1, keepdim=True)).squeeze(1)
        c = torch.where(correct, conf, torch.full_like(conf, math.inf)).flatten(1)
        n_k = correct.flatten(1).sum(1)
        idx = torch.round(q * (n_k - 1).clamp_min(0).to(conf.dtype)).long()
        thresh = order_statistic(c, idx).view(b, 1, 1)
        sensitive = correct & (conf <= thresh)
    else:
        sensitive = torch.zeros_like(correct)
    if front:
        grown = F.max_pool2d(fooled.unsqueeze(1).to(logits.dtype), kernel_size, stride=1, padding=kernel_size // 2)
        erosion = correct & (grown.squeeze(1) > 0)
    else:
        erosion = torch.zeros_like(correct)
    attacked = sensitive | erosion
    stalled = ~attacked.flatten(1).any(1) & correct.flatten(1).any(1)
    attacked = torch.where(stalled.view(b, 1, 1), correct, attacked)
    weights = attacked.to(logits.dtype) + gamma * fooled.to(logits.dtype)
    masks = {"sensitive": sensitive, "front": erosion, "attacked": attacked, "fooled": fooled, "correct": correct}
    return weights, masks


def eroseg(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    norm: str = "linf",
    random_start: bool = True,
    ignore_index: int = 255,
    targeted: bool = False,
    best_iterate: bool = False,
    generator: torch.Generator | None = None,
    amp: bool = False,
    callback: Callable[[dict], None] | None = None,
    q0: float = 0.2,
    schedule: str = "linear",
    kernel_size: int = 3,
    gamma: float = 0.0,
    front: bool = True,
    selection: bool = True,
) -> torch.Tensor:
    """EroSeg attack (see the module docstring for the exact definition).

    Args:
        model, images, labels, eps, step_size, steps, norm, random_start,
        ignore_index, targeted, best_iterate, generator, amp, callback:
            as :func:`eroseg.attacks.pgd.pgd`; the callback also receives the
            ``sensitive``, ``front`` and ``attacked`` masks of each step.
        q0: starting quantile level of the sensitive-pixel selection, in [0, 1].
        schedule: ``linear`` (default), ``cosine`` or ``constant`` rise of ``q_t``.
        kernel_size: odd neighbourhood size k of the erosion front.
        gamma: loss weight on already fooled pixels (default 0).
        front: use the erosion front (False: "selection only" ablation).
        selection: use the sensitive-pixel selection (False: "erosion only" ablation).

    Returns:
        Adversarial images ``[B, 3, H, W]``.
    """
    if not 0.0 <= q0 <= 1.0:
        raise ValueError(f"q0 must be in [0, 1], got {q0!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not (isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1):
        raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size!r}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    if not (front or selection):
        raise ValueError("front and selection cannot both be False (nothing would be attacked); use pgd instead")

    def weight_fn(t, total, logits, lab, valid):
        q = quantile_schedule(t, total, q0, schedule)
        return eroseg_masks(logits, lab, valid, q=q, kernel_size=kernel_size, gamma=gamma, front=front,
                            selection=selection)

    return run_attack(
        model, images, labels, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start,
        ignore_index=ignore_index, targeted=targeted, best_iterate=best_iterate, generator=generator, amp=amp,
        callback=callback, weight_fn=weight_fn,
    )
