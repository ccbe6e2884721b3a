"""EroSeg attack: attack the least confident correct pixels first, then erode the correct region from the fooled one.

This is this project's specification of Song et al. (2026), "Erosion Attack
for Adversarial Training to Enhance Semantic Segmentation Robustness": the
paper selects sensitive pixels by pixel-level confidence and progressively
propagates the perturbation to higher-confidence pixels. At step t of T
(``c = p_y`` the softmax confidence of the true class at each valid pixel,
``K`` the correctly classified valid pixels, ``F`` the valid pixels already
fooled, i.e. whose argmax differs from the label):

1. sensitive pixels ``S_t = {i in K : c_i <= Q_t}``, ``Q_t`` the per-image
   ``q_t``-quantile of ``c`` over ``K``; ``q_t`` rises from ``q0`` to 1
   (:func:`quantile_schedule`);
2. erosion front ``E_t = K ∩ dilate_k(F)``: correct pixels inside the
   ``k x k`` neighbourhood of a fooled pixel; the dilation equals
   ``max_pool2d(F, k, stride=1, padding=k // 2)`` (tested), computed as ORs
   of shifted bool masks (:func:`dilate`);
3. weights 1 on ``S_t ∪ E_t``, ``gamma`` on ``F``, 0 elsewhere (void pixels
   included); loss ``sum(w * CE) / N`` and the usual signed (Linf) or
   normalised (L2) step of :func:`eroseg.attacks.core.run_attack`.

Quantile (:func:`masked_quantile`): the nearest order statistic,
``Q_t = sort(c over K)[round(q_t * (n_K - 1))]`` with 0-based indices and
``round`` rounding halves to even (the index is computed in float64). This is
exactly ``torch.quantile(c_K, q_t, interpolation="nearest")`` (and numpy's
``method="nearest"``). ``q_t = 0`` keeps the least confident correct pixel,
``q_t = 1`` all of ``K``; pixels tied with ``Q_t`` are all selected.

Ranking: pixels are ranked by the log-odds of the true class,
``log(p_y / (1 - p_y))`` with ``1 - p_y`` summed over the other classes
(:func:`true_class_log_odds`), a strictly increasing function of ``p_y``;
the quantile of a monotone transform is the transform of the quantile, so
``S_t`` is the set defined with ``p_y``. The log-odds do not saturate where
``p_y`` does: in float32, ``p_y`` rounds to exactly 1.0 for every pixel with
a margin above about 17, and those ties would put all such pixels into
``S_t`` at once. The ``threshold`` the callback receives is ``Q_t`` in
``p_y`` units.

Fallback: an image that still has correct pixels but no attacked pixel
(``S_t ∪ E_t`` empty: e.g. the erosion-only ablation at t = 0, before
anything is fooled) gets weight 1 on all of its ``K`` for that step, so the
attack never stalls; the erosion-only ablation therefore starts like PGD
restricted to the correct pixels until a fooled region exists. An image with
no correct pixel left is fully fooled and keeps the weights above.

Ablations, from configuration: ``front=False`` is "selection only",
``selection=False`` is "erosion only", both True (default) is EroSeg.

Targeted mode (``targeted=True``, labels are targets): the same rule applied
to what remains to be done: ``K`` = valid pixels not yet predicted as their
target, ``F`` = pixels already at their target, and the sensitive pixels are
those of ``K`` closest to success, i.e. with the *highest* target probability
(lowest ``-log-odds``).

Everything is vectorised over the batch and stays on the inputs' device: one
per-row order statistic (a batched sort on GPU) for the quantiles, one
separable dilation for the fronts, no Python loop over images and no
host-device synchronisation on CUDA (tested in ``tests/gpu/test_attacks_cuda.py``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from eroseg.attacks.core import class_map, run_attack
from eroseg.conventions import DEFAULT_EPS, DEFAULT_STEPS, IGNORE_INDEX

#: Shapes of the rise of ``q_t`` from ``q0`` to 1.
SCHEDULES = ("linear", "cosine", "constant")


def quantile_schedule(t: int, steps: int, q0: float, schedule: str = "linear") -> float:
    """Quantile level ``q_t`` of step ``t`` (0-based) of ``steps``.

    ``linear``: ``q0 + (1 - q0) * t / max(T - 1, 1)``; ``cosine``:
    ``q0 + (1 - q0) * (1 - cos(pi * t / max(T - 1, 1))) / 2``; both reach 1 at
    the last step. ``constant``: ``q0`` throughout.

    Args:
        t: step index in ``[0, steps)``.
        steps: number of steps T.
        q0: starting level in [0, 1].
        schedule: one of :data:`SCHEDULES`.

    Returns:
        ``q_t`` in ``[q0, 1]``.
    """
    if schedule == "constant":
        return q0
    r = t / max(steps - 1, 1)
    if schedule == "linear":
        return q0 + (1 - q0) * r
    if schedule == "cosine":
        return q0 + (1 - q0) * (1 - math.cos(math.pi * r)) / 2
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def order_statistic(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per row ``b``, the ``idx[b]``-th smallest (0-based) value of ``values[b]``.

    On GPUs one batched sort, which needs no host-device synchronisation. On
    CPU, where a full sort of every row is the slowest part of an EroSeg step
    and reading ``idx.max()`` costs nothing, one batched ``kthvalue`` (a
    selection, not a sort): row ``b`` is prefixed with ``k_max - 1 - idx[b]``
    copies of -inf (and +inf for the rest of the prefix), so the common
    ``k_max``-th smallest of every padded row is that row's own ``idx[b]``-th
    smallest. Both paths give exactly the same values.

    Args:
        values: ``[B, N]``.
        idx: ``[B]`` int64 indices in ``[0, N)``.

    Returns:
        ``[B]`` values.
    """
    if values.device.type != "cpu":
        return values.sort(dim=1).values.gather(1, idx.unsqueeze(1)).squeeze(1)
    k_max = int(idx.max()) + 1
    if k_max == 1:
        return values.min(dim=1).values
    cols = torch.arange(k_max - 1, device=values.device)
    n_low = (k_max - 1 - idx).unsqueeze(1)
    prefix = torch.where(cols.unsqueeze(0) < n_low, -math.inf, math.inf).to(values.dtype)
    return torch.cat([prefix, values], dim=1).kthvalue(k_max, dim=1).values


