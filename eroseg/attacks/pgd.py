"""PGD attack: projected gradient ascent on the mean pixel cross-entropy, Linf or L2.

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
ICLR 2018. https://arxiv.org/abs/1706.06083
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from eroseg.attacks.core import run_attack
from eroseg.conventions import DEFAULT_EPS, DEFAULT_STEPS, IGNORE_INDEX


def pgd(
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
    """PGD: every valid pixel's cross-entropy with weight 1, ``sum(CE) / N``.

    The same function covers both threat models: ``norm="linf"`` takes signed
    steps and clips per element, ``norm="l2"`` takes per-image normalised
    gradient steps and projects onto the per-image L2 ball.

    Args:
        model: maps images ``[B, 3, H, W]`` in [0, 1] to logits ``[B, C, H, W]``.
        images: clean images in [0, 1].
        labels: ``[B, H, W]`` int64, ``ignore_index`` at void pixels (targets when ``targeted``).
        eps: budget in pixel units (Linf per element, L2 per image).
        step_size: step length in pixel units.
        steps: number of steps T >= 1.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a uniform random point of the eps ball.
        ignore_index: void label.
        targeted: minimise the cross-entropy towards ``labels``.
        best_iterate: per image, return the iterate with the lowest pixel
            accuracy seen (see :func:`eroseg.attacks.core.run_attack`).
        generator: generator of the random start.
        amp: bf16 autocast of the forward passes on CUDA (no-op on CPU).
        callback: ``callback(info)`` after each step's forward (``step``,
            ``logits``, ``weights`` = None, ``fooled``, ``images``).

    Returns:
        Adversarial images, same shape, dtype and device as ``images``, detached.

    Shape:
        images ``[B, 3, H, W]``, labels ``[B, H, W]`` -> ``[B, 3, H, W]``.
    """
    return run_attack(
        model, images, labels, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start,
        ignore_index=ignore_index, targeted=targeted, best_iterate=best_iterate, generator=generator, amp=amp,
        callback=callback, weight_fn=None,
    )
