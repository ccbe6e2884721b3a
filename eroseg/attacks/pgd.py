"""PGD: projected gradient descent on the pixel cross-entropy (Linf or L2).

Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
https://arxiv.org/abs/1706.06083
"""

from __future__ import annotations

from typing import Callable

import torch

from eroseg.attacks.core import run_attack


def pgd(
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
    """PGD with the mean cross-entropy over valid pixels.

    Args:
        model: maps images ``[B, 3, H, W]`` in [0, 1] to logits ``[B, C, H, W]``.
        images: clean images in [0, 1].
        labels: ``[B, H, W]`` int64, ``ignore_index`` for void pixels.
        eps, step_size, steps, norm, random_start, ignore_index, targeted,
        best_iterate, generator, amp, callback: see :func:`eroseg.attacks.core.run_attack`.

    Returns:
        Adversarial images ``[B, 3, H, W]``.

    Shape:
        images ``[B, 3, H, W]``, labels ``[B, H, W]`` -> ``[B, 3, H, W]``.
    """
    return run_attack(
        model, images, labels, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start,
        ignore_index=ignore_index, targeted=targeted, best_iterate=best_iterate, generator=generator, amp=amp,
        callback=callback, weight_fn=None,
    )
