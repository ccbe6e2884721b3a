"""Adversarial attacks on segmentation models: the attack functions and a registry that builds them by name.

Every attack is ``adv = attack(model, images, labels, *, eps, step_size,
steps, norm, random_start, ignore_index, targeted, best_iterate, generator,
amp, callback, ...)`` (FGSM takes no ``step_size``/``random_start``; APGD
and SEA choose their step sizes themselves and take no ``step_size``);
``model`` takes images in [0, 1] and returns logits ``[B, C, H, W]``.
:func:`create_attack` binds parameters by name and checks them at once, so a
config maps straight onto code::

    attack = create_attack("eroseg", eps=8/255, step_size=2/255, steps=20)
    adv = attack(model, images, labels)

Attacks: ``fgsm`` (Goodfellow et al. 2015), ``pgd`` (Madry et al. 2018; Linf
and L2 via ``norm``), ``segpgd`` (Gu et al. 2022), ``cospgd`` (Agnihotri &
Keuper 2024), ``eroseg`` (Song et al. 2026, this project's specification),
``apgd`` (Croce & Hein 2020, with the segmentation losses of Croce et al.
2024), ``sea`` (Croce et al. 2024); :func:`worst_case_attack` takes the
per-image worst case over several (Croce et al. 2024).

Registry: each entry is an :class:`AttackSpec` holding the function and its
own parameter check, so a new attack is one :func:`register_attack` call.
Parameter names and defaults come from the function's signature; at
registration every parameter must be covered either by the shared check
(:data:`eroseg.attacks.core.COMMON_PARAMETERS`) or by the entry's own check,
whose parameter names must all be the function's, so a parameter added to an
attack without a check fails at import instead of going unvalidated.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from eroseg.attacks.apgd import apgd, check_apgd_params
from eroseg.attacks.core import (
    COMMON_PARAMETERS,
    INPUTS,
    check_common,
    pixel_accuracy_per_image,
    run_attack,
    segmentation_loss,
)
from eroseg.attacks.cospgd import cospgd
from eroseg.attacks.eroseg import check_eroseg_params, eroseg
from eroseg.attacks.fgsm import check_fgsm_params, fgsm
from eroseg.attacks.losses import LOSSES
from eroseg.attacks.pgd import pgd
from eroseg.attacks.sea import SEA_LOSSES, check_sea_params, sea
from eroseg.attacks.segpgd import segpgd
from eroseg.attacks.worst_case import worst_case_attack
from eroseg.numbers import resolve_attack_params

#: The parameter through which an attack with parts (SEA) reports each part's adversarial images.
COMPONENT_CALLBACK = "component_callback"


def _keyword_names(fn: Callable) -> tuple[str, ...]:
    return tuple(k for k in inspect.signature(fn).parameters if k not in INPUTS)


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One registry entry: an attack function, its own parameter check and what the workflow needs to know.

    Attributes:
        name: registry key.
        fn: ``fn(model, images, labels, **keyword_parameters) -> adv``.
        check: ``check(**own_parameters)`` raising ``TypeError``/``ValueError``
            for bad values of the parameters it names (keyword-only), or None
            when every parameter is a common one.
        single_step: the attack always takes exactly one step (``steps`` must be 1).
        has_components (property): the attack reports the result of each of
            its parts through a ``component_callback(name, adv)`` parameter
            (SEA: one per loss), which an evaluation keeps.

    Raises:
        TypeError: at construction, when ``check`` names a parameter ``fn``
            lacks, or ``fn`` has a parameter that neither the common check nor
            ``check`` validates.
    """

    name: str
    fn: Callable
    check: Callable[..., None] | None = None
    single_step: bool = False

    def __post_init__(self) -> None:
        params = set(_keyword_names(self.fn))
        own = set(self.own_parameters())
        stray = sorted(own - params)
        if stray:
            raise TypeError(f"attack {self.name!r}: its check takes {stray}, which {self.fn.__name__}() does not have")
        unchecked = sorted(params - own - set(COMMON_PARAMETERS))
        if unchecked:
            raise TypeError(f"attack {self.name!r}: parameter(s) {unchecked} of {self.fn.__name__}() are checked "
                            f"neither by the common check nor by the entry's own check; add them to its check")

    @property
    def has_components(self) -> bool:
        """Whether ``fn`` takes a ``component_callback`` (it has parts whose results an evaluation keeps)."""
        return COMPONENT_CALLBACK in _keyword_names(self.fn)

    def own_parameters(self) -> tuple[str, ...]:
        """Names of the parameters the entry's own check validates."""
        return tuple(inspect.signature(self.check).parameters) if self.check is not None else ()

    def parameters(self) -> dict[str, Any]:
        """``{parameter: default}`` of ``fn`` in signature order, without ``model``, ``images``, ``labels``."""
        return {k: p.default for k, p in inspect.signature(self.fn).parameters.items() if k not in INPUTS}

    def validate(self, params: Mapping[str, Any]) -> None:
        """Check a full parameter set (defaults merged with the given ones): common check, then the own check."""
        check_common(params)
        if self.check is not None:
            self.check(**{k: params[k] for k in self.own_parameters()})


