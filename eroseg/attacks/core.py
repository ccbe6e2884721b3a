"""Shared engine of the gradient attacks: the iterative loop, its steps, projections, checks and accuracy.

Every attack of the package is :func:`run_attack` plus a per-pixel weight
function ``weight_fn(t, T, logits, labels, valid)``: PGD weights every valid
pixel by 1 (``weight_fn=None``), SegPGD and CosPGD re-weight them, EroSeg
restricts the loss to its sensitive pixels and erosion front. The weights come
from the logits of the same forward pass that gives the gradient, so a step
costs one forward and one backward pass whatever the attack.

Rules every attack obeys (each one is tested in ``tests/test_attacks.py``):

* the result lies within ``eps`` of the input (Linf per element, L2 per image
  over all ``C*H*W`` values) and in [0, 1];
* gradients are taken with ``torch.autograd.grad(loss, delta)``, so only the
  perturbation gets one; the model's parameters are left alone (no ``.grad``,
  ``requires_grad`` untouched: freezing them does not make the input gradient
  any faster, because autograd only computes what ``delta`` needs);
* the model runs in eval mode; every module's own train/eval flag is restored
  in ``finally``, also when the model raises;
* the loop runs under ``torch.enable_grad()`` (so it works inside
  ``torch.no_grad()``) and refuses to run inside ``torch.inference_mode()``;
* the pixel loss is ``sum(w * CE) / N`` with ``N`` the valid pixels of the
  whole batch; void pixels (``ignore_index``) contribute nothing;
* dtype and device follow the inputs.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from eroseg.conventions import IGNORE_INDEX, autocast
from eroseg.numbers import above_pixel_range

#: Threat models: per-element (``linf``) or per-image Euclidean (``l2``) budget.
NORMS = ("linf", "l2")

#: ``weight_fn(t, T, logits, labels, valid)`` returns the per-pixel weights ``[B, H, W]``
#: (``None``: 1 on every valid pixel), or a pair ``(weights, masks)`` whose dict of masks
#: is passed on to the callback.
WeightFn = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], Any]

_FLAGS = ("random_start", "targeted", "best_iterate", "amp")

#: Parameters that :func:`check_common` validates, for every attack that has them.
COMMON_PARAMETERS = ("eps", "step_size", "steps", "norm", *_FLAGS, "ignore_index", "generator", "callback")


# ------------------------------------------------------------------ validation
def _check_positive(name: str, value: Any, hint: str = "") -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number{hint}, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0{hint}, got {value!r}")


def check_common(params: Mapping[str, Any]) -> None:
    """Validate the parameters shared by all attacks; only the keys present are checked.

    Args:
        params: any of ``eps``, ``step_size``, ``steps``, ``norm``,
            ``random_start``, ``targeted``, ``best_iterate``, ``amp``,
            ``ignore_index``, ``generator``, ``callback``.

    Raises:
        TypeError: a parameter has the wrong type (e.g. ``eps="8/255"``, ``steps=2.5``,
            ``random_start="false"``).
        ValueError: a parameter has a bad value (``eps <= 0``, ``steps < 1``,
            ``step_size <= 0``, ``norm`` not in :data:`NORMS`, a Linf ``eps`` or
            ``step_size`` above 1, the pixel range: "did you mean '8/255'?").
    """
    if "eps" in params:
        _check_positive("eps", params["eps"], " (pixel units, e.g. 8/255)")
    if "step_size" in params:
        _check_positive("step_size", params["step_size"], " (pixel units, e.g. 2/255)")
    if params.get("norm", "linf") == "linf":  # the one rule of eroseg.numbers (CLI and config too)
        for name in ("eps", "step_size"):
            if name in params and params[name] > 1:
                raise ValueError(above_pixel_range(name, params[name]))
    if "steps" in params:
        steps = params["steps"]
        if not isinstance(steps, numbers.Integral) or isinstance(steps, bool):
            raise TypeError(f"steps must be an integer >= 1, got {type(steps).__name__} {steps!r}")
        if steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if "norm" in params and params["norm"] not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {params['norm']!r}")
    for flag in _FLAGS:
        # Strict bools: a config string "false" would otherwise be truthy.
        if flag in params and not isinstance(params[flag], bool):
            raise TypeError(f"{flag} must be a bool (True/False), got {type(params[flag]).__name__} {params[flag]!r}")
    if "ignore_index" in params:
        ii = params["ignore_index"]
        if not isinstance(ii, numbers.Integral) or isinstance(ii, bool):
            raise TypeError(f"ignore_index must be an integer label value (e.g. 255), got {ii!r}")
    gen = params.get("generator")
    if gen is not None and not isinstance(gen, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(gen).__name__}")
    cb = params.get("callback")
    if cb is not None and not callable(cb):
        raise TypeError(f"callback must be callable(info: dict) or None, got {type(cb).__name__}")


def check_grad_mode() -> None:
    """Refuse to attack inside ``torch.inference_mode()``.

    Raises:
        RuntimeError: inference mode is on; attacks need autograd, which it disables
            and which ``torch.enable_grad()`` cannot turn back on.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "adversarial attacks need autograd (the gradient of the loss with respect to the input), "
            "which torch.inference_mode() disables and cannot be re-enabled inside it; call the attack "
            "outside inference_mode (inside torch.no_grad() is fine: attacks re-enable gradients themselves)"
        )


