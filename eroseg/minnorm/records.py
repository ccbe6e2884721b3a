"""Evaluation records of minimal-norm runs: per image the norm found, per eps of a grid the per-image counts.

:func:`evaluate_min_norm` attacks every image of a dataset once and keeps, for
each eps of ``eps_grid``, the per-image counts (true positives, predicted and
labelled pixels per class, the format of :class:`eroseg.metrics.PerImageStats`
and of ``EvalRecord.per_image``) of the perturbation scaled down to that eps.
So the dataset mIoU at every eps follows from the stored counts, and the
aggregator can put the scaled minimal-norm perturbation into the worst case at
each eps (:func:`stats_at_eps`) like any other attack.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from eroseg.data.batching import dataset_order, default_num_workers, size_bucketed_batches
from eroseg.evaluate import prepare_run
from eroseg.metrics import IGNORE_INDEX, PerImageStats, per_image_stats
from eroseg.minnorm.attacks import (
    MinNormResult,
    adv_lib_segmentation,
    attack_arguments,
    perturbation_norms,
    run_min_norm,
)

if TYPE_CHECKING:  # eroseg.objects imports pandas: loaded only when summaries are asked for
    from eroseg.objects import ObjectSummaries

#: ``kind`` field of a minimal-norm record (evaluation records of fixed-budget attacks have none).
RECORD_KIND = "min_norm"
#: Format of the record; bumped when a field changes meaning.
RECORD_VERSION = 1


def scale_to_eps(images: torch.Tensor, adv: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """``images + delta * min(1, eps / ||delta||)`` per image, in [0, 1], with ``delta = adv - images``.

    In Linf the scaled perturbation is also clamped to ``[-eps, eps]``, so that
    rounding cannot take it past eps; clamping ``images + delta`` to [0, 1]
    moves each pixel towards its clean value and only shortens the
    perturbation (in both norms). ``||result - images|| <= eps`` holds up to the
    float rounding of one addition (6e-8 in float32).

    Shape:
        images, adv: ``[B, C, H, W]``; returns the same shape.
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    delta = adv - images
    size = perturbation_norms(delta, norm)
    factor = torch.where(size > eps, eps / size.clamp_min(torch.finfo(size.dtype).tiny), torch.ones_like(size))
    delta = delta * factor.view(-1, *[1] * (delta.dim() - 1))
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    return (images + delta).clamp(0, 1)


def _json_number(value: float) -> float | None:
    """A float for JSON: None for inf and NaN (JSON has neither)."""
    return float(value) if np.isfinite(value) else None


def _per_image_fields(result: MinNormResult, seconds_each: float) -> dict[str, list]:
    return {
        "norm": [float(v) for v in result.norm.cpu()],
        "perturbation_norm": [float(v) for v in result.perturbation_norm.cpu()],
        "fooled_share": [float(v) for v in result.fooled_share.cpu()],
        "success": [bool(v) for v in result.success.cpu()],
        "seconds": [seconds_each] * len(result.norm),
    }


def _attack_batch(model, images, labels, attack: str, settings: dict, eps_grid: list[float], num_classes: int,
                  ignore_index: int, objects: tuple[float, ObjectSummaries] | None = None
                  ) -> tuple[dict[str, list], PerImageStats, list[PerImageStats]]:
    """One batch: the attack, its per-image fields, clean counts and counts at each eps (and, with ``objects``,
    the object summaries at its eps)."""
    start = time.perf_counter()
    result = run_min_norm(attack, model, images, labels, ignore_index=ignore_index, **settings)
    seconds_each = (time.perf_counter() - start) / len(images)
    norm = settings.get("norm", "linf")
    with torch.no_grad():
        pred_clean = model(images).argmax(1)
        clean = per_image_stats(pred_clean, labels, num_classes, ignore_index)
        at_eps = []
        for eps in eps_grid:
            pred = model(scale_to_eps(images, result.adv, eps, norm)).argmax(1)
            at_eps.append(per_image_stats(pred, labels, num_classes, ignore_index))
            if objects is not None and eps == objects[0]:
                objects[1].add(labels, pred_clean, pred)
    return _per_image_fields(result, seconds_each), clean, at_eps


