"""The shared iterative loop of every gradient attack, with projections and per-image accuracy.

An attack is this loop plus a per-pixel weight function: PGD weights every
valid pixel by 1, SegPGD and CosPGD re-weight them, EroSeg restricts the
loss to the sensitive pixels and the erosion front. The weights are computed
from the logits of the same forward pass that gives the gradient, so an
attack step costs one forward and one backward pass, like PGD.

Shared rules: the result stays within ``eps`` (Linf or L2) of the input and
in [0, 1]; only the perturbation gets gradients (``torch.autograd.grad``),
never the model's parameters; the model's train/eval mode is restored in
``finally``; the attack runs under ``torch.enable_grad()``; the pixel loss is
summed over valid pixels and divided by their number in the batch; dtype and
device follow the inputs.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

NORMS = ("linf", "l2")

#: ``weight_fn(t, steps, logits, labels, valid) -> (weights [B,H,W] or None, extra masks dict)``
WeightFn = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], tuple]


def check_params(*, eps: float, step_size: float | None, steps: int, norm: str) -> None:
    """Validate the shared attack parameters with messages that name the bad one."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive number (pixel units, e.g. 8/255), got {eps!r}")
    if step_size is not None and not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def class_map(logits: torch.Tensor) -> torch.Tensor:
    """Predicted classes ``[B, H, W]`` of logits ``[B, C, H, W]``.

    ``max(1).indices`` rather than ``argmax(1)``: the same classes, but on CPU
    ``argmax`` over the channel dimension of an NCHW tensor takes a slow path
    (about 10x slower at 8x8x64x64), which would show in every attack step.
    """
    return logits.max(1).indices


def pixel_accuracy_per_image(
    logits_or_pred: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """Per-image pixel accuracy over valid pixels, ``[B]`` float (1.0 for an image with no valid pixel).

    Args:
        logits_or_pred: logits ``[B, C, H, W]`` or class map ``[B, H, W]``.
        labels: ``[B, H, W]``.
        ignore_index: void label.
    """
    pred = class_map(logits_or_pred) if logits_or_pred.dim() == 4 else logits_or_pred
    valid = labels != ignore_index
    correct = ((pred == labels) & valid).flatten(1).sum(1).float()
    n = valid.flatten(1).sum(1).float()
    return torch.where(n > 0, correct / n.clamp_min(1), torch.ones_like(n))


def _per_image_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (x.dim() - 1)))


def random_init(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A random perturbation inside the eps ball (uniform in the Linf box or the L2 ball)."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    d = x[0].numel()
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / _per_image_norm(direction).clamp_min(1e-12)
    radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return direction * eps * radius ** (1.0 / d)


def project(x: torch.Tensor, delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``delta`` onto the eps ball and so that ``x + delta`` lies in [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = _per_image_norm(delta)
        delta = delta * torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
    # Clamping to the box after the ball keeps both constraints: for Linf trivially, for L2
    # because clamping towards x only shortens delta.
    return (x + delta).clamp(0, 1) - x


def step(delta: torch.Tensor, grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    """Ascent step: signed gradient (Linf) or per-image normalised gradient (L2)."""
    if norm == "linf":
        return delta + step_size * grad.sign()
    g = grad / _per_image_norm(grad).clamp_min(1e-12)
    return delta + step_size * g


def run_attack(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    random_start: bool = True,
    ignore_index: int = 255,
    targeted: bool = False,
    best_iterate: bool = False,
    generator: torch.Generator | None = None,
    amp: bool = False,
    callback: Callable[[dict], None] | None = None,
    weight_fn: WeightFn | None = None,
) -> torch.Tensor:
    """Iterative gradient attack shared by every attack of the package.

    Args:
        model: maps images ``[B, 3, H, W]`` in [0, 1] to logits ``[B, C, H, W]``.
        images: clean images in [0, 1].
        labels: true labels ``[B, H, W]`` (target labels when ``targeted``).
        eps: budget in pixel units (Linf per element, L2 per image).
        step_size: step length (signed step for Linf, normalised gradient for L2).
        steps: number of steps T.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a uniform random point in the eps ball.
        ignore_index: void label; void pixels contribute nothing.
        targeted: minimise the loss towards ``labels`` instead of maximising it.
        best_iterate: return, per image, the iterate with the lowest pixel
            accuracy seen (each step's forward pass evaluates the current
            iterate; one more forward evaluates the last; ties keep the earlier).
        generator: random generator of the random start (same seed, same result).
        amp: bf16 autocast for the forward passes on CUDA (loss in float32).
        callback: called after each step's forward with ``step``, ``logits``,
            ``weights``, ``fooled`` and the weight function's masks.
        weight_fn: per-pixel loss weights; ``None`` weights every valid pixel by 1.

    Returns:
        Adversarial images, same shape, dtype and device as ``images``, detached.
    """
    check_params(eps=eps, step_size=step_size, steps=steps, norm=norm)
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "attacks need autograd, which torch.inference_mode() disables; call the attack outside "
            "inference_mode (torch.no_grad() is fine: attacks re-enable gradients themselves)"
        )
    if images.dim() != 4 or labels.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"expected images [B, 3, H, W] and labels [B, H, W]; got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    x = images.detach()
    labels = labels.detach().long()
    valid = labels != ignore_index
    n_valid = valid.sum().clamp_min(1).to(torch.float32)
    use_amp = amp and x.is_cuda
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    best_adv = x.clone() if best_iterate else None
    best_acc = torch.full((x.shape[0],), math.inf, device=x.device) if best_iterate else None

    def track(adv: torch.Tensor, logits: torch.Tensor) -> None:
        acc = pixel_accuracy_per_image(logits, labels, ignore_index)
        better = acc < best_acc
        best_acc.copy_(torch.where(better, acc, best_acc))
        best_adv.copy_(torch.where(better.view(-1, 1, 1, 1), adv.detach(), best_adv))

    try:
        model.eval()
        for p in params:  # gradients flow to the perturbation only
            p.requires_grad_(False)
        with torch.enable_grad():
            delta = random_init(x, eps, norm, generator) if random_start else torch.zeros_like(x)
            delta = project(x, delta, eps, norm)
            for t in range(steps):
                delta.requires_grad_(True)
                adv = x + delta
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    logits = model(adv)
                logits = logits.float()
                with torch.no_grad():
                    weights, extra = weight_fn(t, steps, logits.detach(), labels, valid) if weight_fn else (None, {})
                    if best_iterate:
                        track(adv, logits)
                    if callback is not None:
                        fooled = (class_map(logits) != labels) & valid
                        callback({"step": t, "logits": logits.detach(), "weights": weights, "fooled": fooled, **extra})
                ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
                if weights is not None:
                    ce = ce * weights
                loss = ce.sum() / n_valid
                if targeted:
                    loss = -loss
                (grad,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    delta = project(x, step(delta.detach(), grad, step_size, norm), eps, norm)
        adv = (x + delta).detach()
        if best_iterate:
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                track(adv, model(adv).float())
            adv = best_adv
        return adv.to(images.dtype)
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
