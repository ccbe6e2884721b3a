"""APGD for segmentation: step-size-free PGD with momentum and per-image step halving, with the losses of SEA.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", ICML 2020. https://arxiv.org/abs/2003.01690
Losses and progressive radius reduction from Croce et al., "Towards Reliable
Evaluation and Fast Training of Robust Semantic Segmentation Models", ECCV 2024.
https://arxiv.org/abs/2306.12941

Notation: logits ``u`` ``[B, C, H, W]``, label ``y``, ``p = softmax(u)``,
``T`` iterations, radius ``r`` (``eps``, or the current radius of the
progressive schedule), per-image step size ``eta``.

Objective. Every loss is a per-pixel loss ``l_i`` (0 at void pixels); the
loss of image ``b`` is its mean over that image's valid pixels,
``L_b = sum_i l_i / N_b``, and the gradient is that of ``sum_b L_b`` (so each
image's step does not depend on the other images of the batch). APGD tracks
``L_b`` per image (targeted: ``-L_b``, see :func:`apgd`).

Iteration (Linf; L2 replaces ``sign(g)`` by ``g / ||g||_2`` per image), with
``P`` the projection onto the radius-``r`` ball and the [0, 1] box::

    z_{k+1} = P(x_k + eta * sign(grad L(x_k)))
    x_{k+1} = P(x_k + alpha (z_{k+1} - x_k) + (1 - alpha) (x_k - x_{k-1}))

``alpha = momentum`` (0.75), except ``alpha = 1`` at the first iteration;
``eta`` starts at ``initial_step * r`` (2r). Checkpoints (fractions of T):
``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
0.06)``, i.e. 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99; the check
happens after iteration ``w_j = ceil(p_j T)`` (:func:`apgd_checkpoints`). At
``w_j``, per image, ``eta`` is halved and the iterate restarts from the point
of highest loss seen so far (with that point's gradient) when

1. fewer than ``rho * (w_j - w_{j-1})`` of the iterations since ``w_{j-1}``
   raised the loss (``L(x_{k+1}) > L(x_k)``, ``x_k`` being the point the
   step was taken from, i.e. the restart point after a restart), or
2. ``eta`` was not halved at ``w_{j-1}`` and the highest loss has not changed
   since ``w_{j-1}`` (at ``w_1`` this compares with the start ``x_0``, as in
   the paper; the reference code skips condition 2 at ``w_1``).

After a restart the momentum term starts afresh (``x_{k-1}`` is set to the
restart point). Everything is per image and on the device: step sizes,
counters and flags are tensors, the checkpoint positions are Python integers
fixed before the loop, and the loop reads one flag per iteration on the host
(the early stop, ``rules.early_stop="off"`` removes it). The bookkeeping
choices (checkpoint rule, momentum and counting after a restart, condition 2
at ``w_1``, ``<`` or ``<=``, best-iterate ties, void pixels) are
:class:`ApgdRules`; the defaults are the reference code's except two with no
measured effect (docs/sea_reference.md). The restarts and halving track
``track_loss`` (default :data:`TRACK_LOSSES`, the reference's pairing), not
necessarily the attack loss.

Best iterate (``best_iterate=True``): per image, the iterate with the lowest
pixel accuracy (as :func:`eroseg.attacks.core.run_attack`), separate from
the highest-loss point that the restarts use.

Progressive radius reduction (``radius_schedule=True``, used by SEA): the
``T`` iterations are split into three parts (``3 T // 10``, ``3 T // 10``, and
the rest, as the reference) run at radii ``2 eps``, ``1.5 eps`` and ``eps``; each part is a full
APGD run (its own checkpoints, ``eta`` restarting at ``initial_step`` times
its radius) started from the previous part's lowest-accuracy iterate
projected onto the new radius (as in the reference implementation). The best
iterate is chosen only among the iterates of the last part, which all lie
within ``eps`` (the projected start of that part included); iterates at the
larger radii are never returned.

Cost: ``T + 1`` forward passes and ``T`` backward passes (``T + 3`` and ``T``
with the radius schedule): the last iterate needs no gradient.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from eroseg.attacks.core import (
    BestIterate,
    _forward,
    check_attack_arguments,
    check_logits,
    class_map,
    eval_mode,
    fooled_mask,
    prepare_inputs,
    project,
    random_init,
    step,
)
from eroseg.attacks.eroseg import check_eroseg_params, eroseg_masks, quantile_schedule
from eroseg.attacks.segpgd import segpgd_weights

#: Radii of the three parts of the progressive radius schedule, in units of eps.
RADIUS_FACTORS = (2.0, 1.5, 1.0)

_LOG2 = math.log(2.0)

#: EroSeg's switches among APGD's parameters; every APGD run gets them as ``eroseg_switches``.
EROSEG_SWITCHES = ("q0", "schedule", "kernel_size", "gamma", "front", "selection")

#: Parameters of :func:`apgd` and SEA that every one of their APGD runs gets unchanged.
_RUN_OPTIONS = ("eps", "steps", "norm", "random_start", "ignore_index", "targeted", "best_iterate", "generator", "amp",
                "radius_schedule", "momentum", "initial_step", "rho", "rules")


# --------------------------------------------------------------------- losses
def _safe_labels(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # Any class at void pixels (so gathers stay in range); their loss is zeroed by the caller.
    return torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(1)


def _todo(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, targeted: bool,
          pred: torch.Tensor | None) -> torch.Tensor:
    """Valid pixels the attack still has to flip: correctly classified (targeted: not yet at the target)."""
    pred = class_map(logits) if pred is None else pred
    hit = pred == labels
    return valid & (~hit if targeted else hit)


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, **_) -> torch.Tensor:
    """Cross-entropy ``-log p_y`` on every valid pixel.

    Args:
        logits: ``[B, C, H, W]``.
        labels: ``[B, H, W]`` int64.
        valid: ``[B, H, W]`` bool, False at void pixels.

    Returns:
        ``[B, H, W]``; 0 at void pixels.
    """
    # The fused cross_entropy (log_softmax + nll) has a cheaper backward than a gather of log_softmax.
    return F.cross_entropy(logits, _safe_labels(labels, valid).squeeze(1), reduction="none") * valid


def masked_ce_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, *, targeted: bool = False,
                   pred: torch.Tensor | None = None, **_) -> torch.Tensor:
    """Masked CE (Croce et al. 2024): cross-entropy on the pixels still correctly classified, 0 elsewhere.

    The mask (``argmax u == y``) is recomputed at every iterate and carries no
    gradient, so the attack spends its whole budget on pixels not yet fooled.
    An image without a correct pixel has loss 0. Targeted: the mask is the
    pixels not yet predicted as their target (the loss is then minimised).

    Args:
        logits: ``[B, C, H, W]``.
        labels: ``[B, H, W]`` (targets when ``targeted``).
        valid: ``[B, H, W]`` bool.
        targeted: targeted mask (above).
        pred: ``class_map(logits)`` if already computed.

    Returns:
        ``[B, H, W]``.
    """
    return ce_loss(logits, labels, valid) * _todo(logits, labels, valid, targeted, pred)


def balanced_ce_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, *, t: int = 0,
                     steps: int = 1, targeted: bool = False, **_) -> torch.Tensor:
    """Balanced CE (SegPGD's weighting, as in SEA): ``(1 - lambda_t)`` CE on correct pixels, ``lambda_t`` on wrong ones.

    ``lambda_t = t / (2T)`` (:func:`eroseg.attacks.segpgd.segpgd_lambda`), with
    ``t`` the index of the iterate (0 at the start) and ``T`` the iterations of
    the run (or of the current radius part), so the weight moves from the
    correct pixels (``lambda_0 = 0``) to an even split (``lambda_T = 1/2``).
    Targeted: ``1 - lambda_t`` on the pixels not yet at their target.

    Args:
        logits: ``[B, C, H, W]``.
        labels: ``[B, H, W]``.
        valid: ``[B, H, W]`` bool.
        t: iterate index.
        steps: ``T``.
        targeted: targeted roles.

    Returns:
        ``[B, H, W]``.
    """
    w, _ = segpgd_weights(t, steps, logits.detach(), labels, valid, targeted=targeted)
    return ce_loss(logits, labels, valid) * w


def js_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, **_) -> torch.Tensor:
    """Jensen-Shannon divergence between ``softmax(u)`` and ``onehot(y)``, summed over classes, per valid pixel.

    ``JS(p, q) = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2`` and
    ``q = onehot(y)``. With ``q`` one-hot the sum over classes depends on
    ``p_y`` only: ``JS = log 2 + (p_y log p_y - (1 + p_y) log(1 + p_y)) / 2``,
    which is what is computed (``log p_y`` from the fused cross-entropy, so it
    is finite and smooth for every logit). It is 0 when ``p_y = 1`` and at most ``log 2``
    (``p_y = 0``): unlike CE it saturates, so pixels that are already fooled
    cannot dominate the loss.

    Args:
        logits: ``[B, C, H, W]``.
        labels: ``[B, H, W]``.
        valid: ``[B, H, W]`` bool.

    Returns:
        ``[B, H, W]``, in ``[0, log 2]``; 0 at void pixels.
    """
    log_py = -F.cross_entropy(logits, _safe_labels(labels, valid).squeeze(1), reduction="none")
    py = log_py.exp()
    js = _LOG2 + 0.5 * (py * log_py - (1 + py) * torch.log1p(py))
    return js * valid


def masked_spherical_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, *,
                          targeted: bool = False, pred: torch.Tensor | None = None, **_) -> torch.Tensor:
    """Masked spherical loss (Croce et al. 2024): ``-<u / ||u||_2, onehot(y)> = -u_y / ||u||_2`` on correct pixels.

    Minus the true class's logit after normalising the logit vector to unit
    length, on the pixels still correctly classified (mask detached, 0
    elsewhere). Maximising it lowers the true class's normalised logit; the
    normalisation keeps pixels with large logits from dominating. The
    gradient flows through ``||u||`` too (as in the reference code).
    Targeted: on the pixels not yet at their target (the loss is then
    minimised, which raises the target's normalised logit).

    Args:
        logits: ``[B, C, H, W]``.
        labels: ``[B, H, W]``.
        valid: ``[B, H, W]`` bool.
        targeted: targeted mask.
        pred: ``class_map(logits)`` if already computed.

    Returns:
        ``[B, H, W]``, in ``[-1, 1]``; 0 off the mask.
    """
    u_y = logits.gather(1, _safe_labels(labels, valid)).squeeze(1)
    # sqrt(sum(u^2)) rather than linalg.vector_norm over dim 1: much faster on CPU for NCHW tensors.
    norm = logits.square().sum(1).clamp_min(torch.finfo(logits.dtype).tiny).sqrt()
    return -(u_y / norm) * _todo(logits, labels, valid, targeted, pred)


def spherical_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, **_) -> torch.Tensor:
    """Unmasked spherical loss: ``-u_y / ||u||_2`` on every valid pixel (the reference's ``norm-corrlog-avg``).

    :func:`masked_spherical_loss` without the mask. SEA's reference tracks it
    (restarts, step halving) in its masked-spherical run: unlike the masked
    loss, it does not drop to 0 on the pixels already fooled, so its value
    compares iterates fooling different pixels.

    Args:
        logits, labels, valid: as :func:`ce_loss`.

    Returns:
        ``[B, H, W]``, in ``[-1, 1]``; 0 at void pixels.
    """
    u_y = logits.gather(1, _safe_labels(labels, valid)).squeeze(1)
    norm = logits.square().sum(1).clamp_min(torch.finfo(logits.dtype).tiny).sqrt()
    return -(u_y / norm) * valid


def eroseg_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, *, t: int = 0, steps: int = 1,
                targeted: bool = False, q0: float = 0.2, schedule: str = "linear", kernel_size: int = 3,
                gamma: float = 0.0, front: bool = True, selection: bool = True, **_) -> tuple[torch.Tensor, dict]:
    """EroSeg's per-pixel weights times CE (:func:`eroseg.attacks.eroseg.eroseg_masks`), weights detached.

    Weight 1 on the sensitive pixels ``S_t`` and the erosion front ``E_t``,
    ``gamma`` on fooled pixels, 0 elsewhere, with ``q_t`` rising from ``q0``
    to 1 over the ``steps + 1`` iterates ``t = 0..steps`` (the last iterate
    uses ``q = 1``).

    Args:
        logits, labels, valid: as :func:`ce_loss`.
        t: iterate index.
        steps: iterations ``T`` of the run (or radius part).
        targeted: targeted roles.
        q0, schedule, kernel_size, gamma, front, selection: EroSeg's switches
            (:func:`eroseg.attacks.eroseg.eroseg`).

    Returns:
        ``(loss [B, H, W], masks)``: the masks of :func:`eroseg_masks`
        (``weights`` included).
    """
    with torch.no_grad():
        q = quantile_schedule(t, steps + 1, q0, schedule)
        weights, masks = eroseg_masks(logits.detach(), labels, valid, q=q, kernel_size=kernel_size, gamma=gamma,
                                      front=front, selection=selection, targeted=targeted)
    masks["weights"] = weights
    return ce_loss(logits, labels, valid) * weights, masks


#: APGD's losses by name: ``fn(logits, labels, valid, *, t, steps, targeted, pred, **eroseg_switches)``
#: -> per-pixel loss ``[B, H, W]`` (``eroseg``: ``(loss, masks)``).
LOSSES: dict[str, Callable] = {
    "ce": ce_loss,
    "masked_ce": masked_ce_loss,
    "balanced_ce": balanced_ce_loss,
    "js": js_loss,
    "masked_spherical": masked_spherical_loss,
    "eroseg": eroseg_loss,
    "spherical": spherical_loss,
}

#: The loss APGD tracks (restarts from the best point, step halving) for each attack loss, as SEA's reference
#: pairs them (``tools/infer.py``: plain CE, except the unmasked normalised true-class logit for the masked
#: spherical loss). The masked and re-weighted losses change their pixel weights between iterates, so their
#: values do not rank iterates; CE (or the unmasked spherical loss) does. ``eroseg`` weights CE by masks that
#: change with the iterate (as ``masked_ce`` and ``balanced_ce`` do), so it tracks CE too.
TRACK_LOSSES: dict[str, str] = {
    "ce": "ce",
    "masked_ce": "ce",
    "balanced_ce": "ce",
    "js": "ce",
    "masked_spherical": "spherical",
    "eroseg": "ce",
    "spherical": "spherical",
}


def pixel_loss(name: str, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, **kw) -> tuple[
        torch.Tensor, dict]:
    """Per-pixel loss ``name`` of :data:`LOSSES` and its masks (empty except for ``eroseg``)."""
    out = LOSSES[name](logits, labels, valid, **kw)
    return out if isinstance(out, tuple) else (out, {})


def image_loss(pixel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-image mean of a per-pixel loss over the image's valid pixels: ``[B, H, W]`` -> ``[B]`` (0 without any)."""
    n = valid.flatten(1).sum(1).clamp_min(1)
    return pixel.flatten(1).sum(1) / n


# ----------------------------------------------------------------- schedules
def apgd_checkpoint_fractions(limit: float = 1.0) -> list[float]:
    """APGD's checkpoint fractions ``p_j <= limit``: 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
    0.06)``, computed exactly in hundredths.
    """
    p = [0, 22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 3, 6)
        if nxt > 100 * limit:
            break
        p.append(nxt)
    return [v / 100 for v in p]


def apgd_checkpoints(steps: int, rule: str = "paper") -> list[int]:
    """Iterations after which APGD checks its step size (increasing, distinct, ``0 < w_j <= steps``).

    ``rule="paper"``: ``w_j = ceil(p_j * steps)`` with the fractions of
    :func:`apgd_checkpoint_fractions`. ``rule="reference"``: the integer rule
    of the reference code (auto-attack, SEA's ``apgd_train``): the first
    window is ``k_1 = max(floor(0.22 T), 1)`` iterations and each next one
    ``k_{j+1} = max(k_j - max(floor(0.03 T), 1), max(floor(0.06 T), 1))``;
    the checks are the running sums of the windows. Both give
    ``[22, 41, 57, 70, 80, 87, 93, 99]`` at T = 100 (and the same at 300),
    but differ at most other T: at T = 90 (SEA's first two radii at 300
    iterations) the paper's rule gives ``[20, 37, 52, 63, 72, 79, 84, 90]``,
    the reference's ``[19, 36, 51, 64, 75, 84]``.

    Args:
        steps: iterations ``T``.
        rule: ``"paper"`` or ``"reference"``.

    Returns:
        Increasing list of iteration counts.

    Raises:
        ValueError: unknown ``rule``.
    """
    out: list[int] = []
    if rule == "paper":
        p_hundredths = [round(p * 100) for p in apgd_checkpoint_fractions()]
        for p in p_hundredths[1:]:
            w = -(-p * steps // 100)  # ceil in integers
            if 0 < w <= steps and (not out or w > out[-1]):
                out.append(w)
        return out
    if rule != "reference":
        raise ValueError(f"checkpoint rule must be 'paper' or 'reference', got {rule!r}")
    # Integer arithmetic: floor(0.22 T) == 22 T // 100 for every T (checked up to 200000), likewise 0.03, 0.06.
    window = max(22 * steps // 100, 1)
    shrink, shortest = max(3 * steps // 100, 1), max(6 * steps // 100, 1)
    w = window
    while w <= steps:
        out.append(w)
        window = max(window - shrink, shortest)
        w += window
    return out


def radius_parts(steps: int, eps: float, radius_schedule: bool) -> list[tuple[float, int]]:
    """``(radius, iterations)`` of each part of the run; parts without iterations are left out.

    Without the schedule: ``[(eps, steps)]``. With it, as SEA's reference
    (``apgd_largereps``: ``int(0.3 T)``, ``int(0.3 T)``, the rest):
    ``3 T // 10``, ``3 T // 10`` and ``T - 2 (3 T // 10)`` iterations at
    ``2 eps``, ``1.5 eps``, ``eps`` (90, 90, 120 at T = 300; 3, 3, 4 at
    T = 10; ``int(0.3 T) == 3 T // 10`` for every T, checked up to 200000).
    """
    if not radius_schedule:
        return [(eps, steps)]
    first = 3 * steps // 10
    parts = [(RADIUS_FACTORS[0] * eps, first), (RADIUS_FACTORS[1] * eps, first),
             (RADIUS_FACTORS[2] * eps, steps - 2 * first)]
    return [(r, n) for r, n in parts if n > 0]


def halving_rule(n_up: torch.Tensor, window: int, rho: float, halved_last: torch.Tensor, best_loss: torch.Tensor,
                 best_loss_last: torch.Tensor, strict: bool = True) -> torch.Tensor:
    """APGD's decision at a checkpoint, per image: halve the step (and restart from the best point) or not.

    Halve when fewer than ``rho * window`` of the ``window`` iterations since
    the last checkpoint raised the loss (``strict=False``: at most ``rho *
    window``, as the reference code), or when the step was not halved at
    the last checkpoint and the highest loss has not changed since
    (``best_loss <= best_loss_last``; it can only grow).

    Args:
        n_up: ``[B]`` loss-raising iterations since the last checkpoint.
        window: iterations since the last checkpoint, ``w_j - w_{j-1}``.
        rho: threshold share (0.75).
        halved_last: ``[B]`` bool, halved at the last checkpoint.
        best_loss: ``[B]`` highest loss now.
        best_loss_last: ``[B]`` highest loss at the last checkpoint.
        strict: ``<`` (the paper) or ``<=`` (the reference code) in the first condition.

    Returns:
        ``[B]`` bool.
    """
    few_ups = n_up < rho * window if strict else n_up <= rho * window
    return few_ups | (~halved_last & (best_loss <= best_loss_last))


# --------------------------------------------------------------------- rules
@dataclasses.dataclass(frozen=True)
class ApgdRules:
    """APGD's bookkeeping choices where the paper, SEA's reference code and this package can differ.

    Each field names one choice; ``ApgdRules()`` is the package's default and
    :data:`REFERENCE_RULES` reproduces the reference code (nmndeep/robust-segmentation
    ``apgd_train``, fra31/auto-attack ``APGDAttack``) iterate for iterate.
    ``docs/sea_reference.md`` lists each difference with its measured effect.

    Attributes:
        checkpoints: checkpoint positions, ``"paper"`` or ``"reference"``
            (:func:`apgd_checkpoints`).
        reset_momentum: after a restart the momentum term starts afresh
            (``x_{k-1}`` := restart point). Reference: False (the step after a
            restart keeps ``x_best - x_k``, ``x_k`` the point the last step was
            taken from).
        count_from_restart: condition 1 compares the first step after a
            restart with the restart point's loss. Reference: False (with the
            loss of the last iterate before the restart).
        first_count_from_start: in the first window, condition 1 compares the
            first iterate with the start ``x_0``. Reference: False (with 0: its
            history array is read at index -1 before it is written).
        strict_condition1: condition 1 is ``n_up < rho * window`` (paper);
            reference: ``<=``.
        condition2_at_first_check: condition 2 also applies at the first
            checkpoint (paper); reference: not there.
        best_keeps_earlier: best iterate ties keep the earlier iterate;
            reference: the later one (``<=``).
        void_consistent: the best iterate's pixel accuracy counts void pixels
            the same way at a part's start as afterwards; reference: the start
            counts them as wrong, later iterates as right (over all pixels), so
            with void pixels a later iterate must fool ``n_void`` more pixels
            to replace the start.
        early_stop: with ``best_iterate``, a part ends for the batch once
            every image is done (one host read per iteration): ``"pixel_acc"``
            when every image's best iterate has pixel accuracy 0;
            ``"reference"`` when the reference's accuracy (void pixels counted
            as above) is 0, so never after the start for an image with void
            pixels; ``"off"``.
    """

    checkpoints: str = "reference"
    reset_momentum: bool = False
    count_from_restart: bool = True
    first_count_from_start: bool = False
    strict_condition1: bool = False
    condition2_at_first_check: bool = True
    best_keeps_earlier: bool = False
    void_consistent: bool = False
    early_stop: str = "reference"


#: The reference code's choices: with them APGD and SEA compute the reference's iterates.
REFERENCE_RULES = ApgdRules(checkpoints="reference", reset_momentum=False, count_from_restart=False,
                            first_count_from_start=False, strict_condition1=False,
                            condition2_at_first_check=False, best_keeps_earlier=False, void_consistent=False,
                            early_stop="reference")

#: ``rules`` by name, for configuration files.
NAMED_RULES = {"default": ApgdRules(), "reference": REFERENCE_RULES}


def resolve_rules(rules: str | ApgdRules) -> ApgdRules:
    """``rules`` as an :class:`ApgdRules` (a name of :data:`NAMED_RULES` or an instance)."""
    return rules if isinstance(rules, ApgdRules) else NAMED_RULES[rules]


# ---------------------------------------------------------------- validation
def _check_unit(name: str, value, what: str) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number in [0, 1] ({what}), got {type(value).__name__} {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] ({what}), got {value!r}")


def check_loss_name(loss, key: str = "loss") -> None:
    """Raise ``ValueError`` naming the valid losses if ``loss`` is not a key of :data:`LOSSES`."""
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"{key} must be one of {', '.join(LOSSES)}; got {loss!r}")


def check_rules(rules) -> None:
    """Raise naming the valid choices unless ``rules`` is a name of :data:`NAMED_RULES` or a valid ApgdRules."""
    if isinstance(rules, ApgdRules):
        if rules.checkpoints not in ("paper", "reference"):
            raise ValueError(f"rules.checkpoints must be 'paper' or 'reference', got {rules.checkpoints!r}")
        if rules.early_stop not in ("pixel_acc", "reference", "off"):
            raise ValueError(f"rules.early_stop must be 'pixel_acc', 'reference' or 'off', got {rules.early_stop!r}")
        return
    if not isinstance(rules, str) or rules not in NAMED_RULES:
        raise ValueError(f"rules must be one of {', '.join(NAMED_RULES)} or an ApgdRules; got {rules!r}")


def check_apgd_params(*, loss: str, track_loss: str | None, rules, momentum: float, initial_step: float, rho: float,
                      radius_schedule: bool, q0: float, schedule: str, kernel_size: int, gamma: float, front: bool,
                      selection: bool) -> None:
    """Validate APGD's own parameters (EroSeg's switches are checked whatever the loss).

    Raises:
        TypeError: wrong type (e.g. ``momentum="0.75"``, ``radius_schedule="yes"``).
        ValueError: unknown loss or tracking loss (lists the valid ones), unknown
            ``rules``, ``momentum`` or ``rho`` outside [0, 1], ``initial_step <= 0``,
            or a bad EroSeg switch.
    """
    check_loss_name(loss)
    if track_loss is not None:
        check_loss_name(track_loss, key="track_loss")
    check_rules(rules)
    _check_unit("momentum", momentum, "weight of the new step; 1 = no momentum")
    _check_unit("rho", rho, "share of loss-raising steps below which the step is halved")
    if not isinstance(initial_step, numbers.Real) or isinstance(initial_step, bool):
        raise TypeError(f"initial_step must be a real number > 0 (step size in units of eps), got "
                        f"{type(initial_step).__name__} {initial_step!r}")
    if not (math.isfinite(initial_step) and initial_step > 0):
        raise ValueError(f"initial_step must be a finite number > 0 (step size in units of eps), got {initial_step!r}")
    if not isinstance(radius_schedule, bool):
        raise TypeError(f"radius_schedule must be a bool (True/False), got {type(radius_schedule).__name__} "
                        f"{radius_schedule!r}")
    check_eroseg_params(q0=q0, schedule=schedule, kernel_size=kernel_size, gamma=gamma, front=front,
                        selection=selection)


def checked_run_options(arguments: Mapping[str, Any], check_own: Callable[..., None]) -> dict:
    """Check the arguments of :func:`apgd` or :func:`eroseg.attacks.sea.sea`; return what their APGD runs share.

    The checks are :func:`eroseg.attacks.core.check_attack_arguments`'s, in
    its order (grad mode, common parameters, ``check_own``, inputs).

    Args:
        arguments: the attack's arguments by name (its ``locals()`` taken
            before it assigns anything).
        check_own: :func:`check_apgd_params` or
            :func:`eroseg.attacks.sea.check_sea_params`.

    Returns:
        Keyword arguments of :func:`run_apgd` but ``loss`` and ``callback``:
        ``eps``, ``steps``, ``norm``, ``random_start``, ``ignore_index``,
        ``targeted``, ``best_iterate``, ``generator``, ``amp``,
        ``radius_schedule``, ``momentum``, ``initial_step``, ``rho``, ``rules`` (an :class:`ApgdRules`) and
        ``eroseg_switches`` (``q0`` ... ``selection`` in a dict).
    """
    check_attack_arguments(arguments, check_own)
    options = {name: arguments[name] for name in _RUN_OPTIONS}
    options["rules"] = resolve_rules(options["rules"])
    options["eroseg_switches"] = {name: arguments[name] for name in EROSEG_SWITCHES}
    return options


# ----------------------------------------------------------------------- loop
class _PartBest(BestIterate):
    """:class:`BestIterate` with the tie rule and the void accounting of :class:`ApgdRules`.

    ``key`` is what is compared: the pixel accuracy (``score``), or with
    ``void_consistent=False`` (untargeted) the reference's accuracy over all
    pixels, void pixels counted wrong at ``t = 0`` and right afterwards.
    """

    def __init__(self, start, labels, ignore_index, targeted, valid, rules: ApgdRules):
        super().__init__(start, labels, ignore_index, targeted)
        self.key = self.score.clone()
        self.rules = rules
        n_valid = valid.flatten(1).sum(1).to(self.key.dtype)
        self.n_valid, self.n_void = n_valid, valid[0].numel() - n_valid
        self.empty = n_valid == 0  # nothing to fool: done from the start

    def update(self, adv: torch.Tensor, logits: torch.Tensor, t: int) -> torch.Tensor:
        score = self.scores(logits)
        key = score
        if not self.rules.void_consistent and not self.targeted:
            key = (score * self.n_valid + (self.n_void if t > 0 else 0)) / (self.n_valid + self.n_void)
        better = key < self.key if self.rules.best_keeps_earlier else key <= self.key
        self.key.copy_(torch.where(better, key, self.key))
        self.score.copy_(torch.where(better, score, self.score))
        self.adv.copy_(torch.where(better.view(-1, 1, 1, 1), adv.detach(), self.adv))
        return score

    def all_fooled(self) -> bool:
        """The early stop's test (reads the host): every image is done, as ``rules.early_stop`` says.

        ``"pixel_acc"``: every best iterate has pixel accuracy 0; with ties
        kept by the earlier iterate nothing can replace it, and with the
        reference's ``<=`` only a later iterate of accuracy 0 could.
        ``"reference"``: the reference's test, its ``key`` is 0, which with
        void pixels (counted right after the start) only the start can meet.
        """
        done = self.key == 0 if self.rules.early_stop == "reference" else self.score == 0
        return bool((done | self.empty).all())


def _apgd_part(model, x, y, valid, delta, *, radius, steps, norm, loss, track_loss, loss_kw, targeted, momentum,
               initial_step, rho, rules, early_stop, use_amp, callback,
               step0) -> tuple[BestIterate, torch.Tensor, torch.Tensor, int]:
    """One APGD run at one radius from ``delta`` (already inside it).

    Returns:
        ``(best, last_delta, last_score, calls)``: the lowest-accuracy iterate
        tracker, the last iterate's perturbation and per-image score, and the
        number of iterates evaluated (for the callback's step numbering).
    """
    b = x.shape[0]
    bshape = (b,) + (1,) * (x.dim() - 1)
    best = _PartBest(x + delta, y, loss_kw["ignore_index"], targeted, valid, rules)
    checks = set(apgd_checkpoints(steps, rules.checkpoints))
    n_valid = valid.flatten(1).sum(1).clamp_min(1)
    sign = -1.0 if targeted else 1.0

    def evaluate(d: torch.Tensor, t: int, need_grad: bool):
        d = d.detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            adv = x + d
            logits = _forward(model, adv, use_amp)
            if t == 0 and step0 == 0:
                check_logits(logits, y)
            with torch.no_grad():
                pred = class_map(logits)
            kw = dict(t=t, steps=steps, targeted=targeted, pred=pred)
            pix, masks = pixel_loss(loss, logits, y, valid, **kw, **loss_kw["eroseg"])
            obj = sign * pix.flatten(1).sum(1) / n_valid
            grad = torch.autograd.grad(obj.sum(), d)[0] if need_grad else None
        with torch.no_grad():
            if track_loss == loss:
                tracked = obj.detach()
            else:
                track_pix, _ = pixel_loss(track_loss, logits.detach(), y, valid, **kw, **loss_kw["track"])
                tracked = sign * track_pix.flatten(1).sum(1) / n_valid
            score = best.update(adv, pred, t)
            if callback is not None:
                callback({"step": step0 + t, "logits": logits.detach(), "weights": masks.pop("weights", None),
                          "fooled": fooled_mask(logits.detach(), y, valid, targeted), "images": adv.detach(),
                          "radius": radius, "step_size": eta.view(b).clone(), "loss": tracked,
                          "attack_loss": obj.detach(), **masks})
        return tracked, grad, score

    eta = torch.full(bshape, initial_step * radius, dtype=x.dtype, device=x.device)
    obj, grad, score = evaluate(delta, 0, steps > 0)
    calls = 1
    with torch.no_grad():
        loss_best, d_best, grad_best = obj.clone(), delta.clone(), grad.clone()
        # The loss the first step is compared with: the start's (reference: 0, see ApgdRules).
        loss_prev = obj.clone() if rules.first_count_from_start else torch.zeros_like(obj)
        d_prev = delta.clone()
        n_up = torch.zeros(b, device=x.device)
        best_at_check = loss_best.clone()
        # "halved at the last checkpoint": False lets condition 2 act at the first checkpoint (paper).
        halved_at_check = torch.full((b,), not rules.condition2_at_first_check, dtype=torch.bool, device=x.device)
        last_check = 0
        for k in range(steps):
            a = 1.0 if k == 0 else momentum
            z = project(x, step(delta, grad, eta, norm), radius, norm)
            new = project(x, delta + a * (z - delta) + (1 - a) * (delta - d_prev), radius, norm)
            d_prev, delta = delta, new
            last = k + 1 == steps
            obj, grad_new, score = evaluate(delta, k + 1, not last)
            calls += 1
            if last:
                break
            grad = grad_new
            n_up += (obj > loss_prev).float()
            loss_prev = obj
            improved = obj > loss_best
            loss_best = torch.where(improved, obj, loss_best)
            d_best = torch.where(improved.view(bshape), delta, d_best)
            grad_best = torch.where(improved.view(bshape), grad, grad_best)
            if k + 1 in checks:
                halve = halving_rule(n_up, k + 1 - last_check, rho, halved_at_check, loss_best, best_at_check,
                                     strict=rules.strict_condition1)
                hv = halve.view(bshape)
                eta = torch.where(hv, eta / 2, eta)
                delta = torch.where(hv, d_best, delta)
                grad = torch.where(hv, grad_best, grad)
                if rules.reset_momentum:
                    d_prev = torch.where(hv, d_best, d_prev)
                if rules.count_from_restart:
                    loss_prev = torch.where(halve, loss_best, loss_prev)
                halved_at_check, best_at_check = halve, loss_best.clone()
                n_up.zero_()
                last_check = k + 1
            if early_stop and best.all_fooled():
                break
    return best, delta, score, calls


def run_apgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    steps: int,
    norm: str,
    loss: str,
    track_loss: str | None,
    random_start: bool,
    ignore_index: int,
    targeted: bool,
    best_iterate: bool,
    generator: torch.Generator | None,
    amp: bool,
    callback: Callable[[dict], None] | None,
    radius_schedule: bool,
    momentum: float,
    initial_step: float,
    rho: float,
    rules: ApgdRules,
    eroseg_switches: dict,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD without the parameter checks; returns ``(adv, score)``, ``score`` the per-image pixel accuracy of ``adv``
    (targeted: ``1 -`` the accuracy with respect to the targets), from the forward pass that evaluated it.
    """
    x, y = prepare_inputs(images, labels)
    valid = y != ignore_index
    use_amp = amp and x.is_cuda
    parts = radius_parts(steps, eps, radius_schedule)
    track_loss = TRACK_LOSSES[loss] if track_loss is None else track_loss
    loss_kw = {"ignore_index": ignore_index, "eroseg": eroseg_switches if loss == "eroseg" else {},
               "track": eroseg_switches if track_loss == "eroseg" else {}}
    with eval_mode(model), torch.enable_grad():
        # The random start is drawn in the first radius of the schedule even when a short run skips that part.
        r0 = RADIUS_FACTORS[0] * eps if radius_schedule else eps
        delta = random_init(x, r0, norm, generator) if random_start else torch.zeros_like(x)
        delta = project(x, delta, r0, norm)
        calls = 0
        for radius, n in parts:
            delta = project(x, delta, radius, norm)
            best, last_delta, last_score, used = _apgd_part(
                model, x, y, valid, delta, radius=radius, steps=n, norm=norm, loss=loss, track_loss=track_loss,
                loss_kw=loss_kw, targeted=targeted, momentum=momentum, initial_step=initial_step, rho=rho,
                rules=rules, early_stop=rules.early_stop != "off" and best_iterate, use_amp=use_amp, callback=callback,
                step0=calls)
            calls += used
            # The next part starts from this part's lowest-accuracy iterate (projected onto its radius).
            delta = best.adv - x
        if best_iterate:
            adv, score = best.adv, best.score
        else:
            adv, score = x + last_delta, last_score
    # The clamp can only move a value towards x: the budget still holds.
    return adv.clamp(0, 1).detach(), score


def apgd(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float = 8 / 255,
    steps: int = 10,
    norm: str = "linf",
    loss: str = "ce",
    track_loss: str | None = None,
    random_start: bool = True,
    ignore_index: int = 255,
    targeted: bool = False,
    best_iterate: bool = True,
    generator: torch.Generator | None = None,
    amp: bool = False,
    callback: Callable[[dict], None] | None = None,
    radius_schedule: bool = False,
    momentum: float = 0.75,
    initial_step: float = 2.0,
    rho: float = 0.75,
    rules: str | ApgdRules = "default",
    q0: float = 0.2,
    schedule: str = "linear",
    kernel_size: int = 3,
    gamma: float = 0.0,
    front: bool = True,
    selection: bool = True,
) -> torch.Tensor:
    """APGD (Croce & Hein 2020) with a segmentation loss (definition in the module docstring).

    Reference: https://arxiv.org/abs/2003.01690 (APGD); losses and radius
    schedule: Croce et al., ECCV 2024, https://arxiv.org/abs/2306.12941.

    Args:
        model: maps images ``[B, 3, H, W]`` in [0, 1] to logits ``[B, C, H, W]``.
        images: clean images in [0, 1], floating point.
        labels: ``[B, H, W]`` int64, ``ignore_index`` at void pixels (targets when ``targeted``).
        eps: budget in pixel units (Linf per element, L2 per image).
        steps: iterations ``T >= 1``.
        norm: ``"linf"`` or ``"l2"``.
        loss: one of :data:`LOSSES`: ``ce``, ``masked_ce``, ``balanced_ce``,
            ``js``, ``masked_spherical``, ``eroseg``, ``spherical`` (each
            function's docstring gives its definition). Its gradient drives the steps.
        track_loss: the loss whose per-image value drives the restarts from
            the best point and the step halving (one of :data:`LOSSES`); None:
            SEA's reference pairing, :data:`TRACK_LOSSES` (``ce`` for ``ce``,
            ``masked_ce``, ``balanced_ce``, ``js`` and ``eroseg``;
            ``spherical``, the unmasked normalised true-class logit, for
            ``masked_spherical``). Pass ``track_loss=loss`` to track the
            attack loss itself.
        random_start: start from a uniform random point of the (first) radius ball.
        ignore_index: void label.
        targeted: minimise the loss towards ``labels`` (the masks of the masked
            losses then mark the pixels not yet at their target).
        best_iterate: return per image the iterate with the lowest pixel
            accuracy; otherwise the last iterate.
        generator: generator of the random start.
        amp: bf16 autocast of the forward passes on CUDA (no-op on CPU); losses in float32.
        callback: ``callback(info)`` for every evaluated iterate, as
            :func:`eroseg.attacks.core.run_attack` (``step``, ``logits``,
            ``weights`` (EroSeg's, else None), ``fooled``, ``images``) plus
            ``radius``, ``step_size`` ``[B]``, ``loss`` ``[B]`` (the tracked
            per-image objective) and ``attack_loss`` ``[B]`` (the attack
            loss's), and EroSeg's masks for ``loss="eroseg"``. ``step`` counts
            the iterates: ``T + 1`` calls (``T + 3`` with the radius schedule,
            one more per part for its start), fewer when a part stops early
            (``rules.early_stop``).
        radius_schedule: progressive radius reduction over ``2 eps``,
            ``1.5 eps``, ``eps`` (module docstring).
        momentum: ``alpha`` of the momentum step, in [0, 1] (1: no momentum).
        initial_step: initial step size in units of the radius (2: ``2 eps``).
        rho: share of loss-raising iterations below which the step is halved.
        rules: bookkeeping choices, :class:`ApgdRules` or a name of
            :data:`NAMED_RULES`: ``"default"`` (this package's) or
            ``"reference"`` (SEA's reference code, iterate for iterate).
        q0, schedule, kernel_size, gamma, front, selection: EroSeg's switches
            (:func:`eroseg.attacks.eroseg.eroseg`); used only with ``loss="eroseg"``.

    Returns:
        Adversarial images: same shape, dtype and device as ``images``, detached,
        within ``eps`` of ``images`` and in [0, 1].

    Shape:
        images ``[B, 3, H, W]``, labels ``[B, H, W]`` -> ``[B, 3, H, W]``.

    Raises:
        RuntimeError: called inside ``torch.inference_mode()``.
        TypeError, ValueError: bad parameters or inputs (the message names them).
    """
    options = checked_run_options(locals(), check_apgd_params)
    adv, _ = run_apgd(model, images, labels, loss=loss, track_loss=track_loss, callback=callback, **options)
    return adv
