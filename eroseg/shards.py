"""One model's evaluation split into shards over image ranges, and the shards' records merged back.

A shard is a contiguous range of the split in dataset order; the ranges of the
shards of one evaluation are disjoint and cover the split. Each shard's job
writes an ordinary :class:`eroseg.evaluate.EvalRecord` over its images;
:func:`merge_records` concatenates the per-image counts in shard order and
recomputes every metric from them, which gives exactly the record one job
would have written (the dataset mIoU, pixel accuracy and per-class IoU are
functions of the summed integer counts, so no rounding enters).

Random starts: :func:`eroseg.evaluate.evaluate` seeds each batch's attack
generator with ``(seed, batch index, restart)``. A shard reproduces the one
job's streams when its batches are the one job's batches and it numbers them
as the one job does: its range starts and ends on a batch boundary
(:func:`shard_range` with ``batch_size``) and it passes the index of its first
batch (:func:`shard_batch_offset`) as the offset of its batch numbers. That
holds where the one job's batches are consecutive images, i.e. on a split whose
images share one size (Cityscapes, the synthetic set) or at batch size 1; on a
split of mixed sizes the one job gathers equal sizes across the whole split,
so a shard's batches differ from the one job's and its random starts (and
batched numerics) differ too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from eroseg.evaluate import EvalRecord
from eroseg.metrics import PerImageStats

#: Fields every shard record of one evaluation must agree on.
SHARED_FIELDS = ("method", "seed", "setting", "attack", "attack_params", "split", "checkpoint", "classes", "restarts")


def _check_shards(num_images: int, shards: int, index: int, batch_size: int) -> None:
    for name, value, low in (("num_images", num_images, 0), ("shards", shards, 1), ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < shards:
        raise ValueError(f"shard index must be an integer in [0, {shards}), got {index!r}")


def _batch_bounds(num_images: int, shards: int, index: int, batch_size: int) -> tuple[int, int]:
    """First and one-past-last batch of shard ``index``: the batches split as evenly as whole batches allow."""
    num_batches = -(-num_images // batch_size)
    return index * num_batches // shards, (index + 1) * num_batches // shards


def shard_range(num_images: int, shards: int, index: int, batch_size: int = 1) -> range:
    """Dataset indices of shard ``index`` of ``shards`` over a split of ``num_images`` images.

    The split's ``ceil(num_images / batch_size)`` batches of consecutive images
    are divided as evenly as possible (shard sizes differ by at most one batch),
    so every range starts on a batch boundary; the ranges are disjoint, in
    dataset order, and cover ``range(num_images)``. A shard may be empty when
    there are more shards than batches.

    Args:
        num_images: images in the split.
        shards: number of shards (>= 1).
        index: this shard, ``0 <= index < shards``.
        batch_size: the evaluation's batch size; 1 splits by single images.

    Raises:
        ValueError: a count below its minimum or an index outside ``[0, shards)`` (named, with the value).
    """
    _check_shards(num_images, shards, index, batch_size)
    first, last = _batch_bounds(num_images, shards, index, batch_size)
    return range(min(first * batch_size, num_images), min(last * batch_size, num_images))


def shard_batch_offset(num_images: int, shards: int, index: int, batch_size: int) -> int:
    """Index, in the one-job evaluation, of shard ``index``'s first batch (its random-start stream offset)."""
    _check_shards(num_images, shards, index, batch_size)
    return _batch_bounds(num_images, shards, index, batch_size)[0]


def _differing_field(records: Sequence[EvalRecord]) -> str | None:
    """The first of :data:`SHARED_FIELDS` (or the component names) on which the records disagree, else None."""
    for name in SHARED_FIELDS:
        if any(getattr(r, name) != getattr(records[0], name) for r in records[1:]):
            return name
    if any(set(r.components) != set(records[0].components) for r in records[1:]):
        return "components"
    if any(_object_layout(r) != _object_layout(records[0]) for r in records[1:]):
        return "objects"
    return None


def _object_layout(record: EvalRecord) -> tuple | None:
    """What must agree between shards for their object summaries to merge: connectivity and component names."""
    objects = record.objects
    return None if objects is None else (objects["connectivity"], sorted(objects["components"]))


def _merged_objects(records: Sequence[EvalRecord]) -> dict | None:
    """The shards' per-image object summaries concatenated in shard order (None: the records have none)."""
    first = records[0].objects
    if first is None:
        return None
    return {"connectivity": first["connectivity"],
            "clean": [row for r in records for row in r.objects["clean"]],
            "adv": [row for r in records for row in r.objects["adv"]],
            "components": {name: [row for r in records for row in r.objects["components"][name]]
                           for name in first["components"]}}


