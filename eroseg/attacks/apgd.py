"""APGD for segmentation: step-size-free PGD with momentum and per-image step halving, with the losses of SEA.

The losses and their registry are :mod:`eroseg.attacks.losses`; APGD takes a
loss name and that loss's parameters (``loss="eroseg", loss_params={"q0":
0.4}``).

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
``track_loss`` (default: the loss's ``track`` in
:data:`eroseg.attacks.losses.LOSSES`, the reference's pairing), not
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
from eroseg.attacks.losses import LOSSES, check_loss_name, pixel_loss, resolve_loss_params
from eroseg.conventions import DEFAULT_EPS, DEFAULT_STEPS, IGNORE_INDEX

#: Radii of the three parts of the progressive radius schedule, in units of eps.
RADIUS_FACTORS = (2.0, 1.5, 1.0)

#: Parameters of :func:`apgd` and SEA that every one of their APGD runs gets unchanged.
_RUN_OPTIONS = ("eps", "steps", "norm", "random_start", "ignore_index", "targeted", "best_iterate", "generator", "amp",
                "radius_schedule", "momentum", "initial_step", "rho", "rules")


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


def check_apgd_options(*, rules, momentum: float, initial_step: float, rho: float, radius_schedule: bool) -> None:
    """Validate the APGD options that :func:`apgd` and SEA share (not the loss).

    Raises:
        TypeError: wrong type (e.g. ``momentum="0.75"``, ``radius_schedule="yes"``).
        ValueError: unknown ``rules``, ``momentum`` or ``rho`` outside [0, 1], ``initial_step <= 0``.
    """
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


def check_apgd_params(*, loss: str, loss_params: Mapping[str, Any] | None, track_loss: str | None, rules,
                      momentum: float, initial_step: float, rho: float, radius_schedule: bool) -> None:
    """Validate APGD's own parameters: the loss, its parameters, the tracked loss and the shared options.

    Raises:
        TypeError: wrong type (e.g. ``momentum="0.75"``, ``radius_schedule="yes"``, ``loss_params=[...]``).
        ValueError: unknown loss or tracking loss (lists the valid ones), a parameter the loss does not take
            or a bad value of one (:func:`eroseg.attacks.losses.resolve_loss_params`), unknown ``rules``,
            ``momentum`` or ``rho`` outside [0, 1], ``initial_step <= 0``.
    """
    resolve_loss_params(loss, loss_params)
    if track_loss is not None:
        check_loss_name(track_loss, key="track_loss")
    check_apgd_options(rules=rules, momentum=momentum, initial_step=initial_step, rho=rho,
                       radius_schedule=radius_schedule)


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
        Keyword arguments of :func:`run_apgd` but ``loss``, ``loss_params``,
        ``track_loss`` and ``callback``: ``eps``, ``steps``, ``norm``,
        ``random_start``, ``ignore_index``, ``targeted``, ``best_iterate``,
        ``generator``, ``amp``, ``radius_schedule``, ``momentum``,
        ``initial_step``, ``rho``, ``rules`` (an :class:`ApgdRules`).
    """
    check_attack_arguments(arguments, check_own)
    options = {name: arguments[name] for name in _RUN_OPTIONS}
    options["rules"] = resolve_rules(options["rules"])
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


