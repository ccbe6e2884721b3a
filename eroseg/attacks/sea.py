"""SEA: Segmentation Ensemble Attack, the per-image worst case of APGD with several complementary losses.

Croce et al., "Towards Reliable Evaluation and Fast Training of Robust
Semantic Segmentation Models", ECCV 2024. https://arxiv.org/abs/2306.12941

SEA runs :func:`eroseg.attacks.apgd.apgd` once per loss (``masked_ce``,
``balanced_ce``, ``js``, ``masked_spherical`` by default; 300 iterations each
on real data in the paper), each with the progressive radius reduction, and
keeps per image the component whose result has the lowest pixel accuracy
(ties go to the loss listed first). Adding ``"eroseg"`` or ``"ce"`` to
``losses`` gives the SEA + EroSeg ensemble.

Each component tracks (restarts, step halving) the loss its reference pairs
with it (``track`` in :data:`eroseg.attacks.losses.LOSSES`): plain CE for
``masked_ce``, ``balanced_ce`` and ``js``; the unmasked normalised
true-class logit for ``masked_spherical`` (``tools/infer.py`` of
nmndeep/robust-segmentation). The radius schedule runs ``3 T // 10``,
``3 T // 10`` and the rest of the ``T`` iterations at 2, 1.5 and 1 eps.
``rules="reference"`` reproduces the reference's iterates; the default
rules differ where ``docs/sea_reference.md`` says why and by how much.
A component's loss takes its parameters from ``loss_params[name]`` (e.g.
``loss_params={"eroseg": {"q0": 0.4}}``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from eroseg.attacks.apgd import ApgdRules, check_apgd_options, checked_run_options, run_apgd
from eroseg.attacks.losses import check_loss_name, resolve_loss_params
from eroseg.conventions import DEFAULT_EPS, DEFAULT_STEPS, IGNORE_INDEX

#: SEA's losses in the paper, in its order (also the order of preference for ties).
SEA_LOSSES = ("masked_ce", "balanced_ce", "js", "masked_spherical")


def check_sea_losses(*, losses: Sequence[str]) -> None:
    """Validate SEA's ``losses``: a non-empty list of distinct APGD loss names.

    Raises:
        TypeError: ``losses`` is a string or not a list/tuple.
        ValueError: empty, an unknown name (lists the valid ones) or a repeated name.
    """
    if isinstance(losses, str) or not isinstance(losses, (list, tuple)):
        raise TypeError(f"losses must be a list of APGD loss names (e.g. {list(SEA_LOSSES)}), got "
                        f"{type(losses).__name__} {losses!r}")
    if not losses:
        raise ValueError(f"losses must name at least one APGD loss (e.g. {list(SEA_LOSSES)}), got an empty list")
    for name in losses:
        check_loss_name(name, key="each of losses")
    repeated = sorted({n for n in losses if list(losses).count(n) > 1})
    if repeated:
        raise ValueError(f"losses must be distinct (each component runs once), got {repeated} more than once")


def check_sea_loss_params(*, losses: Sequence[str], loss_params: Mapping[str, Mapping] | None) -> None:
    """Validate ``loss_params``: None, or a dict from some of ``losses`` to that loss's parameters.

    Raises:
        TypeError: not a dict, or a component's parameters not a dict.
        ValueError: a key that is not one of ``losses``, or a parameter the loss does not take or a bad value.
    """
    if loss_params is None:
        return
    if not isinstance(loss_params, Mapping):
        raise TypeError(f"loss_params must be a dict from component loss to its parameters (e.g. "
                        f"{{'eroseg': {{'q0': 0.4}}}}), got {type(loss_params).__name__} {loss_params!r}")
    stray = sorted(set(loss_params) - set(losses))
    if stray:
        raise ValueError(f"loss_params names {stray}, which are not among losses {list(losses)}")
    for name, params in loss_params.items():
        resolve_loss_params(name, params, key=f"loss_params[{name!r}]")


def check_sea_params(*, losses: Sequence[str], loss_params: Mapping[str, Mapping] | None,
                     component_callback: Callable | None, rules, momentum: float, initial_step: float, rho: float,
                     radius_schedule: bool) -> None:
    """Validate SEA's own parameters: its losses and their parameters, the component callback, the APGD options.

    Raises:
        TypeError, ValueError: as :func:`check_sea_losses`, :func:`check_sea_loss_params` and
            :func:`eroseg.attacks.apgd.check_apgd_options`; ``component_callback`` not callable.
    """
    check_sea_losses(losses=losses)
    check_sea_loss_params(losses=losses, loss_params=loss_params)
    if component_callback is not None and not callable(component_callback):
        raise TypeError(f"component_callback must be callable(name, adv) or None, got "
                        f"{type(component_callback).__name__}")
    check_apgd_options(rules=rules, momentum=momentum, initial_step=initial_step, rho=rho,
                       radius_schedule=radius_schedule)


def _tagged(callback: Callable[[dict], None] | None, name: str) -> Callable[[dict], None] | None:
    """``callback`` of the component ``name``: it adds ``info["component"] = name`` (None stays None)."""
    if callback is None:
        return None

    def tagged(info: dict) -> None:
        callback({**info, "component": name})
    return tagged


def _keep_better(best_adv: torch.Tensor | None, best_score: torch.Tensor | None, adv: torch.Tensor,
                 score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the result with the lower score (the better for the attack): ``(adv, score)`` so far.

    ``best_adv`` None (the first component): copies of ``adv`` and ``score``.
    Ties keep ``best_adv``, i.e. the loss listed first.
    """
    if best_adv is None:
        return adv.clone(), score.clone()
    better = score < best_score  # strict: ties keep the loss listed first
    return torch.where(better.view(-1, 1, 1, 1), adv, best_adv), torch.where(better, score, best_score)