def merge_records(records: Sequence[EvalRecord]) -> EvalRecord:
    """Merge the records of an evaluation's shards, given in shard order, into the one-job record.

    Per-image counts (and those of every component: SEA's losses, restarts), and
    the per-image object summaries where the records have them, are
    concatenated in the given order, which is dataset order when the records
    are those of shards 0, 1, ... of :func:`shard_range`; ``miou``,
    ``pixel_acc`` and ``per_class_iou`` are recomputed from the merged counts.
    ``seconds`` is the sum over the shards: the compute time of the
    evaluation, comparable to one job's time (the wall time of shards run in
    parallel is shorter).

    Raises:
        ValueError: no records, or records of different evaluations (names the field that differs).
    """
    if not records:
        raise ValueError("merge_records: no shard records given; expected one per shard")
    differing = _differing_field(records)
    if differing is not None:
        values = [sorted(r.components) if differing == "components" else _object_layout(r)
                  if differing == "objects" else getattr(r, differing) for r in records]
        raise ValueError(f"merge_records: the shard records differ in {differing!r} ({values}); expected the "
                         "shards of one evaluation (same model, setting, split and parameters)")
    per_image = PerImageStats.concat([r.per_image for r in records])
    components = {name: PerImageStats.concat([r.components[name] for r in records]) for name in records[0].components}
    return dataclasses.replace(records[0], per_image=per_image, components=components,
                               objects=_merged_objects(records), seconds=float(sum(r.seconds for r in records)),
                               **per_image.scores())


def merge_record_files(paths: Sequence[str | Path], out: str | Path) -> EvalRecord:
    """Read shard records from ``paths`` (in shard order), merge them and write the result to ``out`` atomically."""
    merged = merge_records([EvalRecord.read(p) for p in paths])
    merged.write(out)
    return merged


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (``eroseg evaluate --shard``) as ``(index, shards)``.

    Raises:
        ValueError: not two integers with ``0 <= I < N`` (names the value and the form expected).
    """
    index, sep, count = str(text).partition("/")
    try:
        index_value, count_value = int(index), int(count)
    except ValueError:
        index_value = count_value = -1
    if not sep or count_value < 1 or not 0 <= index_value < count_value:
        raise ValueError(f"--shard {text!r}: expected I/N, shard I (from 0) of N shards, e.g. 0/8")
    return index_value, count_value


def shard_subset(dataset, shard: tuple[int, int] | None, batch_size: int, max_images: int | None = None):
    """The images of one shard of an evaluation, and the index of its first batch in the one-job evaluation.

    ``max_images`` is applied first (the first images of the split), then the shard's
    :func:`shard_range` of what is left. ``shard`` None: the whole (cut) split and offset 0.

    Returns:
        ``(dataset, batch_offset)``: a :class:`torch.utils.data.Subset` (or ``dataset`` itself) and the
        ``batch_offset`` to pass to :func:`eroseg.evaluate.evaluate`.

    Raises:
        ValueError: the shard has no images (more shards than batches; names the most shards that fit).
    """
    from torch.utils.data import Subset

    if max_images is not None and max_images < len(dataset):
        dataset = Subset(dataset, range(max_images))
    if shard is None:
        return dataset, 0
    index, shards = shard
    n = len(dataset)
    images = shard_range(n, shards, index, batch_size)
    if not images:
        batches = -(-n // batch_size)
        raise ValueError(f"--shard {index}/{shards}: no images (the split's {n} images make {batches} batches of "
                         f"{batch_size}); use at most {batches} shards (evaluation.shards)")
    return Subset(dataset, images), shard_batch_offset(n, shards, index, batch_size)


def merge_shard_folders(folders: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """Merge the evaluation folders of one model's shards (in shard order) into ``out_dir``.

    Every shard folder holds the same result files (its :data:`eroseg.io.EVAL_MANIFEST` lists them); each
    file is merged across the shards (:func:`merge_record_files`) into the same relative path under
    ``out_dir``, whose manifest is written last, as one evaluation job writes its folder.

    Returns:
        The merged files.

    Raises:
        ValueError: no folders, or shards that list different files (names the shard and the files).
        FileNotFoundError: a shard folder without its manifest or missing a file it lists.
    """
    from eroseg.io import EVAL_MANIFEST, eval_folder_files, write_eval_manifest

    if not folders:
        raise ValueError("merge_shard_folders: no shard folders given; expected one per shard")
    folders = [Path(f) for f in folders]
    names = []
    for folder in folders:
        if not (folder / EVAL_MANIFEST).is_file():
            raise FileNotFoundError(f"{folder}: no {EVAL_MANIFEST}, so this shard's evaluation did not finish; "
                                    "rerun that shard")
        names.append([f.relative_to(folder).as_posix() for f in eval_folder_files(folder)])
    for folder, listed in zip(folders[1:], names[1:]):
        if listed != names[0]:
            raise ValueError(f"{folder}: lists {sorted(set(listed) ^ set(names[0]))} unlike {folders[0]}; "
                             "expected the shards of one evaluation, with the same settings")
    out_dir = Path(out_dir)
    merged = []
    for name in names[0]:
        merge_record_files([folder / name for folder in folders], out_dir / name)
        merged.append(out_dir / name)
    write_eval_manifest(out_dir / EVAL_MANIFEST, merged)
    return merged


__all__ = ["SHARED_FIELDS", "merge_record_files", "merge_records", "merge_shard_folders", "parse_shard",
           "shard_batch_offset", "shard_range", "shard_subset"]
