"""Adversarial attacks on segmentation models: the attack functions and a registry that builds them by name.

Every attack is ``adv = attack(model, images, labels, *, eps, step_size,
steps, norm, random_start, ignore_index, targeted, best_iterate, generator,
amp, callback, ...)`` (FGSM takes no ``step_size``/``random_start``);
``model`` takes images in [0, 1] and returns logits ``[B, C, H, W]``.
:func:`create_attack` binds parameters by name and checks them at once, so a
config maps straight onto code::

    attack = create_attack("eroseg", eps=8/255, step_size=2/255, steps=20)
    adv = attack(model, images, labels)

Attacks: ``fgsm`` (Goodfellow et al. 2015), ``pgd`` (Madry et al. 2018; Linf
and L2 via ``norm``), ``segpgd`` (Gu et al. 2022), ``cospgd`` (Agnihotri &
Keuper 2024), ``eroseg`` (Song et al. 2026, this project's specification);
:func:`worst_case_attack` takes the per-image worst case over several
(Croce et al. 2024).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from eroseg.attacks.core import check_common, pixel_accuracy_per_image, run_attack, segmentation_loss
from eroseg.attacks.cospgd import cospgd
from eroseg.attacks.eroseg import check_eroseg_params, eroseg
from eroseg.attacks.fgsm import check_fgsm_params, fgsm
from eroseg.attacks.pgd import pgd
from eroseg.attacks.segpgd import segpgd
from eroseg.attacks.worst_case import worst_case_attack

#: Registered attacks by name.
ATTACKS: dict[str, Callable] = {"fgsm": fgsm, "pgd": pgd, "segpgd": segpgd, "cospgd": cospgd, "eroseg": eroseg}

_POSITIONAL = ("model", "images", "labels")
_EROSEG_OWN = ("q0", "schedule", "kernel_size", "gamma", "front", "selection")


def _lookup(name: str) -> Callable:
    try:
        return ATTACKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}") from None


def attack_parameters(name: str) -> dict[str, Any]:
    """Keyword parameters of attack ``name`` with their defaults.

    Args:
        name: a key of :data:`ATTACKS`.

    Returns:
        ``{parameter: default}`` in signature order (``model``, ``images``,
        ``labels`` left out).

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    fn = _lookup(name)
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if k not in _POSITIONAL}


def _validate(name: str, params: dict[str, Any]) -> None:
    """Check a full parameter set of attack ``name`` (defaults merged with the given ones)."""
    check_common(params)
    if name == "fgsm":
        check_fgsm_params(steps=params["steps"])
    elif name == "eroseg":
        check_eroseg_params(**{k: params[k] for k in _EROSEG_OWN})


def create_attack(name: str, **params: Any) -> Callable:
    """Bind ``params`` to attack ``name``, checking names and values now rather than at the first batch.

    Args:
        name: a key of :data:`ATTACKS`.
        **params: keyword parameters of that attack (see :func:`attack_parameters`).

    Returns:
        ``functools.partial``: ``callable(model, images, labels, **overrides) -> adv``
        with ``__name__`` set to ``name``.

    Raises:
        ValueError: unknown name (lists the valid ones), unknown parameter
            (lists that attack's parameters) or a bad value.
        TypeError: a parameter of the wrong type.
    """
    fn = _lookup(name)
    defaults = attack_parameters(name)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"attack {name!r} has no parameter(s) {unknown}; valid: {', '.join(defaults)}")
    _validate(name, {**defaults, **params})
    bound = functools.partial(fn, **params)
    bound.__name__ = name  # type: ignore[attr-defined]
    return bound


__all__ = [
    "ATTACKS",
    "attack_parameters",
    "cospgd",
    "create_attack",
    "eroseg",
    "fgsm",
    "pgd",
    "pixel_accuracy_per_image",
    "run_attack",
    "segmentation_loss",
    "segpgd",
    "worst_case_attack",
]
