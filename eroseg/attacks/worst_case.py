"""Worst case over attacks: per image, the adversarial image with the lowest pixel accuracy.

Croce et al., "Towards Reliable Evaluation and Fast Training of Robust
Semantic Segmentation Models", ECCV 2024. https://arxiv.org/abs/2306.12941
The pipeline computes the same worst case from stored per-image counts
(:func:`eroseg.metrics.worst_case_stats`) without attacking again.
"""

from __future__ import annotations

from typing import Callable

import torch

from eroseg.attacks.core import pixel_accuracy_per_image


def worst_case_attack(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: dict[str, Callable],
    *,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Run every attack and keep, per image, the one with the lowest pixel accuracy (ties: first listed).

    Args:
        model: the model.
        images: clean images ``[B, 3, H, W]``.
        labels: ``[B, H, W]``.
        attacks: name -> ``callable(model, images, labels) -> adv``.

    Returns:
        ``(adv, chosen [B] index into the attacks' order, {name: per-image pixel accuracy [B]})``.
    """
    if not attacks:
        raise ValueError("worst_case_attack needs at least one attack")
    advs, accs = [], {}
    was = model.training
    try:
        for name, atk in attacks.items():
            adv = atk(model, images, labels)
            model.eval()
            with torch.no_grad():
                accs[name] = pixel_accuracy_per_image(model(adv), labels, ignore_index)
            advs.append(adv)
    finally:
        model.train(was)
    stacked = torch.stack(list(accs.values()))  # [A, B]
    chosen = stacked.argmin(0)
    adv = torch.stack(advs)[chosen, torch.arange(images.shape[0], device=images.device)]
    return adv, chosen, accs