#: Registry entries by name, in registration order.
REGISTRY: dict[str, AttackSpec] = {}

#: Registered attack functions by name (the same order as :data:`REGISTRY`).
ATTACKS: dict[str, Callable] = {}


def register_attack(name: str, fn: Callable, check: Callable[..., None] | None = None, *,
                    single_step: bool = False) -> AttackSpec:
    """Add an attack to the registry (see :class:`AttackSpec`); returns its entry.

    Raises:
        ValueError: ``name`` is already registered.
        TypeError: the check and the signature disagree (see :class:`AttackSpec`).
    """
    if name in REGISTRY:
        raise ValueError(f"attack {name!r} is already registered")
    spec = AttackSpec(name, fn, check, single_step)
    REGISTRY[name] = spec
    ATTACKS[name] = fn
    return spec


register_attack("fgsm", fgsm, check_fgsm_params, single_step=True)
register_attack("pgd", pgd)
register_attack("segpgd", segpgd)
register_attack("cospgd", cospgd)
register_attack("eroseg", eroseg, check_eroseg_params)
register_attack("apgd", apgd, check_apgd_params)
register_attack("sea", sea, check_sea_params)


def _lookup(name: str) -> AttackSpec:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(REGISTRY)}{hint}") from None


def attack_spec(name: str) -> AttackSpec:
    """The registry entry of attack ``name``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return _lookup(name)


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
    return _lookup(name).parameters()


def attack_uses_steps(name: str) -> bool:
    """Whether the ``steps`` of attack ``name`` can vary (False for single-step attacks such as FGSM).

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return not _lookup(name).single_step


def attack_has_components(name: str) -> bool:
    """Whether attack ``name`` reports its parts (:attr:`AttackSpec.has_components`).

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return _lookup(name).has_components


def build_attack(name: str | None, params: Mapping[str, Any]) -> Callable | None:
    """:func:`create_attack` from a config's or command line's values; None for no attack (``None``, ``"none"``).

    Budgets given as text (``eps: "8/255"``, ``step_size: "eps/4"``) are
    turned into numbers first (:func:`eroseg.numbers.resolve_attack_params`).

    Raises:
        ValueError, TypeError: as :func:`create_attack`, or a budget that does not parse.
    """
    if not name or name == "none":
        return None
    return create_attack(name, **resolve_attack_params(dict(params)))


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
    spec = _lookup(name)
    defaults = spec.parameters()
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"attack {name!r} has no parameter(s) {unknown}; valid: {', '.join(defaults)}")
    spec.validate({**defaults, **params})
    bound = functools.partial(spec.fn, **params)
    bound.__name__ = name  # type: ignore[attr-defined]
    return bound


__all__ = [
    "ATTACKS",
    "AttackSpec",
    "LOSSES",
    "REGISTRY",
    "SEA_LOSSES",
    "apgd",
    "attack_has_components",
    "attack_parameters",
    "attack_spec",
    "attack_uses_steps",
    "build_attack",
    "cospgd",
    "create_attack",
    "eroseg",
    "fgsm",
    "pgd",
    "pixel_accuracy_per_image",
    "register_attack",
    "run_attack",
    "sea",
    "segmentation_loss",
    "segpgd",
    "worst_case_attack",
]
