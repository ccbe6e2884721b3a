"""Evaluate a model, clean or under an attack, and keep what tables and figures need.

One call gives the dataset mIoU (from the accumulated confusion matrix), pixel
accuracy, per-class IoU, and per-image counts (true positives, predicted and
labelled pixels per class), from which the worst case over attacks is
recomputed without attacking again. A few examples (image, adversarial image,
label, clean and adversarial prediction) and, for EroSeg, its per-step masks
are returned as arrays so that figures never need to load a model.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eroseg.data.batching import dataset_order, default_num_workers, size_bucketed_batches
from eroseg.io import read_json, write_json
from eroseg.metrics import IGNORE_INDEX, ConfusionMatrix, PerImageStats, per_image_stats

log = logging.getLogger(__name__)

#: Format of the evaluation JSON; bumped when a field changes meaning.
RECORD_VERSION = 2


@dataclasses.dataclass
class EvalRecord:
    """One evaluation: a model (method, seed) on a split, clean or under one attack setting.

    Written by ``eroseg evaluate`` as JSON and read back by the tables and
    figures; this class is the only place that knows the file's fields.

    Attributes:
        method: training method of the model (from its checkpoint).
        seed: training seed of the model.
        setting: label of the attack setting in the config and the tables
            (``"clean"`` without attack, e.g. ``"eroseg_selection_only"``).
        attack: registered attack name (``"none"`` without attack, e.g. ``"eroseg"``).
        attack_params: the attack's parameters as run (numbers resolved).
        split: dataset split evaluated.
        checkpoint: path of the model file.
        classes: class names.
        miou, pixel_acc, per_class_iou: dataset scores as fractions in [0, 1]
            (IoU None for classes absent from both prediction and label); the
            tables and figures show them in percent (``results.csv`` excepted,
            which keeps the fractions).
        per_image: per-image counts (for worst cases over attacks).
        components: per-image counts of each part of a composite result: each
            loss of SEA, each restart of a restarted attack (name -> stats).
        restarts: runs of the attack per image (the per-image worst is kept).
        seconds: wall time of the evaluation.
    """

    method: str | None
    seed: int | None
    setting: str
    attack: str
    attack_params: dict
    split: str
    checkpoint: str
    classes: list | None
    miou: float
    pixel_acc: float
    per_class_iou: list
    per_image: PerImageStats
    components: dict[str, PerImageStats] = dataclasses.field(default_factory=dict)
    restarts: int = 1
    seconds: float = 0.0

    @property
    def num_images(self) -> int:
        return int(self.per_image.tp.shape[0])

    @property
    def eps(self) -> float:
        return float(self.attack_params.get("eps", 0.0))

    @property
    def steps(self) -> int:
        return int(self.attack_params.get("steps", 0)) if self.attack != "none" else 0

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["per_image"] = {**self.per_image.to_dict(), "pixel_acc": [float(v) for v in self.per_image.pixel_acc]}
        out["components"] = {k: v.to_dict() for k, v in self.components.items()}
        out["num_images"] = self.num_images
        out["version"] = RECORD_VERSION
        return out

    def write(self, path: str | Path) -> None:
        """Write atomically as JSON."""
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> EvalRecord:
        """Read an evaluation JSON written by :meth:`write`.

        Raises:
            ValueError: the file lacks a field or has another format version (names the file and the field).
        """
        d = read_json(path)
        if not isinstance(d, dict) or d.get("version") != RECORD_VERSION:
            raise ValueError(f"{path}: not an evaluation record of format {RECORD_VERSION} (found "
                             f"{d.get('version') if isinstance(d, dict) else type(d).__name__}); rerun the evaluation")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in d and n not in ("components", "restarts", "seconds"))
        if missing:
            raise ValueError(f"{path}: evaluation record lacks {missing}")
        kw: dict[str, Any] = {n: d[n] for n in names if n in d}
        kw["per_image"] = PerImageStats.from_dict(d["per_image"])
        kw["components"] = {k: PerImageStats.from_dict(v) for k, v in (d.get("components") or {}).items()}
        return cls(**kw)


def _generator(seed: int, batch_index: int, device: torch.device, restart: int = 0) -> torch.Generator:
    g = torch.Generator(device=device)
    # SeedSequence keeps the streams of (seed, batch, restart) apart; restart 0 is the single-run stream.
    g.manual_seed(int(np.random.SeedSequence([seed, batch_index, restart]).generate_state(1, np.uint64)[0] >> 1))
    return g


def predict(model: torch.nn.Module, images: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """Class map ``[B, H, W]`` of ``images`` (no gradients, eval mode assumed)."""
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and images.is_cuda):
        return model(images).argmax(1)


def _stack_padded(arrays: list, fill) -> np.ndarray:
    """Stack arrays whose last two dims may differ (whole images of mixed sizes), padding bottom-right with ``fill``."""
    h = max(a.shape[-2] for a in arrays)
    w = max(a.shape[-1] for a in arrays)
    out = np.full((len(arrays), *arrays[0].shape[:-2], h, w), fill, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, ..., :a.shape[-2], :a.shape[-1]] = a
    return out


def _reorder(stats: PerImageStats, order: np.ndarray) -> PerImageStats:
    """Rows of ``stats`` (concatenated batch by batch) put back into dataset order."""
    return PerImageStats(stats.tp[order], stats.pred[order], stats.label[order])


class _Components:
    """Per-image counts of each named part of a composite attack result (SEA's losses, restarts)."""

    def __init__(self, model, labels, num_classes: int, ignore_index: int, amp: bool):
        self.model, self.labels, self.c, self.ii, self.amp = model, labels, num_classes, ignore_index, amp
        self.parts: dict[str, PerImageStats] = {}

    def __call__(self, name: str, adv: torch.Tensor) -> PerImageStats:
        st = per_image_stats(predict(self.model, adv, self.amp), self.labels, self.c, self.ii)
        self.parts[name] = st
        return st


def _run_attack(model, images, labels, attack, *, seed, batch_index, restarts, components, callback,
                parts) -> torch.Tensor:
    """One batch under ``attack``; with restarts, per image the run with the lowest pixel accuracy (ties: first)."""
    best = best_acc = None
    for r in range(restarts):
        kwargs: dict[str, Any] = {"generator": _generator(seed, batch_index, images.device, r)}
        if callback is not None and r == 0:
            kwargs["callback"] = callback
        if components:
            kwargs["component_callback"] = parts
        adv = attack(model, images, labels, **kwargs)
        if restarts == 1:
            return adv
        acc = parts(f"restart_{r}", adv).pixel_acc
        acc = torch.as_tensor(np.nan_to_num(acc, nan=np.inf), device=images.device)
        if best is None:
            best, best_acc = adv, acc
        else:
            better = acc < best_acc
            best = torch.where(better.view(-1, 1, 1, 1), adv, best)
            best_acc = torch.where(better, acc, best_acc)
    return best


def _step_recorder(steps: dict[str, list]) -> Callable[[dict], None]:
    """Attack callback that appends the first image's per-step masks to ``steps`` (mask name -> list of ``[H, W]``)."""
    def callback(info: dict) -> None:
        for key in ("attacked", "fooled", "sensitive", "front"):
            if info.get(key) is not None:
                steps.setdefault(key, []).append(info[key][0].detach().cpu().numpy().astype(bool))
    return callback


def _attack_batch(model, images, labels, attack, component_stats: dict[str, list[PerImageStats]], *, num_classes,
                  ignore_index, amp, seed, batch_index, restarts, components, callback) -> torch.Tensor:
    """:func:`_run_attack` on one batch; appends each component's per-image counts to ``component_stats``."""
    parts = _Components(model, labels, num_classes, ignore_index, amp)
    adv = _run_attack(model, images, labels, attack, seed=seed, batch_index=batch_index, restarts=restarts,
                      components=components, callback=callback, parts=parts)
    for name, stats in parts.parts.items():
        component_stats.setdefault(name, []).append(stats)
    return adv


def _add_samples(samples: dict[str, list], indices: list[int], num_samples: int, *, model, images, adv, labels,
                 pred, amp: bool, attacked: bool) -> None:
    """Append the batch's images among the dataset's first ``num_samples`` to ``samples`` (the qualitative figure)."""
    keep = [j for j, i in enumerate(indices) if i < num_samples]  # the first images of the dataset
    if keep:
        clean_pred = predict(model, images[keep], amp) if attacked else pred[keep]
        samples.setdefault("index", []).extend(indices[j] for j in keep)
        samples["image"].extend(images[keep].float().cpu().numpy())
        samples["adv"].extend(adv[keep].float().cpu().numpy())
        samples["label"].extend(labels[keep].cpu().numpy())
        samples["pred_clean"].extend(clean_pred.cpu().numpy())
        samples["pred_adv"].extend(pred[keep].cpu().numpy())


def _results(confusion: ConfusionMatrix, parts: list[PerImageStats], component_stats: dict[str, list[PerImageStats]],
             samples: dict[str, list], steps: dict[str, list], batch_indices: list[list[int]], ignore_index: int,
             seconds: float) -> dict:
    """The dict :func:`evaluate` returns, per-image rows and samples put back into dataset order."""
    order = dataset_order(batch_indices)
    sample_order = np.argsort(samples.pop("index", []), kind="stable")
    return {
        "metrics": confusion.compute(),
        "per_image": _reorder(PerImageStats.concat(parts), order),
        "components": {k: _reorder(PerImageStats.concat(v), order) for k, v in component_stats.items()},
        "samples": {k: _stack_padded([v[j] for j in sample_order], 0.0 if k in ("image", "adv") else ignore_index)
                    for k, v in samples.items() if v},
        "steps": {k: np.stack(v) for k, v in steps.items()},
        "seconds": seconds,
    }


def evaluate(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    num_classes: int,
    *,
    attack: Callable | None = None,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    seed: int = 0,
    amp: bool = False,
    num_samples: int = 0,
    record_steps: bool = False,
    ignore_index: int = IGNORE_INDEX,
    max_images: int | None = None,
    restarts: int = 1,
    components: bool = False,
    num_workers: int | None = None,
) -> dict:
    """Evaluate ``model`` on ``dataset``, clean (``attack=None``) or under ``attack``.

    Args:
        model: model taking images in [0, 1].
        dataset: returns ``(image [3,H,W], label [H,W])``; images may differ in size (a batch
            holds images of one size, gathered across the dataset; results come back in dataset order).
        num_classes: number of classes.
        attack: ``callable(model, images, labels, generator=..., callback=...) -> adv``.
        batch_size: images per batch.
        device: torch device.
        seed: seeds each batch's attack generator, so results are reproducible.
        amp: bf16 autocast for predictions on CUDA.
        num_samples: keep this many examples (first images) for the qualitative figure.
        record_steps: record the attack's per-step masks for the first batch's first
            image (EroSeg's ``attacked``/``fooled`` masks, else the fooled region only).
        ignore_index: void label.
        max_images: evaluate only the first ``max_images`` images.
        restarts: run the attack this many times per batch (independent random
            starts) and keep, per image, the run with the lowest pixel accuracy;
            each run's counts are kept as component ``restart_<r>``.
        components: pass ``component_callback(name, adv)`` to the attack (SEA
            calls it once per loss) and keep each component's per-image counts.
        num_workers: DataLoader workers decoding images (default: 0 on CPU, a few beside a GPU).

    Returns:
        dict with ``metrics`` (miou, pixel_acc, per_class_iou), ``per_image``
        (:class:`PerImageStats`), ``components`` (name -> :class:`PerImageStats`,
        possibly empty), ``samples`` (dict of arrays, possibly empty), ``steps``
        (dict of arrays, possibly empty) and ``seconds``.
    """
    if not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    device = torch.device(device)
    model = model.to(device).eval()
    if max_images is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(max_images, len(dataset))))
    confusion = ConfusionMatrix(num_classes, ignore_index)
    parts: list[PerImageStats] = []
    samples: dict[str, list] = {k: [] for k in ("image", "adv", "label", "pred_clean", "pred_adv")}
    steps: dict[str, list] = {}
    component_stats: dict[str, list[PerImageStats]] = {}
    batch_indices: list[list[int]] = []
    start = time.perf_counter()
    workers = default_num_workers(device) if num_workers is None else num_workers
    batches = size_bucketed_batches(dataset, batch_size, num_workers=workers)
    for batch_index, (indices, images, labels) in enumerate(batches):
        batch_indices.append(indices)
        images, labels = images.to(device), labels.to(device)
        adv = images if attack is None else _attack_batch(
            model, images, labels, attack, component_stats, num_classes=num_classes, ignore_index=ignore_index,
            amp=amp, seed=seed, batch_index=batch_index, restarts=restarts, components=components,
            callback=_step_recorder(steps) if record_steps and batch_index == 0 else None)
        pred = predict(model, adv, amp)
        confusion.update(pred, labels)
        parts.append(per_image_stats(pred, labels, num_classes, ignore_index))
        _add_samples(samples, indices, num_samples, model=model, images=images, adv=adv, labels=labels, pred=pred,
                     amp=amp, attacked=attack is not None)
    seconds = time.perf_counter() - start
    return _results(confusion, parts, component_stats, samples, steps, batch_indices, ignore_index, seconds)
