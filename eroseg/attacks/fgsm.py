"""FGSM attack: one gradient step of size eps from the clean image.

Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015.
https://arxiv.org/abs/1412.6572
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eroseg.attacks.core import run_attack
from eroseg.conventions import DEFAULT_EPS, IGNORE_INDEX


def check_fgsm_params(*, steps: int) -> None:
    """FGSM is single-step; ``steps`` exists only so that configs can pass it uniformly.

    Raises:
        ValueError: ``steps`` is not 1.
    """
    if steps != 1 or isinstance(steps, bool):
        raise ValueError(f"fgsm is a single-step attack: steps must be 1, got {steps!r} (use pgd for more steps)")


def fgsm(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float = DEFAULT_EPS,
    steps: int = 1,
    norm: str = "linf",
    ignore_index: int = IGNORE_INDEX,
    targeted: bool = False,
    best_iterate: bool = False,
    generator: torch.Generator | None = None,
    amp: bool = False,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """FGSM: ``x + eps * sign(grad)`` (Linf) or ``x + eps * grad / ||grad||`` (L2), clipped to [0, 1].

    No random start and no step size: the one step has length ``eps``.

    Args:
        model: maps images in [0, 1] to logits ``[B, C, H, W]``.
        images: clean images ``[B, 3, H, W]``.
        labels: ``[B, H, W]`` int64 (targets when ``targeted``).
        eps: budget, also the step length.
        steps: must be 1 (accepted so that every attack takes ``steps``).
        norm: ``"linf"`` or ``"l2"``.
        ignore_index: void label.
        targeted: step towards ``labels`` instead of away from them.
        best_iterate: return, per image, the clean image instead when the FGSM
            image has a higher pixel accuracy (the two iterates are the clean
            start and the FGSM image; ties keep the clean one).
        generator: unused (no random start); accepted for a uniform call.
        amp: bf16 autocast of the forward pass on CUDA.
        callback: called once, after the forward on the clean image.

    Returns:
        Adversarial images, same shape, dtype and device as ``images``.

    Shape:
        images ``[B, 3, H, W]``, labels ``[B, H, W]`` -> ``[B, 3, H, W]``.
    """
    check_fgsm_params(steps=steps)
    return run_attack(
        model, images, labels, eps=eps, step_size=eps, steps=1, norm=norm, random_start=False,
        ignore_index=ignore_index, targeted=targeted, best_iterate=best_iterate, generator=generator, amp=amp,
        callback=callback, weight_fn=None,
    )