def masked_quantile(values: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """Per-image ``q``-quantile of ``values`` over the pixels in ``mask``: the nearest order statistic.

    ``sort(values[mask])[round(q * (n - 1))]`` per image, ``n`` the pixels in
    the mask, 0-based, halves rounded to even: the same value as
    ``torch.quantile(values[mask], q, interpolation="nearest")``.

    Args:
        values: ``[B, ...]`` float.
        mask: ``[B, ...]`` bool, same shape.
        q: level in [0, 1].

    Returns:
        ``[B]``; NaN for an image whose mask is empty.

    Shape:
        ``[B, H, W]``, ``[B, H, W]`` -> ``[B]``.
    """
    v = torch.where(mask, values, torch.full_like(values, math.inf)).flatten(1)
    n = mask.flatten(1).sum(1)
    # float64 so that q * (n - 1) lands on the same side of .5 as in exact arithmetic (MPS has no float64).
    fdt = torch.float32 if values.device.type == "mps" else torch.float64
    idx = torch.round(q * (n - 1).clamp_min(0).to(fdt)).long()
    out = order_statistic(v, idx)
    return torch.where(n > 0, out, torch.full_like(out, math.nan))


def true_class_log_odds(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log(p_y / (1 - p_y))`` per pixel, without saturating where ``p_y`` rounds to 1.

    ``1 - p_y`` is formed as the sum of the other classes' probabilities, never
    as a difference, so confident pixels keep distinct values although ``p_y``
    itself is exactly 1.0 in float32 beyond a margin of about 17. Only when
    every competitor's probability underflows (margins beyond ~87 in float32)
    does the value become ``+inf`` (also the value for a single class).

    Args:
        logits: ``[B, C, H, W]``.
        labels: ``[B, H, W]`` classes in ``[0, C)`` (map void pixels to any class first).

    Returns:
        ``[B, H, W]``.
    """
    y = labels.unsqueeze(1)
    # One fused softmax kernel, then the competitors' mass with the true class zeroed in place:
    # fewer passes over the [B, C, H, W] logits than a logsumexp over the other classes.
    p = logits.softmax(1)
    p_y = p.gather(1, y).squeeze(1)
    others = p.scatter_(1, y, 0.0).sum(1)
    return p_y.log() - others.log()


def dilate(mask: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Binary dilation of ``mask`` ``[B, H, W]`` by a ``k x k`` square (odd k), outside the image counting as False.

    The same result as ``max_pool2d(mask, k, stride=1, padding=k // 2) > 0``,
    computed separably as ``2 (k - 1)`` ORs of shifted views of the padded
    bool mask: on a GPU this is cheaper than a float max-pool and its casts,
    and it stays a bool tensor on the mask's device.

    Args:
        mask: ``[B, H, W]`` bool.
        kernel_size: odd k (1 returns ``mask`` unchanged).

    Returns:
        ``[B, H, W]`` bool.
    """
    r = kernel_size // 2
    if r == 0:
        return mask
    h, w = mask.shape[-2:]
    padded = F.pad(mask, (r, r, r, r))
    rows = padded[..., :, 0:w]
    for i in range(1, kernel_size):
        rows = rows | padded[..., :, i:i + w]
    out = rows[..., 0:h, :]
    for i in range(1, kernel_size):
        out = out | rows[..., i:i + h, :]
    return out


def erosion_front(fooled: torch.Tensor, correct: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    """``E = correct ∩ dilate_k(fooled)``: correct pixels within the ``k x k`` neighbourhood of a fooled one.

    Args:
        fooled: ``[B, H, W]`` bool.
        correct: ``[B, H, W]`` bool.
        kernel_size: odd k.

    Returns:
        ``[B, H, W]`` bool.
    """
    return correct & dilate(fooled, kernel_size)


def eroseg_masks(
    logits: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    *,
    q: float,
    kernel_size: int = 3,
    gamma: float = 0.0,
    front: bool = True,
    selection: bool = True,
    targeted: bool = False,
) -> tuple[torch.Tensor, dict]:
    """EroSeg's weights and masks for one step (see the module docstring for the definition).

    Args:
        logits: ``[B, C, H, W]``.
        labels: ``[B, H, W]`` (targets when ``targeted``).
        valid: ``[B, H, W]`` bool, False at void pixels.
        q: quantile level ``q_t`` in [0, 1].
        kernel_size: odd size k of the dilation neighbourhood.
        gamma: weight on already fooled pixels.
        front: use the erosion front ``E_t``.
        selection: use the sensitive pixels ``S_t``.
        targeted: targeted-mode roles (module docstring).

    Returns:
        ``(weights [B, H, W], masks)``; masks are bool ``[B, H, W]``
        ``sensitive`` (``S_t``), ``front`` (``E_t``), ``attacked`` (weight-1
        pixels, after the fallback), ``fooled`` (``F``), ``correct`` (``K``),
        and ``threshold``: ``Q_t`` per image ``[B]`` in ``p_y`` units (NaN
        without correct pixels or with ``selection=False``).
    """
    b = logits.shape[0]
    # Reductions over the class dimension of channels_last logits are several times slower on CUDA
    # than one copy to contiguous; for contiguous logits this is a no-op.
    logits = logits.contiguous()
    y = torch.where(valid, labels, torch.zeros_like(labels))  # any class at void pixels, masked below
    pred = class_map(logits)
    hit = pred == labels
    correct = valid & (~hit if targeted else hit)  # K: pixels the attack still has to flip
    fooled = valid ^ correct  # F: pixels already flipped (K is inside the valid pixels)
    threshold = torch.full((b,), math.nan, device=logits.device, dtype=logits.dtype)
    if selection:
        score = true_class_log_odds(logits, y)
        if targeted:
            score = -score  # closest to success = highest target probability
        thr = masked_quantile(score, correct, q)
        sensitive = correct & (score <= thr.view(b, 1, 1))
        threshold = torch.sigmoid(-thr if targeted else thr)
    else:
        sensitive = torch.zeros_like(correct)
    erosion = erosion_front(fooled, correct, kernel_size) if front else torch.zeros_like(correct)
    attacked = sensitive | erosion
    stalled = ~attacked.flatten(1).any(1) & correct.flatten(1).any(1)
    attacked = torch.where(stalled.view(b, 1, 1), correct, attacked)
    weights = attacked.to(logits.dtype)
    if gamma:
        weights = weights + gamma * fooled.to(logits.dtype)
    masks = {"sensitive": sensitive, "front": erosion, "attacked": attacked, "fooled": fooled, "correct": correct,
             "threshold": threshold}
    return weights, masks


def check_eroseg_params(
    *, q0: float, schedule: str, kernel_size: int, gamma: float, front: bool, selection: bool
) -> None:
    """Validate EroSeg's own parameters.

    Raises:
        TypeError: wrong type (e.g. ``front="false"``, ``kernel_size=3.0``).
        ValueError: ``q0`` outside [0, 1], unknown ``schedule``, even or < 1
            ``kernel_size``, negative ``gamma``, or ``front`` and ``selection`` both False.
    """
    if not isinstance(q0, numbers.Real) or isinstance(q0, bool):
        raise TypeError(f"q0 must be a real number in [0, 1], got {type(q0).__name__} {q0!r}")
    if not 0.0 <= q0 <= 1.0:
        raise ValueError(f"q0 must be in [0, 1], got {q0!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not isinstance(kernel_size, numbers.Integral) or isinstance(kernel_size, bool):
        raise TypeError(f"kernel_size must be an odd integer >= 1, got {type(kernel_size).__name__} {kernel_size!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 1 (the neighbourhood is centred), got {kernel_size}")
    if not isinstance(gamma, numbers.Real) or isinstance(gamma, bool):
        raise TypeError(f"gamma must be a real number >= 0, got {type(gamma).__name__} {gamma!r}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    for name, value in (("front", front), ("selection", selection)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool (True/False), got {type(value).__name__} {value!r}")
    if not (front or selection):
        raise ValueError("front and selection cannot both be False: nothing would be attacked "
                         "(use front=False for 'selection only', selection=False for 'erosion only')")


def eroseg(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float = DEFAULT_EPS,
    step_size: float = 2 / 255,
    steps: int = DEFAULT_STEPS,
    norm: str = "linf",
    random_start: bool = True,
    ignore_index: int = IGNORE_INDEX,
    targeted: bool = False,
    best_iterate: bool = False,
    generator: torch.Generator | None = None,
    amp: bool = False,
    callback: Callable[[dict], None] | None = None,
    q0: float = 0.2,
    schedule: str = "linear",
    kernel_size: int = 3,
    gamma: float = 0.0,
    front: bool = True,
    selection: bool = True,
) -> torch.Tensor:
    """EroSeg: sensitive-pixel selection plus erosion front (definition in the module docstring).

    Reference: Song et al. (2026), "Erosion Attack for Adversarial Training to
    Enhance Semantic Segmentation Robustness" (this project's specification).

    Args:
        model: maps images in [0, 1] to logits ``[B, C, H, W]``.
        images: clean images ``[B, 3, H, W]`` in [0, 1].
        labels: ``[B, H, W]`` int64, ``ignore_index`` at void pixels.
        eps, step_size, steps, norm, random_start, ignore_index, targeted,
        best_iterate, generator, amp: see :func:`eroseg.attacks.core.run_attack`.
        callback: as in :func:`~eroseg.attacks.core.run_attack`; ``info`` also
            holds the ``sensitive``, ``front``, ``attacked`` and ``correct``
            masks and the per-image ``threshold`` ``Q_t`` of the step.
        q0: starting quantile level ``q_0`` in [0, 1].
        schedule: rise of ``q_t``: ``linear`` (default), ``cosine`` or ``constant``.
        kernel_size: odd neighbourhood size k of the erosion front.
        gamma: loss weight on already fooled pixels (default 0).
        front: use the erosion front (False: "selection only" ablation).
        selection: use the sensitive-pixel selection (False: "erosion only" ablation).

    Returns:
        Adversarial images, same shape, dtype and device as ``images``.

    Shape:
        images ``[B, 3, H, W]``, labels ``[B, H, W]`` -> ``[B, 3, H, W]``.
    """
    check_eroseg_params(q0=q0, schedule=schedule, kernel_size=kernel_size, gamma=gamma, front=front,
                        selection=selection)

    def weight_fn(t, total, logits, lab, valid):
        q = quantile_schedule(t, total, q0, schedule)
        return eroseg_masks(logits, lab, valid, q=q, kernel_size=kernel_size, gamma=gamma, front=front,
                            selection=selection, targeted=targeted)

    return run_attack(
        model, images, labels, eps=eps, step_size=step_size, steps=steps, norm=norm, random_start=random_start,
        ignore_index=ignore_index, targeted=targeted, best_iterate=best_iterate, generator=generator, amp=amp,
        callback=callback, weight_fn=weight_fn,
    )
