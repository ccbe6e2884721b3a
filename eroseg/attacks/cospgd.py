"""CosPGD attack: PGD with each pixel's loss weighted by the cosine between its softmax and its one-hot label.

Agnihotri & Keuper, "CosPGD: an efficient white-box adversarial attack for
pixel-wise prediction tasks", ICML 2024. https://arxiv.org/abs/2302.02213
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from eroseg.attacks.core import run_attack
from eroseg.conventions import DEFAULT_EPS, DEFAULT_STEPS, IGNORE_INDEX


def cospgd_weights(
    t: int, steps: int, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, *, targeted: bool = False
) -> tuple[torch.Tensor, dict]:
    """``cos(softmax(u), onehot(y)) = p_y / ||p||_2`` per valid pixel, detached.

    Pixels that still agree with their label weigh most; fooled pixels fade
    out. Targeted (``labels`` are targets): ``1 - cos(softmax(u),
    onehot(target))``, so pixels already at their target fade out instead.

    Args:
        t: step index (unused: the weights depend on the prediction only).
        steps: number of steps (unused).
        logits: ``[B, C, H, W]``.
        labels: ``[B, H, W]``.
        valid: ``[B, H, W]`` bool.
        targeted: targeted weighting (above).

    Returns:
        ``(weights [B, H, W], {})``: in [0, 1], 0 at void pixels.
    """
    p = logits.softmax(1)
    y = torch.where(valid, labels, torch.zeros_like(labels))  # void pixels: any class, zeroed below
    p_y = p.gather(1, y.unsqueeze(1)).squeeze(1)
    # sqrt(sum(p^2)) rather than linalg.vector_norm(p, dim=1): the same value, but on CPU the
    # norm over the channel dimension of an NCHW tensor is ~50x slower (2 ms at 8x8x64x64).
    # ||p||_2 >= 1/sqrt(C) for a probability vector, so no division guard is needed.
    cos = p_y / p.square().sum(1).sqrt()
    w = 1 - cos if targeted else cos
    return w * valid, {}


def cospgd(
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
    """CosPGD: pixel CE weighted by ``cos(softmax(u), onehot(y))`` (:func:`cospgd_weights`).

    Args:
        model, images, labels, eps, step_size, steps, norm, random_start,
        ignore_index, targeted, best_iterate, generator, amp, callback: as
            :func:`eroseg.attacks.pgd.pgd` (the callback's ``weights`` are the
            cosine weights of the step).

    Returns:
        Adversarial images, same shape, dtype and device as ``images``.

    Shape:
        images ``[B, 3, H, W]``, labels ``[B, H, W]`` -> ``[B, 3, H, W]``.
    """
    return run_attack(
        model, images, labels, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start,
        ignore_index=ignore_index, targeted=targeted, best_iterate=best_iterate, generator=generator, amp=amp,
        callback=callback, weight_fn=functools.partial(cospgd_weights, targeted=targeted),
    )
