"""Worst case over several attacks: per image, keep the adversarial image with the lowest pixel accuracy.

Croce et al., "Towards Reliable Evaluation and Fast Training of Robust
Semantic Segmentation Models", ECCV 2024. https://arxiv.org/abs/2306.12941
The evaluation pipeline computes the same worst case from stored per-image
counts (:func:`eroseg.metrics.worst_case_stats`) without attacking again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from eroseg.attacks.core import check_grad_mode, check_inputs, eval_mode, pixel_accuracy_per_image
from eroseg.conventions import IGNORE_INDEX


def worst_case_attack(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: Mapping[str, Callable],
    *,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Run every attack; per image keep the adversarial image with the lowest pixel accuracy.

    Each attack's images are scored with one more forward pass (eval mode, no
    gradients, full precision); ties go to the attack listed first.

    Args:
        model: maps images in [0, 1] to logits ``[B, C, H, W]``.
        images: clean images ``[B, 3, H, W]``.
        labels: ``[B, H, W]`` int64.
        attacks: name -> ``callable(model, images, labels) -> adv`` (e.g. from
            :func:`eroseg.attacks.create_attack`), in the order of preference for ties.
        ignore_index: void label of the accuracy.

    Returns:
        ``(adv, chosen, per_attack_pixel_acc)``: ``adv`` ``[B, 3, H, W]`` the
        per-image worst case; ``chosen`` ``[B]`` int64 index into ``attacks``'
        order; ``per_attack_pixel_acc`` name -> per-image pixel accuracy ``[B]``.

    Shape:
        images ``[B, 3, H, W]``, labels ``[B, H, W]`` -> ``[B, 3, H, W]``, ``[B]``, {name: ``[B]``}.

    Raises:
        TypeError: ``attacks`` is not a mapping of callables.
        ValueError: ``attacks`` is empty, or an attack returns a wrongly shaped tensor.
    """
    if not isinstance(attacks, Mapping):
        raise TypeError(f"attacks must be a dict name -> callable(model, images, labels), got {type(attacks).__name__}")
    if not attacks:
        raise ValueError("attacks must name at least one attack, got an empty dict")
    for name, atk in attacks.items():
        if not callable(atk):
            raise TypeError(f"attacks[{name!r}] must be callable(model, images, labels), got {type(atk).__name__}")
    check_grad_mode()
    check_inputs(images, labels)
    b = images.shape[0]
    best_adv = images.detach().clone()
    best_acc = torch.full((b,), float("inf"), device=images.device)
    chosen = torch.zeros(b, dtype=torch.long, device=images.device)
    accs: dict[str, torch.Tensor] = {}
    for i, (name, atk) in enumerate(attacks.items()):
        adv = atk(model, images, labels)
        if not isinstance(adv, torch.Tensor) or adv.shape != images.shape:
            raise ValueError(f"attack {name!r} must return images shaped {tuple(images.shape)}, got "
                             f"{getattr(adv, 'shape', type(adv).__name__)}")
        with eval_mode(model), torch.no_grad():
            acc = pixel_accuracy_per_image(model(adv), labels, ignore_index)
        accs[name] = acc
        better = acc < best_acc  # strict: ties keep the attack listed first
        best_acc = torch.where(better, acc, best_acc)
        chosen = torch.where(better, torch.full_like(chosen, i), chosen)
        best_adv = torch.where(better.view(-1, 1, 1, 1), adv.detach().to(best_adv.dtype), best_adv)
    return best_adv, chosen, accs