class _IterateEvaluator:
    """Evaluates the iterates of one APGD part: forward pass, attack loss and its gradient, tracked loss.

    Each call also updates the part's lowest-accuracy iterate (``best``) and
    calls the attack's callback. The per-image objective is the loss's mean
    over the image's valid pixels, negated when targeted, so that APGD always
    maximises it.
    """

    def __init__(self, model, x, y, valid, best: _PartBest, *, radius: float, steps: int, loss: str,
                 loss_params: dict, track_loss: str, targeted: bool, use_amp: bool,
                 callback: Callable[[dict], None] | None, step0: int):
        self.model, self.x, self.y, self.valid, self.best = model, x, y, valid, best
        self.radius, self.steps, self.targeted, self.use_amp = radius, steps, targeted, use_amp
        self.loss, self.loss_params, self.track_loss = loss, loss_params, track_loss
        self.track_params = loss_params if track_loss == loss else resolve_loss_params(track_loss, None)
        self.callback, self.step0 = callback, step0
        self.n_valid = valid.flatten(1).sum(1).clamp_min(1)
        self.sign = -1.0 if targeted else 1.0

    def __call__(self, delta: torch.Tensor, t: int, need_grad: bool,
                 step_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Iterate ``x + delta`` (iterate index ``t``) -> ``(tracked objective [B], gradient or None, score [B])``."""
        delta = delta.detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            adv = self.x + delta
            logits = _forward(self.model, adv, self.use_amp)
            if t == 0 and self.step0 == 0:
                check_logits(logits, self.y)
            with torch.no_grad():
                pred = class_map(logits)
            context = dict(t=t, steps=self.steps, targeted=self.targeted, pred=pred)
            pixels, masks = pixel_loss(self.loss, logits, self.y, self.valid, **context, **self.loss_params)
            objective = self.sign * pixels.flatten(1).sum(1) / self.n_valid
            grad = torch.autograd.grad(objective.sum(), delta)[0] if need_grad else None
        with torch.no_grad():
            if self.track_loss == self.loss:
                tracked = objective.detach()
            else:
                track_pixels, _ = pixel_loss(self.track_loss, logits.detach(), self.y, self.valid, **context,
                                             **self.track_params)
                tracked = self.sign * track_pixels.flatten(1).sum(1) / self.n_valid
            score = self.best.update(adv, pred, t)
            if self.callback is not None:
                self.callback({
                    "step": self.step0 + t, "logits": logits.detach(), "weights": masks.pop("weights", None),
                    "fooled": fooled_mask(logits.detach(), self.y, self.valid, self.targeted),
                    "images": adv.detach(), "radius": self.radius, "step_size": step_size.view(-1).clone(),
                    "loss": tracked, "attack_loss": objective.detach(), **masks})
        return tracked, grad, score


class _StepSizeControl:
    """APGD's per-image step size and its restarts from the highest-loss point (module docstring).

    Holds the step size ``eta``, the highest tracked loss seen with its
    perturbation and gradient, and the counts that :func:`halving_rule`
    reads at each checkpoint.
    """

    def __init__(self, objective: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, step_size: torch.Tensor,
                 rules: ApgdRules, rho: float):
        self.rules, self.rho, self.eta = rules, rho, step_size
        self.loss_best, self.delta_best, self.grad_best = objective.clone(), delta.clone(), grad.clone()
        # The loss the first step is compared with: the start's (reference: 0, see ApgdRules).
        self.loss_prev = objective.clone() if rules.first_count_from_start else torch.zeros_like(objective)
        self.n_up = torch.zeros(objective.shape[0], device=objective.device)
        self.best_at_check = self.loss_best.clone()
        # "halved at the last checkpoint": False lets condition 2 act at the first checkpoint (paper).
        self.halved_at_check = torch.full(objective.shape, not rules.condition2_at_first_check, dtype=torch.bool,
                                          device=objective.device)
        self.last_check = 0

    def record(self, objective: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor) -> None:
        """Count a loss-raising iteration and keep the highest-loss point."""
        self.n_up += (objective > self.loss_prev).float()
        self.loss_prev = objective
        improved = objective > self.loss_best
        shape = (-1,) + (1,) * (delta.dim() - 1)
        self.loss_best = torch.where(improved, objective, self.loss_best)
        self.delta_best = torch.where(improved.view(shape), delta, self.delta_best)
        self.grad_best = torch.where(improved.view(shape), grad, self.grad_best)

    def checkpoint(self, iteration: int, delta: torch.Tensor, grad: torch.Tensor,
                   delta_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """At a checkpoint: halve ``eta`` and restart from the best point where :func:`halving_rule` says so.

        Returns:
            ``(delta, grad, delta_prev)`` to continue from.
        """
        rules = self.rules
        halve = halving_rule(self.n_up, iteration - self.last_check, self.rho, self.halved_at_check,
                             self.loss_best, self.best_at_check, strict=rules.strict_condition1)
        halve_image = halve.view((-1,) + (1,) * (delta.dim() - 1))
        self.eta = torch.where(halve_image, self.eta / 2, self.eta)
        delta = torch.where(halve_image, self.delta_best, delta)
        grad = torch.where(halve_image, self.grad_best, grad)
        if rules.reset_momentum:
            delta_prev = torch.where(halve_image, self.delta_best, delta_prev)
        if rules.count_from_restart:
            self.loss_prev = torch.where(halve, self.loss_best, self.loss_prev)
        self.halved_at_check, self.best_at_check = halve, self.loss_best.clone()
        self.n_up.zero_()
        self.last_check = iteration
        return delta, grad, delta_prev


def _apgd_part(model, x, y, valid, delta, *, radius, steps, norm, loss, loss_params, track_loss, targeted, momentum,
               initial_step, rho, rules, ignore_index, early_stop, use_amp, callback,
               step0) -> tuple[BestIterate, torch.Tensor, torch.Tensor, int]:
    """One APGD run at one radius from ``delta`` (already inside it).

    Returns:
        ``(best, last_delta, last_score, calls)``: the lowest-accuracy iterate
        tracker, the last iterate's perturbation and per-image score, and the
        number of iterates evaluated (for the callback's step numbering).
    """
    best = _PartBest(x + delta, y, ignore_index, targeted, valid, rules)
    evaluate_iterate = _IterateEvaluator(model, x, y, valid, best, radius=radius, steps=steps, loss=loss,
                                         loss_params=loss_params, track_loss=track_loss, targeted=targeted,
                                         use_amp=use_amp, callback=callback, step0=step0)
    checks = set(apgd_checkpoints(steps, rules.checkpoints))
    step_size = torch.full((x.shape[0],) + (1,) * (x.dim() - 1), initial_step * radius, dtype=x.dtype,
                           device=x.device)
    objective, grad, score = evaluate_iterate(delta, 0, steps > 0, step_size)
    calls = 1
    with torch.no_grad():
        control = _StepSizeControl(objective, delta, grad, step_size, rules, rho)
        delta_prev = delta.clone()
        for k in range(steps):
            alpha = 1.0 if k == 0 else momentum
            z = project(x, step(delta, grad, control.eta, norm), radius, norm)
            new = project(x, delta + alpha * (z - delta) + (1 - alpha) * (delta - delta_prev), radius, norm)
            delta_prev, delta = delta, new
            last = k + 1 == steps
            objective, grad_new, score = evaluate_iterate(delta, k + 1, not last, control.eta)
            calls += 1
            if last:
                break
            grad = grad_new
            control.record(objective, delta, grad)
            if k + 1 in checks:
                delta, grad, delta_prev = control.checkpoint(k + 1, delta, grad, delta_prev)
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
    loss_params: dict,
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD without the parameter checks; returns ``(adv, score)``, ``score`` the per-image pixel accuracy of ``adv``
    (targeted: ``1 -`` the accuracy with respect to the targets), from the forward pass that evaluated it.

    ``loss_params`` are all the loss's parameters
    (:func:`eroseg.attacks.losses.resolve_loss_params`); ``track_loss`` None
    tracks the loss's :attr:`~eroseg.attacks.losses.LossSpec.track`.
    """
    x, y = prepare_inputs(images, labels)
    valid = y != ignore_index
    use_amp = amp and x.is_cuda
    parts = radius_parts(steps, eps, radius_schedule)
    track_loss = LOSSES[loss].track if track_loss is None else track_loss
    with eval_mode(model), torch.enable_grad():
        # The random start is drawn in the first radius of the schedule even when a short run skips that part.
        first_radius = RADIUS_FACTORS[0] * eps if radius_schedule else eps
        delta = random_init(x, first_radius, norm, generator) if random_start else torch.zeros_like(x)
        delta = project(x, delta, first_radius, norm)
        calls = 0
        for radius, n in parts:
            delta = project(x, delta, radius, norm)
            best, last_delta, last_score, used = _apgd_part(
                model, x, y, valid, delta, radius=radius, steps=n, norm=norm, loss=loss, loss_params=loss_params,
                track_loss=track_loss, targeted=targeted, momentum=momentum, initial_step=initial_step, rho=rho,
                rules=rules, ignore_index=ignore_index, early_stop=rules.early_stop != "off" and best_iterate,
                use_amp=use_amp, callback=callback, step0=calls)
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
    eps: float = DEFAULT_EPS,
    steps: int = DEFAULT_STEPS,
    norm: str = "linf",
    loss: str = "ce",
    loss_params: dict | None = None,
    track_loss: str | None = None,
    random_start: bool = True,
    ignore_index: int = IGNORE_INDEX,
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
        loss: one of :data:`eroseg.attacks.losses.LOSSES`: ``ce``, ``masked_ce``,
            ``balanced_ce``, ``js``, ``masked_spherical``, ``eroseg``,
            ``spherical`` (each function's docstring gives its definition).
            Its gradient drives the steps.
        loss_params: the loss's own parameters, e.g. ``{"q0": 0.4}`` for
            ``loss="eroseg"`` (EroSeg's ``q0``, ``schedule``, ``kernel_size``,
            ``gamma``, ``front``, ``selection``; the other losses take none);
            None: the loss's defaults.
        track_loss: the loss whose per-image value drives the restarts from
            the best point and the step halving (one of :data:`eroseg.attacks.losses.LOSSES`,
            with its default parameters unless it is ``loss``); None:
            SEA's reference pairing, :attr:`eroseg.attacks.losses.LossSpec.track` (``ce`` for ``ce``,
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
    adv, _ = run_apgd(model, images, labels, loss=loss, loss_params=resolve_loss_params(loss, loss_params),
                      track_loss=track_loss, callback=callback, **options)
    return adv