def _ordered(rows: list[dict[str, list]], order: np.ndarray) -> dict[str, list]:
    """Per-image lists concatenated batch by batch, put back into dataset order, inf and NaN as None."""
    out = {}
    for key in rows[0]:
        values = [v for row in rows for v in row[key]]
        values = [values[i] for i in order]
        out[key] = [_json_number(v) if isinstance(v, float) else v for v in values]
    return out


def _scores(stats: PerImageStats) -> dict[str, Any]:
    scores = stats.scores()
    return {"miou": scores["miou"], "pixel_acc": scores["pixel_acc"], "per_image": stats.to_dict()}


def evaluate_min_norm(model: torch.nn.Module, dataset, num_classes: int, *, attack: str, eps_grid: list[float],
                      params: dict | None = None, norm: str = "linf", adv_threshold: float = 0.99,
                      steps: int | None = None, batch_size: int = 16, device: torch.device | str = "cpu",
                      seed: int = 0, ignore_index: int = IGNORE_INDEX, max_images: int | None = None,
                      num_workers: int | None = None, objects_eps: float | None = None,
                      connectivity: int = 4) -> dict[str, Any]:
    """Attack every image once with a minimal-norm attack; keep norms and the counts at each eps of ``eps_grid``.

    Args:
        model: model taking images in [0, 1].
        dataset: returns ``(image [3, H, W], label [H, W])``; images of one size are batched together.
        num_classes: number of classes.
        attack: a name of :data:`eroseg.minnorm.MIN_NORM_ATTACKS`.
        eps_grid: budgets (in ``norm``) at which the scaled perturbation is evaluated.
        params: the attack's own parameters (ASCII names).
        norm, adv_threshold, steps: as in :func:`eroseg.minnorm.run_min_norm`.
        batch_size: images per batch.
        device: torch device.
        seed: seeds each batch's random start (``seed + batch index``).
        ignore_index: void label.
        max_images: only the first ``max_images`` images.
        num_workers: DataLoader workers (default: 0 on CPU).
        objects_eps: an eps of ``eps_grid`` at which each image's ground-truth connected components are
            summarised (:class:`eroseg.objects.LabelObjects`; the ``size`` table's worst case); None: none.
        connectivity: of those components, 4 or 8.

    Returns:
        A JSON-able dict: ``kind`` (``"min_norm"``), ``version``, ``attack``, ``attack_params`` (norm,
        adv_threshold, steps and the attack's parameters as run), ``eps_grid``, ``num_images``, ``seconds``;
        ``per_image`` with lists in dataset order: ``norm`` (None where the attack failed, i.e. infinite,
        or the image has no valid pixels), ``perturbation_norm`` (of the best try, also on failure),
        ``fooled_share`` (None: no valid pixels), ``success``, ``seconds`` (the batch's time shared
        equally); ``clean`` and ``at_eps`` (one entry per eps: ``eps``, ``miou``, ``pixel_acc`` and
        ``per_image`` counts ``{"tp", "pred", "label"}``). Each eps scales the attack's best try,
        successful or not, by ``min(1, eps / perturbation_norm)`` (:func:`scale_to_eps`). With
        ``objects_eps``, ``objects``: ``eps``, ``connectivity`` and per image (dataset order) the ``clean`` and
        ``adv`` summaries (the format of ``EvalRecord.objects``).

    Raises:
        ValueError: bad attack arguments, an empty ``eps_grid`` or ``objects_eps`` off the grid.
    """
    params = dict(params or {})
    attack_arguments(attack, norm, adv_threshold, steps, params)  # refuse bad settings before any work
    grid = [float(e) for e in eps_grid]
    if not grid or any(not e > 0 for e in grid):
        raise ValueError(f"eps_grid must be a non-empty list of budgets > 0, got {eps_grid!r}")
    objects = _objects_at(objects_eps, grid, connectivity, ignore_index)
    model, dataset, device = prepare_run(model, dataset, device, max_images)
    settings = {"norm": norm, "adv_threshold": adv_threshold, "steps": steps, **params}
    adv_lib_segmentation()  # imported before the clock starts: seconds per image are the attack's own
    rows, clean, at_eps, batch_indices = [], [], [[] for _ in grid], []
    start = time.perf_counter()
    workers = default_num_workers(device) if num_workers is None else num_workers
    for batch_index, (indices, images, labels) in enumerate(size_bucketed_batches(dataset, batch_size,
                                                                                  num_workers=workers)):
        batch_indices.append(indices)
        fields, clean_stats, eps_stats = _attack_batch(
            model, images.to(device), labels.to(device), attack, {**settings, "seed": seed + batch_index}, grid,
            num_classes, ignore_index, objects)
        rows.append(fields)
        clean.append(clean_stats)
        for column, stats in zip(at_eps, eps_stats):
            column.append(stats)
    order = dataset_order(batch_indices)
    extra = {} if objects is None else {"objects": {"eps": objects[0], **objects[1].in_order(order)}}
    return {
        "kind": RECORD_KIND, "version": RECORD_VERSION, "attack": attack, "attack_params": settings,
        "eps_grid": grid, "num_images": int(len(order)), "seconds": time.perf_counter() - start,
        "per_image": _ordered(rows, order), "clean": _scores(_in_order(clean, order)),
        "at_eps": [{"eps": eps, **_scores(_in_order(column, order))} for eps, column in zip(grid, at_eps)],
        **extra,
    }


