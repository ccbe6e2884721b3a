"""Evaluate a model, clean or under an attack, and keep what tables and figures need.

One call gives the dataset mIoU (from the accumulated confusion matrix), pixel
accuracy, per-class IoU, and per-image counts (true positives, predicted and
labelled pixels per class), from which the worst case over attacks is
recomputed without attacking again. A few examples (image, adversarial image,
label, clean and adversarial prediction) and, for EroSeg, its per-step masks
are returned as arrays so that figures never need to load a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from eroseg.attacks import attack_has_components
from eroseg.conventions import autocast
from eroseg.data.batching import dataset_order, default_num_workers, size_bucketed_batches
from eroseg.io import (
    atomic_path,
    exclusive_lock,
    read_json,
    remove_stale_temps,
    write_eval_manifest,
    write_json,
)
from eroseg.metrics import IGNORE_INDEX, ConfusionMatrix, PerImageStats, per_image_stats
from eroseg.numbers import resolve_attack_params
from eroseg.seeds import evaluation_generator

if TYPE_CHECKING:  # eroseg.objects imports pandas: loaded only when summaries are asked for
    from eroseg.objects import ObjectSummaries

log = logging.getLogger(__name__)

#: Format of the evaluation JSON; bumped when a field changes meaning.
RECORD_VERSION = 2
#: Fields an evaluation JSON may leave out (their defaults are kept).
OPTIONAL_FIELDS = ("components", "restarts", "seconds", "objects")


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
        objects: per-image summaries of the ground-truth connected components (the ``size`` table), or None:
            ``connectivity``; ``clean``, one :meth:`eroseg.objects.LabelObjects.clean_summary` per image;
            ``adv``, one :meth:`~eroseg.objects.LabelObjects.attacked_summary` per image (equal to the clean
            scores with nothing flipped in a clean evaluation); ``components``, the same per component name.
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
    objects: dict | None = None

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
        if self.objects is None:
            del out["objects"]
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
        stored = read_json(path)
        if not isinstance(stored, dict) or stored.get("version") != RECORD_VERSION:
            found = stored.get("version") if isinstance(stored, dict) else type(stored).__name__
            raise ValueError(f"{path}: not an evaluation record of format {RECORD_VERSION} (found {found}); rerun "
                             "the evaluation")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in stored and n not in OPTIONAL_FIELDS)
        if missing:
            raise ValueError(f"{path}: evaluation record lacks {missing}")
        fields: dict[str, Any] = {n: stored[n] for n in names if n in stored}
        fields["per_image"] = PerImageStats.from_dict(stored["per_image"])
        fields["components"] = {k: PerImageStats.from_dict(v) for k, v in (stored.get("components") or {}).items()}
        return cls(**fields)


def prepare_run(model: torch.nn.Module, dataset, device, max_images: int | None):
    """The model on ``device`` in eval mode and the dataset cut to its first ``max_images`` images (all when
    None): what every evaluation of a split starts from. Returns ``(model, dataset, torch.device)``."""
    device = torch.device(device)
    if max_images is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(max_images, len(dataset))))
    return model.to(device).eval(), dataset, device


def predict(model: torch.nn.Module, images: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """Class map ``[B, H, W]`` of ``images`` (no gradients, eval mode assumed)."""
    with torch.no_grad(), autocast(images.device, amp):
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


class _ComponentStats:
    """Per-image counts of each named part of a composite attack result (SEA's losses, restarts) on one batch.

    Called as the attack's ``component_callback(name, adv)``; ``parts`` maps each name to its counts.
    """

    def __init__(self, model, labels, num_classes: int, ignore_index: int, amp: bool, keep_predictions: bool = False):
        self.model, self.labels, self.amp = model, labels, amp
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.parts: dict[str, PerImageStats] = {}
        self.keep_predictions = keep_predictions
        self.predictions: dict[str, torch.Tensor] = {}  # name -> [B, H, W] on the CPU (for the object summaries)

    def __call__(self, name: str, adv: torch.Tensor) -> PerImageStats:
        pred = predict(self.model, adv, self.amp)
        stats = per_image_stats(pred, self.labels, self.num_classes, self.ignore_index)
        self.parts[name] = stats
        if self.keep_predictions:  # on the host, 2 bytes a pixel: SEA keeps four maps of each batch
            self.predictions[name] = pred.to(device="cpu", dtype=torch.int16)
        return stats


def _run_attack(model, images, labels, attack, *, seed, batch_index, restarts, components, callback,
                parts) -> torch.Tensor:
    """One batch under ``attack``; with restarts, per image the run with the lowest pixel accuracy (ties: first)."""
    best = best_acc = None
    for restart in range(restarts):
        kwargs: dict[str, Any] = {"generator": evaluation_generator(seed, batch_index, restart, images.device)}
        if callback is not None and restart == 0:
            kwargs["callback"] = callback
        if components:
            kwargs["component_callback"] = parts
        adv = attack(model, images, labels, **kwargs)
        if restarts == 1:
            return adv
        acc = parts(f"restart_{restart}", adv).pixel_acc
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
                  ignore_index, amp, seed, batch_index, restarts, components, callback, keep_predictions=False
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`_run_attack` on one batch; appends each component's per-image counts to ``component_stats``.

    Returns:
        The adversarial images and, with ``keep_predictions``, each component's predictions (else empty).
    """
    parts = _ComponentStats(model, labels, num_classes, ignore_index, amp, keep_predictions)
    adv = _run_attack(model, images, labels, attack, seed=seed, batch_index=batch_index, restarts=restarts,
                      components=components, callback=callback, parts=parts)
    for name, stats in parts.parts.items():
        component_stats.setdefault(name, []).append(stats)
    return adv, parts.predictions


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
             seconds: float, objects: ObjectSummaries | None) -> dict:
    """The dict :func:`evaluate` returns, per-image rows and samples put back into dataset order."""
    order = dataset_order(batch_indices)
    sample_order = np.argsort(samples.pop("index", []), kind="stable")
    return {
        "objects": None if objects is None else objects.in_order(order),
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
    batch_offset: int = 0,
    objects: int | None = None,
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
        batch_offset: number of this evaluation's first batch in the random-start streams: a shard of a
            larger evaluation passes the index its first batch has there (:func:`eroseg.shards.shard_subset`),
            so its attacks draw the one-job evaluation's random starts.
        objects: summarise each image's ground-truth connected components of this connectivity (4 or 8) under
            the clean prediction, the result and each component (the ``size`` table); None: not.

    Returns:
        dict with ``metrics`` (miou, pixel_acc, per_class_iou), ``per_image``
        (:class:`PerImageStats`), ``components`` (name -> :class:`PerImageStats`,
        possibly empty), ``samples`` (dict of arrays, possibly empty), ``steps``
        (dict of arrays, possibly empty), ``seconds`` and ``objects`` (the record's ``objects`` field, or None).
    """
    if not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    model, dataset, device = prepare_run(model, dataset, device, max_images)
    confusion = ConfusionMatrix(num_classes, ignore_index)
    parts: list[PerImageStats] = []
    samples: dict[str, list] = {k: [] for k in ("image", "adv", "label", "pred_clean", "pred_adv")}
    steps: dict[str, list] = {}
    component_stats: dict[str, list[PerImageStats]] = {}
    batch_indices: list[list[int]] = []
    if objects is not None:
        from eroseg.objects import ObjectSummaries
    summaries = None if objects is None else ObjectSummaries(objects, ignore_index)
    start = time.perf_counter()
    workers = default_num_workers(device) if num_workers is None else num_workers
    batches = size_bucketed_batches(dataset, batch_size, num_workers=workers)
    for batch_index, (indices, images, labels) in enumerate(batches):
        batch_indices.append(indices)
        images, labels = images.to(device), labels.to(device)
        adv, component_predictions = (images, {}) if attack is None else _attack_batch(
            model, images, labels, attack, component_stats, num_classes=num_classes, ignore_index=ignore_index,
            amp=amp, seed=seed, batch_index=batch_offset + batch_index, restarts=restarts, components=components,
            callback=_step_recorder(steps) if record_steps and batch_index == 0 else None,
            keep_predictions=summaries is not None)
        pred = predict(model, adv, amp)
        confusion.update(pred, labels)
        parts.append(per_image_stats(pred, labels, num_classes, ignore_index))
        if summaries is not None:
            summaries.add(labels, pred if attack is None else predict(model, images, amp), pred,
                          component_predictions)
        _add_samples(samples, indices, num_samples, model=model, images=images, adv=adv, labels=labels, pred=pred,
                     amp=amp, attacked=attack is not None)
    seconds = time.perf_counter() - start
    return _results(confusion, parts, component_stats, samples, steps, batch_indices, ignore_index, seconds,
                    summaries)


# ------------------------------------------------------------- evaluation jobs
#: Keys of one entry of ``eroseg evaluate --settings``.
SETTING_KEYS = ("setting", "attack", "params", "params_file", "restarts", "objects", "out")


@dataclasses.dataclass(frozen=True)
class EvalSetting:
    """One attack setting of an evaluation job: what to run and where its record goes.

    Attributes:
        setting: label in the tables (``"clean"`` without attack).
        attack: registered attack name, or ``"none"``.
        params: the attack's parameters (a tuning file's choice laid over them).
        restarts: runs of the attack per image (the per-image worst is kept).
        out: path of the evaluation JSON.
        objects: connectivity (4 or 8) of the ground-truth components summarised per image (the record's
            ``objects``, read by the ``size`` table); None: none. In JSON ``{"connectivity": 4}``.
    """

    setting: str
    attack: str
    params: dict
    restarts: int
    out: str
    objects: int | None = None

    @classmethod
    def from_dict(cls, item: Mapping, where: str) -> EvalSetting:
        """Check one entry (keys :data:`SETTING_KEYS`, ``out`` required) and read its ``params_file``.

        Raises:
            ValueError: not an object, no ``out``, an unknown key, ``params`` not an object, ``restarts``
                not an integer >= 1, ``objects`` not ``{"connectivity": 4 or 8}``, or a bad tuning file (each
                names ``where`` and the key).
        """
        from eroseg.tune import tuned_params

        if not isinstance(item, Mapping) or not item.get("out"):
            raise ValueError(f"{where}: expected an object with at least 'out', got {item!r}")
        unknown = sorted(set(item) - set(SETTING_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid: {', '.join(SETTING_KEYS)}")
        attack = item.get("attack") or "none"
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError(f"{where}.params must be a JSON object, got {params!r}")
        restarts = item.get("restarts", 1)
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ValueError(f"{where}.restarts must be an integer >= 1, got {restarts!r}")
        return cls(setting=item.get("setting") or ("clean" if attack == "none" else attack), attack=attack,
                   params=tuned_params(params, item.get("params_file")), restarts=restarts, out=item["out"],
                   objects=_connectivity(item.get("objects"), f"{where}.objects"))


def _connectivity(objects, where: str) -> int | None:
    """The connectivity of a setting's ``objects`` entry (None: no object summaries)."""
    if objects is None:
        return None
    connectivity = objects.get("connectivity", 4) if isinstance(objects, Mapping) else None
    if not isinstance(objects, Mapping) or set(objects) - {"connectivity"} or connectivity not in (4, 8) \
            or isinstance(connectivity, bool):
        raise ValueError(f"{where} must be null or {{\"connectivity\": 4 or 8}}, got {objects!r}")
    return int(connectivity)


def parse_settings(settings_json: str | None, single: Mapping, *, samples: bool = False) -> list[EvalSetting]:
    """The settings of one ``eroseg evaluate`` call: the ``--settings`` JSON list, or the single setting's flags.

    Args:
        settings_json: ``--settings`` (a JSON list of objects with keys :data:`SETTING_KEYS`), or None.
        single: the single setting's ``setting``, ``attack``, ``params``, ``restarts``, ``out`` (the flags).
        samples: ``--samples`` was given (it needs a single setting).

    Raises:
        ValueError: both forms or neither, invalid JSON, or a bad entry (names the flag and the key).
    """
    if settings_json:
        if single.get("out") or single.get("attack") or samples:
            raise ValueError("--settings replaces --out/--attack/--attack-params/--setting; --samples needs a "
                             "single setting")
        try:
            items = json.loads(settings_json)
        except json.JSONDecodeError as err:
            raise ValueError(f"--settings is not valid JSON: {err}") from None
        if not isinstance(items, list) or not items:
            raise ValueError("--settings must be a non-empty JSON list of {setting, attack, params, restarts, out}")
        return [EvalSetting.from_dict(item, f"--settings[{k}]") for k, item in enumerate(items)]
    if not single.get("out"):
        raise ValueError("give --out (one setting) or --settings (several)")
    return [EvalSetting.from_dict(single, "the single setting (--attack/--attack-params/--out)")]


def write_evaluations(model: torch.nn.Module, meta: Mapping, dataset, settings: Sequence[EvalSetting],
                      attacks: Sequence[Callable | None], *, split: str, source: str, manifest: str | None = None,
                      samples: str | None = None, samples_n: int = 4, record_steps: bool = False,
                      **evaluate_options) -> None:
    """Evaluate ``model`` under each setting and write its :class:`EvalRecord`; the manifest last.

    Each output is locked for the whole job (a second writer fails at once)
    and temporary files a killed writer left are removed first.

    Args:
        model, meta: the model and its metadata (``num_classes``, ``method``, ``seed``, ``classes``).
        dataset: the split evaluated.
        settings: what to run; ``attacks`` holds the bound attack of each (None: clean).
        split: split name recorded.
        source: the model's checkpoint path (or ``factory:<spec>``), recorded.
        manifest: written last, listing every output (:func:`eroseg.io.write_eval_manifest`).
        samples: ``.npz`` of qualitative examples (single setting), ``samples_n`` images.
        record_steps: record the attack's per-step masks into ``samples``.
        **evaluate_options: ``batch_size``, ``device``, ``seed``, ``amp``, ``max_images``, ``batch_offset`` of
            :func:`evaluate`.
    """
    with contextlib.ExitStack() as locks:
        for item in settings:
            locks.enter_context(exclusive_lock(item.out))
            remove_stale_temps(item.out)  # left by a killed writer; the lock says none is alive
        for extra in (manifest, samples):
            if extra:
                remove_stale_temps(extra)
        log.info("evaluating %d settings: %s", len(settings), ", ".join(s.setting for s in settings))
        for k, (item, attack) in enumerate(zip(settings, attacks), 1):
            result = evaluate(model, dataset, int(meta["num_classes"]), attack=attack,
                              num_samples=samples_n if samples else 0, record_steps=record_steps,
                              restarts=item.restarts, objects=item.objects,
                              components=attack is not None and attack_has_components(item.attack),
                              **evaluate_options)
            record = _record(item, attack is not None, result, meta, split, source)
            if samples:
                _write_samples(samples, result)
            record.write(item.out)
            # "setting k/N": the unit `eroseg status` counts for its progress and ETA
            log.info("setting %d/%d %s: mIoU %.4f pixel acc %.4f (%d images, %.1f s)", k, len(settings),
                     record.setting, record.miou, record.pixel_acc, record.num_images, record.seconds)
        if manifest:  # last: a folder with a manifest holds a finished job's results
            write_eval_manifest(manifest, [item.out for item in settings])


def _record(item: EvalSetting, attacked: bool, result: dict, meta: Mapping, split: str, source: str) -> EvalRecord:
    """The :class:`EvalRecord` of one setting's :func:`evaluate` result."""
    return EvalRecord(
        method=meta.get("method"), seed=meta.get("seed"), setting=item.setting, attack=item.attack,
        attack_params=resolve_attack_params(item.params) if attacked else {}, split=split, checkpoint=source,
        classes=meta.get("classes"), per_image=result["per_image"], components=result["components"],
        restarts=item.restarts, seconds=result["seconds"], objects=result["objects"], **result["metrics"])


def _write_samples(path: str, result: dict) -> None:
    """The qualitative examples and per-step masks of :func:`evaluate` as one ``.npz`` (atomically)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **result["samples"], **{f"step_{k}": v for k, v in result["steps"].items()})
