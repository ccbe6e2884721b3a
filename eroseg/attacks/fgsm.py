"""FGSM: one gradient step of size eps from the clean image.

Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015.
https://arxiv.org/abs/1412.6572
"""

from __future__ import annotations

from typing import Callable

import torch

from eroseg.attacks.core import run_attack


def fgsm(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float = 8 / 255,
    steps: int = 1,
    norm: str = "linf",
    ignore_index: int = 255,
    targeted: bool = False,
    best_iterate: bool = False,
    generator: torch.Generator | None = None,
    amp: bool = False,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """FGSM: ``x + eps * sign(grad)`` (Linf) or ``x + eps * grad/||grad||`` (L2), clipped to [0, 1].

    Args:
        model: maps images in [0, 1] to logits.
        images: clean images ``[B, 3, H, W]``.
        labels: ``[B, H, W]``.
        eps: budget (the step size is eps).
        steps: accepted for a uniform vocabulary; must be 1.
        norm, ignore_index, targeted, best_iterate, generator, amp, callback:
            see :func:`eroseg.attacks.core.run_attack` (no random start).

    Returns:
        Adversarial images.
    """
    if steps != 1:
        raise ValueError(f"fgsm is a single-step attack: steps must be 1, got {steps!r} (use pgd for more steps)")
    return run_attack(
        model, images, labels, eps=eps, step_size=eps, steps=1, norm=norm, random_start=False,
        ignore_index=ignore_index, targeted=targeted, best_iterate=best_iterate, generator=generator, amp=amp,
        callback=callback, weight_fn=None,
    )