def check_inputs(images: Any, labels: Any) -> None:
    """Check that ``images`` is a float ``[B, C, H, W]`` tensor and ``labels`` an integer ``[B, H, W]`` one.

    Raises:
        TypeError: not tensors, images not floating point or labels not integer.
        ValueError: shapes or devices do not match.
    """
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(f"images and labels must be torch.Tensors, got {type(images).__name__} and "
                        f"{type(labels).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor with values in [0, 1], got dtype {images.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor (int64 class indices), got dtype {labels.dtype}")
    if images.dim() != 4 or labels.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"expected images [B, C, H, W] and labels [B, H, W] with the same B, H, W; got images "
                         f"{tuple(images.shape)} and labels {tuple(labels.shape)}")
    if images.device != labels.device:
        raise ValueError(f"images and labels must be on the same device, got {images.device} and {labels.device}")


#: Positional arguments of every attack, ``attack(model, images, labels, **keyword_parameters)``.
INPUTS = ("model", "images", "labels")


def check_attack_arguments(arguments: Mapping[str, Any], check_own: Callable[..., None] | None = None) -> None:
    """The checks that start an attack, in this order: grad mode, common parameters, the attack's own ones, inputs.

    Args:
        arguments: the attack's arguments by name: ``model``, ``images``,
            ``labels`` and its keyword parameters (its ``locals()`` taken
            before it assigns anything).
        check_own: called with the keyword parameters that are not in
            :data:`COMMON_PARAMETERS` (e.g. ``check_own(weight_fn=...)``);
            None: no own parameters.

    Raises:
        RuntimeError: inside ``torch.inference_mode()`` (:func:`check_grad_mode`).
        TypeError, ValueError: as :func:`check_common`, ``check_own`` and
            :func:`check_inputs`.
    """
    check_grad_mode()
    check_common({name: value for name, value in arguments.items() if name in COMMON_PARAMETERS})
    if check_own is not None:
        check_own(**{name: value for name, value in arguments.items()
                     if name not in COMMON_PARAMETERS and name not in INPUTS})
    check_inputs(arguments["images"], arguments["labels"])


# ------------------------------------------------------------ small building blocks
def class_map(logits: torch.Tensor) -> torch.Tensor:
    """Predicted classes ``[B, H, W]`` of logits ``[B, C, H, W]``.

    ``max(1).indices`` rather than ``argmax(1)``: the same classes (ties go to
    the lowest index in both), but on CPU ``argmax`` over the channel dimension
    of an NCHW tensor takes a slow path (about 10x slower at 8x8x64x64), which
    would show in every attack step.

    Args:
        logits: ``[B, C, H, W]``.

    Returns:
        ``[B, H, W]`` int64.
    """
    return logits.max(1).indices


