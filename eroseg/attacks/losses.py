"""Per-pixel losses of APGD and SEA and the registry that names them.

Every loss is ``fn(logits, labels, valid, *, t, steps, targeted, pred,
**params) -> [B, H, W]`` (0 at void pixels); ``eroseg`` returns ``(loss,
masks)``, its masks going to the attack's callback. ``t`` is the index of the
iterate (0 at the start), ``steps`` the iterations of the run (or of the
current radius part), ``pred`` the class map of ``logits`` when the caller
already has it. ``params`` are the loss's own parameters (EroSeg's six
switches for ``eroseg``; none for the others), given to an attack as
``loss_params``.

:data:`LOSSES` maps each name to a :class:`LossSpec`: the function, the loss
APGD tracks with it (restarts from the best point, step halving) and the
check of its parameters. Losses from Croce et al., "Towards Reliable
Evaluation and Fast Training of Robust Semantic Segmentation Models", ECCV
2024, https://arxiv.org/abs/2306.12941; ``eroseg`` is this project's.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from eroseg.attacks.core import class_map
from eroseg.attacks.eroseg import check_eroseg_params, eroseg_masks, quantile_schedule
from eroseg.attacks.segpgd import segpgd_weights

_LOG2 = math.log(2.0)

#: Keywords every loss receives from the attack loop; the rest of a loss's keyword parameters are its own.
LOSS_CONTEXT = ("t", "steps", "targeted", "pred")

#: Positional inputs of every loss.
_LOSS_INPUTS = ("logits", "labels", "valid")


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
    return _negative_label_cosine(logits, labels, valid) * _todo(logits, labels, valid, targeted, pred)


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
    return _negative_label_cosine(logits, labels, valid) * valid


def _negative_label_cosine(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``-u_y / ||u||_2`` per pixel, the spherical losses' value before their mask (``[B, H, W]``)."""
    u_y = logits.gather(1, _safe_labels(labels, valid)).squeeze(1)
    # sqrt(sum(u^2)) rather than linalg.vector_norm over dim 1: much faster on CPU for NCHW tensors.
    norm = logits.square().sum(1).clamp_min(torch.finfo(logits.dtype).tiny).sqrt()
    return -(u_y / norm)


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
            (:func:`eroseg.attacks.eroseg.eroseg`), the loss's own parameters.

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


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One loss of :data:`LOSSES`.

    Attributes:
        name: registry key.
        fn: ``fn(logits, labels, valid, *, t, steps, targeted, pred, **params)``
            returning the per-pixel loss ``[B, H, W]`` or ``(loss, masks)``.
        track: the loss APGD tracks (restarts from the best point, step
            halving) when this one drives the steps.
        check: ``check(**params)`` raising ``TypeError``/``ValueError`` for a
            bad value; None for a loss without parameters.
    """

    name: str
    fn: Callable
    track: str
    check: Callable[..., None] | None = None

    def parameters(self) -> dict[str, Any]:
        """``{parameter: default}`` of the loss's own parameters (those of ``fn`` beyond the inputs and context)."""
        skip = set(_LOSS_INPUTS) | set(LOSS_CONTEXT)
        return {name: p.default for name, p in inspect.signature(self.fn).parameters.items()
                if name not in skip and p.kind is inspect.Parameter.KEYWORD_ONLY}


#: The losses by name. ``track`` is the loss each one tracks, as SEA's reference pairs them (``tools/infer.py``
#: of nmndeep/robust-segmentation: plain CE, except the unmasked normalised true-class logit for the masked
#: spherical loss). The masked and re-weighted losses change their pixel weights between iterates, so their
#: values do not rank iterates; CE (or the unmasked spherical loss) does. ``eroseg`` weights CE by masks that
#: change with the iterate (as ``masked_ce`` and ``balanced_ce`` do), so it tracks CE too.
LOSSES: dict[str, LossSpec] = {spec.name: spec for spec in (
    LossSpec("ce", ce_loss, track="ce"),
    LossSpec("masked_ce", masked_ce_loss, track="ce"),
    LossSpec("balanced_ce", balanced_ce_loss, track="ce"),
    LossSpec("js", js_loss, track="ce"),
    LossSpec("masked_spherical", masked_spherical_loss, track="spherical"),
    LossSpec("eroseg", eroseg_loss, track="ce", check=check_eroseg_params),
    LossSpec("spherical", spherical_loss, track="spherical"),
)}


def check_loss_name(loss, key: str = "loss") -> None:
    """Raise ``ValueError`` naming the valid losses if ``loss`` is not a key of :data:`LOSSES`."""
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"{key} must be one of {', '.join(LOSSES)}; got {loss!r}")


def resolve_loss_params(loss: str, params: Mapping[str, Any] | None, key: str = "loss_params") -> dict[str, Any]:
    """The parameters of loss ``loss``: its defaults with ``params`` laid over them, checked.

    Args:
        loss: a key of :data:`LOSSES`.
        params: some of the loss's own parameters, or None.
        key: the name of ``params`` in error messages.

    Returns:
        ``{parameter: value}`` for every parameter of the loss (empty for a loss without any).

    Raises:
        TypeError: ``params`` is not a mapping, or a value of the wrong type.
        ValueError: unknown loss, a parameter the loss does not take (lists its parameters) or a bad value.
    """
    check_loss_name(loss)
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise TypeError(f"{key} must be a dict of the {loss!r} loss's parameters, got {type(params).__name__} "
                        f"{params!r}")
    spec = LOSSES[loss]
    defaults = spec.parameters()
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) if defaults else "none"
        raise ValueError(f"{key}: loss {loss!r} has no parameter(s) {unknown}; valid: {valid}")
    merged = {**defaults, **params}
    if spec.check is not None:
        spec.check(**merged)
    return merged


def pixel_loss(name: str, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, **kw) -> tuple[
        torch.Tensor, dict]:
    """Per-pixel loss ``name`` of :data:`LOSSES` and its masks (empty except for ``eroseg``)."""
    out = LOSSES[name].fn(logits, labels, valid, **kw)
    return out if isinstance(out, tuple) else (out, {})


def image_loss(pixel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-image mean of a per-pixel loss over the image's valid pixels: ``[B, H, W]`` -> ``[B]`` (0 without any)."""
    n = valid.flatten(1).sum(1).clamp_min(1)
    return pixel.flatten(1).sum(1) / n
