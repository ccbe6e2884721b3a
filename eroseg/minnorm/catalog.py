"""The minimal-norm attacks eroseg wraps, and the check of a call's arguments (no torch, no adv-lib).

The workflow reads this module while it plans (:class:`eroseg.plan.EvaluationPlan` checks the
``evaluation.min_norm`` block of the config with :func:`attack_arguments`), so it imports neither torch
nor adv-lib; :mod:`eroseg.minnorm.attacks` runs the attacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The adv-lib release this wrapper is written and tested against (the ``minnorm`` extra pins it).
ADV_LIB_VERSION = "0.2.8"
INSTALL_HINT = "pip install 'eroseg[minnorm]' (adv-lib==0.2.8; docs/adv_lib.md says how visdom is handled)"

#: Norm names of this project -> the number adv-lib takes.
NORMS = {"linf": float("inf"), "l2": 2.0}


@dataclass(frozen=True)
class MinNormAttack:
    """One adv-lib attack as this project calls it.

    Attributes:
        function: name of the function in ``adv_lib.attacks.segmentation``.
        norms: norms it minimises (``"linf"``, ``"l2"``).
        steps_arg: adv-lib's argument for the number of iterations (``steps`` here).
        default_steps: adv-lib's default number of iterations.
        names: this project's ASCII parameter name -> adv-lib's argument name.
        norm_arg: adv-lib's argument that takes the norm as a number (None: the norm is fixed).
        masking_default: adv-lib's default of ``constraint_masking`` and ``mask_decay`` (see :func:`constraint_groups`).
    """

    function: str
    norms: tuple[str, ...]
    steps_arg: str
    default_steps: int
    names: dict[str, str] = field(default_factory=dict)
    norm_arg: str | None = None
    masking_default: bool = False


_PRIMAL_DUAL = {name: name for name in (
    "random_init", "primal_lr", "primal_lr_decrease", "dual_ratio_init", "dual_lr", "dual_lr_decrease", "dual_ema",
    "dual_min_ratio", "constraint_masking", "mask_decay")}

#: Registered minimal-norm attacks (name -> how to call it).
MIN_NORM_ATTACKS: dict[str, MinNormAttack] = {
    "alma_prox": MinNormAttack("alma_prox", ("linf",), "num_steps", 500, {
        "lr_init": "lr_init", "lr_reduction": "lr_reduction", "mu_init": "μ_init", "rho_init": "ρ_init",
        "check_steps": "check_steps", "tau": "τ", "gamma": "γ", "alpha": "α", "alpha_rms": "α_rms",
        "scale_min": "scale_min", "scale_max": "scale_max", "scale_init": "scale_init", "scale_gamma": "scale_γ",
        "logit_tolerance": "logit_tolerance", "constraint_masking": "constraint_masking",
        "mask_decay": "mask_decay"}, masking_default=True),
    "pdpgd": MinNormAttack("pdpgd", ("linf", "l2"), "num_steps", 500, {
        **_PRIMAL_DUAL, "proximal_steps": "proximal_steps", "epsilon_threshold": "ε_threshold"}, norm_arg="norm"),
    "dag": MinNormAttack("dag", ("linf", "l2"), "max_iter", 200, {"gamma": "γ"}, norm_arg="p"),
    "pdgd": MinNormAttack("pdgd", ("l2",), "num_steps", 500, dict(_PRIMAL_DUAL)),
}


#: adv-lib attacks left out, and why (named in the error when asked for).
NOT_WRAPPED = {
    "asma": "adv-lib 0.2.8's asma raises the logits of the given labels whatever `targeted` says, so an "
            "untargeted run never moves from the clean image (docs/adv_lib.md); use dag, pdgd or pdpgd for L2",
}


def attack_arguments(name: str, norm: str, adv_threshold: float, steps: int | None, params: dict[str, Any]
                     ) -> tuple[MinNormAttack, dict[str, Any]]:
    """Check a call of :func:`run_min_norm` and translate it into adv-lib's keyword arguments.

    Raises:
        ValueError: unknown attack, norm or parameter, a norm the attack does not minimise,
            ``adv_threshold`` outside (0, 1] or ``steps`` < 1 (each message lists what is allowed).
    """
    if name in NOT_WRAPPED:
        raise ValueError(f"minimal-norm attack {name!r} is not wrapped: {NOT_WRAPPED[name]}")
    if name not in MIN_NORM_ATTACKS:
        raise ValueError(f"unknown minimal-norm attack {name!r}; expected one of {sorted(MIN_NORM_ATTACKS)}")
    spec = MIN_NORM_ATTACKS[name]
    if norm not in spec.norms:
        raise ValueError(f"{name}: norm {norm!r} is not supported; expected one of {list(spec.norms)}")
    if not 0 < adv_threshold <= 1:
        raise ValueError(f"{name}: adv_threshold must be in (0, 1], got {adv_threshold!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"{name}: steps must be an integer >= 1, got {steps!r}")
    unknown = sorted(set(params) - set(spec.names))
    if unknown:
        raise ValueError(f"{name}: unknown parameter(s) {unknown}; expected some of {sorted(spec.names)}")
    kwargs = {spec.names[key]: value for key, value in params.items()}
    kwargs["adv_threshold"] = float(adv_threshold)
    kwargs[spec.steps_arg] = spec.default_steps if steps is None else steps
    if spec.norm_arg is not None:
        kwargs[spec.norm_arg] = NORMS[norm]
    return spec, kwargs
