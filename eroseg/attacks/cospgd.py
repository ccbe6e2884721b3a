"""CosPGD: PGD with each pixel's loss weighted by the cosine between softmax and one-hot label.

Agnihotri & Keuper, "CosPGD: an efficient white-box adversarial attack for
pixel-wise prediction tasks", ICML 2024. https://arxiv.org/abs/2302.02213
"""

from __future__ import annotations

from typing import Callable

import torch

from eroseg.attacks.core import run_attack


def cospgd_weights(t: int, steps: int, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor):
    """``cos(softmax(u), onehot(y)) = p_y / ||p||_2`` per valid pixel (detached)."""
    p = logits.softmax(1)
    y = torch.where(valid, labels, torch.zeros_like(labels))
    p_y = p.gather(1, y.unsqueeze(1)).squeeze(1)
    w = p_y / p.norm(p=2, dim=1).clamp_min(1e-12)
    return w * valid, {}


def cospgd(
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
    """CosPGD: per-pixel CE weighted by ``cos(softmax(u), onehot(y))``, so pixels already fooled count less.

    Args and Returns: as :func:`eroseg.attacks.pgd.pgd`.
    """
    return run_attack(
        model, images, labels, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start,
        ignore_index=ignore_index, targeted=targeted, best_iterate=best_iterate, generator=generator, amp=amp,
        callback=callback, weight_fn=cospgd_weights,
    )
