"""Adversarial attacks on segmentation models: functions plus a registry.

Every attack is ``adv = attack(model, images, labels, *, eps, step_size, steps,
norm, random_start, ignore_index, targeted, best_iterate, generator, amp,
callback, ...)``; ``model`` takes images in [0, 1] and returns logits
``[B, C, H, W]``. :func:`create_attack` binds parameters by name, so config
strings map straight onto code::

    attack = create_attack("eroseg", eps=8/255, step_size=2/255, steps=20)
    adv = attack(model, images, labels)
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

from eroseg.attacks.core import pixel_accuracy_per_image, run_attack
from eroseg.attacks.cospgd import cospgd
from eroseg.attacks.eroseg import eroseg
from eroseg.attacks.fgsm import fgsm
from eroseg.attacks.pgd import pgd
from eroseg.attacks.segpgd import segpgd
from eroseg.attacks.worst_case import worst_case_attack

#: Registered attacks by name.
ATTACKS: dict[str, Callable] = {"fgsm": fgsm, "pgd": pgd, "segpgd": segpgd, "cospgd": cospgd, "eroseg": eroseg}

_POSITIONAL = ("model", "images", "labels")


def attack_parameters(name: str) -> dict:
    """Keyword parameters of attack ``name`` with their defaults."""
    fn = _lookup(name)
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if k not in _POSITIONAL}


def _lookup(name: str) -> Callable:
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}") from None


def create_attack(name: str, **params) -> Callable:
    """Bind ``params`` to attack ``name``; returns ``callable(model, images, labels, **overrides) -> adv``.

    Raises:
        ValueError: unknown name (lists the valid ones) or unknown parameter
            (lists that attack's parameters).
    """
    fn = _lookup(name)
    valid = attack_parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"attack {name!r} has no parameter(s) {unknown}; valid: {', '.join(valid)}")
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
    "segpgd",
    "worst_case_attack",
]