def pixel_accuracy_per_image(
    logits_or_pred: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per-image pixel accuracy over the valid (non-void) pixels.

    Args:
        logits_or_pred: logits ``[B, C, H, W]`` or predicted classes ``[B, H, W]``.
        labels: ``[B, H, W]`` integer labels.
        ignore_index: void label; void pixels are left out of both counts.

    Returns:
        ``[B]`` float32 on the inputs' device; 1.0 for an image without a valid
        pixel (nothing there can be fooled).

    Shape:
        ``[B, C, H, W]`` or ``[B, H, W]``, ``[B, H, W]`` -> ``[B]``.
    """
    if logits_or_pred.dim() not in (3, 4):
        raise ValueError(f"logits_or_pred must be logits [B, C, H, W] or classes [B, H, W], got shape "
                         f"{tuple(logits_or_pred.shape)}")
    pred = class_map(logits_or_pred) if logits_or_pred.dim() == 4 else logits_or_pred
    if pred.shape != labels.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and labels {tuple(labels.shape)} differ in shape")
    valid = labels != ignore_index
    correct = ((pred == labels) & valid).flatten(1).sum(1).float()
    n = valid.flatten(1).sum(1).float()
    return torch.where(n > 0, correct / n.clamp_min(1), torch.ones_like(n))


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Weighted pixel cross-entropy ``sum(w * CE) / N``, ``N`` the valid pixels of the whole batch.

    Dividing by the batch's valid-pixel count (not by ``B*H*W``, not per image)
    keeps the loss scale independent of image size and of how much is void.

    Args:
        logits: ``[B, C, H, W]``.
        labels: ``[B, H, W]``; ``ignore_index`` pixels contribute 0.
        weights: ``[B, H, W]`` per-pixel weights, or ``None`` for 1 everywhere.
        ignore_index: void label.

    Returns:
        Scalar loss in the logits' dtype.
    """
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    if weights is not None:
        ce = ce * weights
    n_valid = (labels != ignore_index).sum().clamp_min(1)
    return ce.sum() / n_valid


def _per_image_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each image over all its values, shaped ``[B, 1, 1, 1]`` for broadcasting."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1).view(-1, *([1] * (x.dim() - 1)))


def random_init(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random start inside the eps ball (before the [0, 1] clamp).

    Linf: uniform in ``[-eps, eps]`` per element. L2: uniform in the ball of
    radius eps in ``d = C*H*W`` dimensions (Gaussian direction, radius
    ``eps * U^(1/d)``).

    Args:
        x: clean images ``[B, C, H, W]`` (only shape, dtype, device are used).
        eps: radius.
        norm: ``"linf"`` or ``"l2"``.
        generator: random generator; it may live on another device than ``x``
            (e.g. a CPU generator for CUDA images): the noise is drawn on the
            generator's device, then moved, so a seed gives the same start.

    Returns:
        ``delta`` with the shape, dtype and device of ``x``.
    """
    dev = generator.device if generator is not None else x.device
    kw = dict(generator=generator, device=dev, dtype=x.dtype)
    if norm == "linf":
        delta = (2 * torch.rand(x.shape, **kw) - 1) * eps
    else:
        d = x[0].numel()
        direction = torch.randn(x.shape, **kw)
        direction = direction / _per_image_norm(direction).clamp_min(torch.finfo(x.dtype).tiny)
        u = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), **kw)
        delta = direction * (eps * u ** (1.0 / d))
    return delta.to(x.device)


def project(x: torch.Tensor, delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``delta`` onto the eps ball, then so that ``x + delta`` lies in [0, 1].

    Clamping to the box after the ball keeps both constraints: for Linf
    trivially, for L2 because clamping towards ``x`` only shortens each
    coordinate of ``delta``.

    Args:
        x: clean images ``[B, C, H, W]``.
        delta: perturbation, same shape.
        eps: radius (per element for Linf, per image for L2).
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        The projected perturbation, same shape.
    """
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        scale = (eps / _per_image_norm(delta).clamp_min(torch.finfo(delta.dtype).tiny)).clamp_max(1.0)
        delta = delta * scale
    return (x + delta).clamp(0, 1) - x


def step(delta: torch.Tensor, grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    """Ascent step: ``step_size * sign(grad)`` (Linf) or ``step_size * g / ||g||`` per image (L2).

    A zero gradient gives a zero step (sign 0; L2 divides by a clamped norm)
    rather than NaNs.

    Args:
        delta: current perturbation ``[B, C, H, W]``.
        grad: gradient of the loss with respect to ``delta``, same shape.
        step_size: step length.
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        ``delta`` plus the step (not yet projected).
    """
    if norm == "linf":
        return delta + step_size * grad.sign()
    g = grad / _per_image_norm(grad).clamp_min(torch.finfo(grad.dtype).tiny)
    return delta + step_size * g


@contextlib.contextmanager
def eval_mode(model: Any):
    """Put ``model`` in eval mode for the block; restore every module's own flag afterwards, also on error.

    Each submodule's flag is restored, not just the top one: a model in train
    mode with frozen (eval) BatchNorm layers comes back exactly as it was.
    Plain callables that are not ``nn.Module`` are left alone.

    Args:
        model: an ``nn.Module`` (or any callable, untouched).
    """
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    modes = [m.training for m in modules]
    try:
        if modules:
            model.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


def _forward(model: Callable, adv: torch.Tensor, amp: bool) -> torch.Tensor:
    with autocast(adv.device, amp):
        logits = model(adv)
    # Loss and weights in float32 when the forward ran in low precision; float64 models stay float64.
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits


def _unpack_weights(out: Any, labels: torch.Tensor) -> tuple[torch.Tensor | None, dict]:
    weights, masks = out if isinstance(out, tuple) else (out, {})
    if weights is not None and weights.shape != labels.shape:
        raise ValueError(f"weight_fn must return weights shaped like labels {tuple(labels.shape)} (or None), "
                         f"got {tuple(weights.shape)}")
    return weights, dict(masks)


def prepare_inputs(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached copies of the inputs that can take part in autograd; labels as int64.

    Tensors made inside ``torch.inference_mode()`` cannot be used in autograd;
    a plain copy can, so those are cloned (others are not copied).

    Args:
        images: ``[B, C, H, W]`` float (already checked by :func:`check_inputs`).
        labels: ``[B, H, W]`` integer.

    Returns:
        ``(x, y)``.
    """
    x = images.detach()
    y = labels.detach().long()
    if x.is_inference():
        x = x.clone()
    if y.is_inference():
        y = y.clone()
    return x, y


def check_logits(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Check that the model's output is logits ``[B, K, H, W]`` matching ``labels`` ``[B, H, W]``.

    Raises:
        ValueError: other shape (the message gives both).
    """
    if logits.dim() != 4 or logits.shape[0] != labels.shape[0] or logits.shape[2:] != labels.shape[1:]:
        raise ValueError(f"model must return logits [B, classes, H, W] matching labels {tuple(labels.shape)}, "
                         f"got {tuple(logits.shape)}")


def fooled_mask(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Valid pixels the attack has already won: prediction differs from the label (targeted: equals the target).

    Args:
        logits: ``[B, C, H, W]``.
        labels: ``[B, H, W]``.
        valid: ``[B, H, W]`` bool.
        targeted: targeted roles.

    Returns:
        ``[B, H, W]`` bool.
    """
    pred = class_map(logits)
    return valid & ((pred == labels) if targeted else (pred != labels))


class BestIterate:
    """Per image, the iterate with the lowest pixel accuracy seen so far (targeted: the highest), on the device.

    ``update`` is a few tensor operations (no host-device synchronisation);
    ties keep the earlier iterate. Before the first update every image holds
    ``start`` with score ``+inf``, so the first update always replaces it.

    Args:
        start: ``[B, C, H, W]`` images held before any update (copied).
        labels: ``[B, H, W]``.
        ignore_index: void label of the accuracy.
        targeted: score ``1 - accuracy`` with respect to the targets.
    """

    def __init__(self, start: torch.Tensor, labels: torch.Tensor, ignore_index: int, targeted: bool):
        self.adv = start.detach().clone()
        self.score = torch.full((start.shape[0],), math.inf, device=start.device)
        self.labels = labels
        self.ignore_index = ignore_index
        self.targeted = targeted

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-image score ``[B]`` of an iterate (lower is better for the attack)."""
        acc = pixel_accuracy_per_image(logits, self.labels, self.ignore_index)
        return 1 - acc if self.targeted else acc

    def update(self, adv: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Keep ``adv`` for the images where it scores strictly better; returns its scores ``[B]``."""
        score = self.scores(logits)
        better = score < self.score
        self.score.copy_(torch.where(better, score, self.score))
        self.adv.copy_(torch.where(better.view(-1, 1, 1, 1), adv.detach(), self.adv))
        return score


# --------------------------------------------------------------------- the loop
def _check_weight_fn(*, weight_fn: Any) -> None:
    if weight_fn is not None and not callable(weight_fn):
        raise TypeError(f"weight_fn must be callable or None, got {type(weight_fn).__name__}")


def attack_step(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    valid: torch.Tensor,
    delta: torch.Tensor,
    t: int,
    *,
    steps: int,
    eps: float,
    step_size: float,
    norm: str,
    ignore_index: int,
    targeted: bool,
    use_amp: bool,
    weight_fn: WeightFn | None,
    callback: Callable[[dict], None] | None,
    best: BestIterate | None,
) -> torch.Tensor:
    """Step ``t`` of :func:`run_attack` from the perturbation ``delta``; returns the next one.

    One forward pass on the current iterate ``x + delta``; per-pixel
    weights from those logits (``weight_fn``); loss ``sum(w * CE) / N``; its
    gradient with respect to ``delta`` (one backward pass); a signed (Linf) or
    normalised (L2) step; projection onto the eps ball and the [0, 1] box.
    The same forward pass gives the prediction of iterate ``t`` that ``best``
    scores and that the callback receives. Targeted: the loss is minimised.

    Args:
        model, steps, eps, step_size, norm, ignore_index, targeted, weight_fn,
            callback: as :func:`run_attack`.
        x, y: clean images and labels from :func:`prepare_inputs`.
        valid: ``y != ignore_index``.
        delta: perturbation of iterate ``t`` (inside the eps ball and the box).
        t: step index, ``0 <= t < steps``.
        use_amp: bf16 autocast of the forward pass (CUDA only).
        best: best-iterate tracker, or None.

    Returns:
        ``delta`` of iterate ``t + 1``, detached.
    """
    delta.requires_grad_(True)
    adv = x + delta
    logits = _forward(model, adv, use_amp)
    if t == 0:
        check_logits(logits, y)
    with torch.no_grad():
        weights, masks = _unpack_weights(
            weight_fn(t, steps, logits.detach(), y, valid) if weight_fn is not None else None, y)
        if best is not None:
            best.update(adv, logits)
        if callback is not None:
            fooled = fooled_mask(logits, y, valid, targeted)
            callback({"step": t, "logits": logits.detach(), "weights": weights, "fooled": fooled,
                      "images": adv.detach(), **masks})
    loss = segmentation_loss(logits, y, weights, ignore_index)
    if targeted:
        loss = -loss
    (grad,) = torch.autograd.grad(loss, delta)
    with torch.no_grad():
        return project(x, step(delta.detach(), grad, step_size, norm), eps, norm)


def final_iterate(model: Callable, x: torch.Tensor, delta: torch.Tensor, best: BestIterate | None,
                  use_amp: bool) -> torch.Tensor:
    """The result of :func:`run_attack`: the last iterate ``x + delta``, or with ``best`` per image the best iterate.

    Each step's forward pass has already scored its iterate (the random
    start, or the clean image without one, for ``t = 0``); one extra forward
    pass scores the last iterate. Clamped to [0, 1]: ``x + (clamp(x + d) - x)``
    is in [0, 1] up to rounding; the clamp makes it exact and can only move a
    value towards ``x``, so the budget still holds.

    Returns:
        ``[B, C, H, W]``, detached.
    """
    adv = x + delta
    if best is not None:
        with torch.no_grad():
            best.update(adv, _forward(model, adv, use_amp))
        adv = best.adv
    return adv.clamp(0, 1).detach()


def run_attack(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    ignore_index: int = IGNORE_INDEX,
    targeted: bool = False,
    best_iterate: bool = False,
    generator: torch.Generator | None = None,
    amp: bool = False,
    callback: Callable[[dict], None] | None = None,
    weight_fn: WeightFn | None = None,
) -> torch.Tensor:
    """Iterative gradient attack shared by every attack of the package; one step is :func:`attack_step`.

    Best iterate (``best_iterate=True``, :func:`final_iterate`): per image,
    the iterate with the lowest pixel accuracy is returned (targeted: the
    highest accuracy with respect to the targets), among the start and every
    step's result; ties keep the earlier iterate. Without it, the last iterate
    is returned.

    Targeted (``targeted=True``): ``labels`` are the target classes and the
    loss is minimised (the step direction is flipped). The callback's
    ``fooled`` mask then marks the pixels already predicted as their target.

    Args:
        model: maps images ``[B, C, H, W]`` in [0, 1] to logits ``[B, K, H, W]``
            (normalisation inside the model).
        images: clean images in [0, 1], floating point.
        labels: ``[B, H, W]`` integer labels (targets when ``targeted``).
        eps: budget in pixel units (Linf per element, L2 per image).
        step_size: step length in pixel units.
        steps: number of steps T >= 1.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a uniform random point of the eps ball.
        ignore_index: void label; void pixels contribute nothing.
        targeted: minimise the loss towards ``labels`` instead of maximising it.
        best_iterate: return the best iterate per image (see above).
        generator: generator of the random start (same seed, same result).
        amp: bf16 autocast for the forward passes on CUDA (no-op on CPU); the
            loss is computed in float32.
        callback: ``callback(info)`` after each step's forward and weights, with
            ``step`` (t), ``logits`` (detached), ``weights`` (detached, or None
            for uniform weights), ``fooled`` (bool, valid pixels whose
            prediction differs from the label, or equals the target when
            targeted), ``images`` (the iterate that was evaluated, detached)
            and any masks the weight function returned.
        weight_fn: ``weight_fn(t, T, logits, labels, valid)`` -> weights
            ``[B, H, W]``, ``None`` (uniform), or ``(weights, masks)``; it runs
            under ``torch.no_grad()`` on detached logits.

    Returns:
        Adversarial images: same shape, dtype and device as ``images``, detached.

    Shape:
        images ``[B, C, H, W]``, labels ``[B, H, W]`` -> ``[B, C, H, W]``.

    Raises:
        RuntimeError: called inside ``torch.inference_mode()``.
        TypeError, ValueError: bad parameters or inputs (the message names them).
    """
    check_attack_arguments(locals(), _check_weight_fn)
    x, y = prepare_inputs(images, labels)
    valid = y != ignore_index
    use_amp = amp and x.is_cuda
    best = BestIterate(x, y, ignore_index, targeted) if best_iterate else None
    with eval_mode(model), torch.enable_grad():
        delta = random_init(x, eps, norm, generator) if random_start else torch.zeros_like(x)
        delta = project(x, delta, eps, norm)
        for t in range(steps):
            delta = attack_step(model, x, y, valid, delta, t, steps=steps, eps=eps, step_size=step_size, norm=norm,
                                ignore_index=ignore_index, targeted=targeted, use_amp=use_amp, weight_fn=weight_fn,
                                callback=callback, best=best)
        return final_iterate(model, x, delta, best, use_amp)