def _objects_at(eps: float | None, grid: list[float], connectivity: int, ignore_index: int
                ) -> tuple[float, ObjectSummaries] | None:
    """The object summaries to collect at ``eps`` (None: none); ``eps`` must be on ``grid``, within 1e-9."""
    if eps is None:
        return None
    from eroseg.objects import ObjectSummaries

    on_grid = [e for e in grid if abs(e - float(eps)) <= 1e-9]
    if not on_grid:
        raise ValueError(f"objects_eps {eps!r} is not on the eps grid {grid}")
    return on_grid[0], ObjectSummaries(connectivity, ignore_index)  # refuses a connectivity other than 4 or 8


def _in_order(parts: list[PerImageStats], order: np.ndarray) -> PerImageStats:
    """Per-image counts concatenated batch by batch, put back into dataset order."""
    stats = PerImageStats.concat(parts)
    return PerImageStats(stats.tp[order], stats.pred[order], stats.label[order])


def norms_of(record: dict) -> np.ndarray:
    """Per-image minimal norms of a record as floats: ``inf`` where the attack failed, NaN without valid pixels."""
    per_image = record["per_image"]
    shares = per_image["fooled_share"]
    return np.array([np.nan if share is None else (np.inf if norm is None else norm)
                     for norm, share in zip(per_image["norm"], shares)], dtype=np.float64)


def stats_at_eps(record: dict, eps: float, *, tolerance: float = 1e-9) -> PerImageStats:
    """Per-image counts of a record's perturbation scaled to ``eps`` (a worst-case candidate at ``eps``).

    Raises:
        ValueError: ``eps`` is not on the record's grid (the message lists the grid).
    """
    for entry in record["at_eps"]:
        if abs(entry["eps"] - float(eps)) <= tolerance:
            return PerImageStats.from_dict(entry["per_image"])
    raise ValueError(f"eps {eps!r} is not on the minimal-norm record's grid {record['eps_grid']}")


def write_min_norm_record(model: torch.nn.Module, meta: dict, dataset, out: str, *, attack: str,
                          eps_grid: list[float], setting: str | None = None, source: str | None = None,
                          split: str | None = None, **options) -> dict:
    """:func:`evaluate_min_norm` on one model, written atomically to ``out`` with the model named.

    Args:
        model, meta: the model and its checkpoint metadata (``num_classes``, ``method``, ``seed``).
        dataset: as in :func:`evaluate_min_norm`.
        out: the JSON file (its folder is created).
        attack, eps_grid: as in :func:`evaluate_min_norm`.
        setting: the config's name of this attack setting (default: the attack's name).
        source, split: the checkpoint (or factory) and the split, kept in the record.
        options: the other keyword arguments of :func:`evaluate_min_norm` (params, norm, adv_threshold,
            steps, batch_size, device, seed, max_images).

    Returns:
        The record as written: :func:`evaluate_min_norm`'s fields plus ``method``, ``seed`` (the model's
        training seed, else the attack's seed), ``setting``, ``checkpoint`` and ``split``.
    """
    from eroseg.io import check_writable_dir, write_json

    check_writable_dir(out, f"minimal-norm record of {setting or attack}")
    record = evaluate_min_norm(model, dataset, int(meta["num_classes"]), attack=attack, eps_grid=eps_grid, **options)
    seed = meta.get("seed")
    record.update(method=meta.get("method"), seed=int(options.get("seed", 0) if seed is None else seed),
                  setting=setting or attack, checkpoint=source, split=split)
    write_json(out, record)
    return record
