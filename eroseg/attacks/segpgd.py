"""SegPGD attack: PGD whose loss weight moves from correctly classified to misclassified pixels over the steps.

Gu et al., "SegPGD: An Effective and Efficient Adversarial Attack for
Evaluating and Boosting Segmentation Robustness", ECCV 2022.
https://arxiv.org/abs/2207.12391
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from eroseg.attacks.core import class_map, run_attack
from eroseg.conventions import DEFAULT_EPS, DEFAULT_STEPS, IGNORE_INDEX


def segpgd_lambda(t: int, steps: int) -> float:
    """``lambda_t = t / (2T)``: 0 at the first step, just under 1/2 at the last.

    Args:
        t: step index, 0-based.
        steps: number of steps T.

    Returns:
        ``lambda_t``.
    """
    return t / (2 * steps)


def segpgd_weights(
    t: int, steps: int, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, *, targeted: bool = False
) -> tuple[torch.Tensor, dict]:
    """Weight ``1 - lambda_t`` on correctly classified valid pixels, ``lambda_t`` on misclassified ones.

    Early steps push the pixels that are still correct; later ones also keep
    the fooled ones fooled. Targeted (``labels`` are targets): the roles swap,
    ``1 - lambda_t`` on the pixels not yet at their target and ``lambda_t`` on
    those already there, so the weight again sits on the work still to do.

    Args:
        t: step index (0-based).
        steps: number of steps T.
        logits: ``[B, C, H, W]``.
        labels: ``[B, H, W]``.
        valid: ``[B, H, W]`` bool.
        targeted: targeted roles (above).

    Returns:
        ``(weights [B, H, W], {})``: 0 at void pixels; no extra masks.
    """
    lam = segpgd_lambda(t, steps)
    todo = class_map(logits) == labels
    if targeted:
        todo = ~todo
    w = torch.where(todo, 1.0 - lam, lam).to(logits.dtype) * valid
    return w, {}


def segpgd(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float = DEFAULT_EPS,
    step_size: float = 2 / 255,
    steps: int = DEFAULT_STEPS,
    norm: str = "linf",
    random_start: bool = True,
    ignore_index: int = IGNORE_INDEX,
    targeted: bool = False,
    best_iterate: bool = False,
    generator: torch.Generator | None = None,
    amp: bool = False,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """SegPGD: pixel CE weighted ``1 - t/(2T)`` on correct and ``t/(2T)`` on misclassified pixels.

    Args:
        model, images, labels, eps, step_size, steps, norm, random_start,
        ignore_index, targeted, best_iterate, generator, amp, callback: as
            :func:`eroseg.attacks.pgd.pgd` (the callback's ``weights`` are the
            SegPGD weights of the step).

    Returns:
        Adversarial images, same shape, dtype and device as ``images``.

    Shape:
        images ``[B, 3, H, W]``, labels ``[B, H, W]`` -> ``[B, 3, H, W]``.
    """
    return run_attack(
        model, images, labels, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start,
        ignore_index=ignore_index, targeted=targeted, best_iterate=best_iterate, generator=generator, amp=amp,
        callback=callback, weight_fn=functools.partial(segpgd_weights, targeted=targeted),
    )
