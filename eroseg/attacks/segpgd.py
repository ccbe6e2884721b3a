"""SegPGD: PGD whose loss shifts from correctly classified to misclassified pixels.

Gu et al., "SegPGD: An Effective and Efficient Adversarial Attack for
Evaluating and Boosting Segmentation Robustness", ECCV 2022.
https://arxiv.org/abs/2207.12391
"""

from __future__ import annotations

from typing import Callable

import torch

from eroseg.attacks.core import class_map, run_attack


def segpgd_lambda(t: int, steps: int) -> float:
    """``lambda_t = t / (2T)``: 0 at the first step, just under 1/2 at the last."""
    return t / (2 * steps)


def segpgd_weights(t: int, steps: int, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor):
    """Weight ``1 - lambda_t`` on correctly classified pixels and ``lambda_t`` on the others."""
    lam = segpgd_lambda(t, steps)
    correct = class_map(logits) == labels
    w = torch.where(correct, 1.0 - lam, lam).to(logits.dtype) * valid
    return w, {}


def segpgd(
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
) -> torch.Tensor:
    """SegPGD: per-pixel CE weighted ``1 - t/(2T)`` on correct and ``t/(2T)`` on wrong pixels.

    Args and Returns: as :func:`eroseg.attacks.pgd.pgd`.
    """
    return run_attack(
        model, images, labels, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start,
        ignore_index=ignore_index, targeted=targeted, best_iterate=best_iterate, generator=generator, amp=amp,
        callback=callback, weight_fn=segpgd_weights,
    )