def sea(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float = DEFAULT_EPS,
    steps: int = DEFAULT_STEPS,
    norm: str = "linf",
    losses: Sequence[str] = SEA_LOSSES,
    loss_params: Mapping[str, Mapping] | None = None,
    radius_schedule: bool = True,
    random_start: bool = True,
    ignore_index: int = IGNORE_INDEX,
    targeted: bool = False,
    best_iterate: bool = True,
    generator: torch.Generator | None = None,
    amp: bool = False,
    callback: Callable[[dict], None] | None = None,
    component_callback: Callable[[str, torch.Tensor], None] | None = None,
    momentum: float = 0.75,
    initial_step: float = 2.0,
    rho: float = 0.75,
    rules: str | ApgdRules = "default",
) -> torch.Tensor:
    """SEA: per image, the worst case over APGD runs with each loss of ``losses``.

    Reference: Croce et al., ECCV 2024, https://arxiv.org/abs/2306.12941.

    Each component's result is scored by the pixel accuracy of the forward
    pass that evaluated it inside APGD (no extra pass); the lowest wins, ties
    go to the earlier loss. The components draw their random starts one
    after the other from ``generator``.

    Args:
        model: maps images ``[B, 3, H, W]`` in [0, 1] to logits ``[B, C, H, W]``.
        images: clean images in [0, 1].
        labels: ``[B, H, W]`` int64 (targets when ``targeted``).
        eps: budget in pixel units (Linf per element, L2 per image).
        steps: APGD iterations of EACH component.
        norm: ``"linf"`` or ``"l2"``.
        losses: APGD losses of the components (:data:`eroseg.attacks.losses.LOSSES`),
            distinct, in order of preference for ties.
        loss_params: parameters of some components' losses by loss name,
            e.g. ``{"eroseg": {"q0": 0.4}}``; the others use their defaults.
        radius_schedule: progressive radius reduction in every component.
        random_start, ignore_index, targeted, best_iterate, generator, amp,
        momentum, initial_step, rho, rules: as :func:`eroseg.attacks.apgd.apgd`, for every component
            (each component tracks its loss's ``track`` of :data:`eroseg.attacks.losses.LOSSES`).
        callback: passed to every component; ``info["component"]`` names the loss.
        component_callback: ``component_callback(loss_name, adv)`` once per
            component with its adversarial images (detached), so that an
            evaluation can keep each component's per-image results.

    Returns:
        Adversarial images: same shape, dtype and device as ``images``, within
        ``eps`` and in [0, 1].

    Shape:
        images ``[B, 3, H, W]``, labels ``[B, H, W]`` -> ``[B, 3, H, W]``.

    Raises:
        RuntimeError: called inside ``torch.inference_mode()``.
        TypeError, ValueError: bad parameters or inputs (the message names them).
    """
    options = checked_run_options(locals(), check_sea_params)
    best_adv = best_score = None
    for name in losses:
        params = resolve_loss_params(name, (loss_params or {}).get(name))
        adv, score = run_apgd(model, images, labels, loss=name, loss_params=params, track_loss=None,
                              callback=_tagged(callback, name), **options)
        if component_callback is not None:
            component_callback(name, adv)
        best_adv, best_score = _keep_better(best_adv, best_score, adv, score)
    return best_adv
