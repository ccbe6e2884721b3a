"""Dataset validation for the ``prepare`` stage: manifest and class frequencies.

Every sample of every requested split is opened and checked (image and label
exist and are readable, sizes match, label values are class ids or void)
before any training starts, so bad data fails early with the file and what is
wrong instead of deep inside a training job.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from eroseg.data.batching import DEFAULT_MAX_PIXELS, pixel_budget_error
from eroseg.data.checks import check_label_size, check_label_values
from eroseg.data.errors import IGNORE_INDEX, DatasetError
from eroseg.data.splits import carve_tune_split
from eroseg.io import atomic_write_text

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("split", "id", "image", "label", "height", "width", "valid_pixels")
FREQUENCY_COLUMNS = ("class_id", "class_name", "pixels", "fraction")


def _image_size(path: Path, max_pixels: int | None = None) -> tuple[int, int]:
    """``(height, width)`` of an image from its header; fully decoded to catch truncated files, unless it has
    more than ``max_pixels`` pixels (then refused, naming it, before the decode allocates them)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if max_pixels and h * w > max_pixels:
                raise DatasetError(pixel_budget_error(str(path), h, w, max_pixels))
            im.load()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read image ({err}); expected a readable JPEG or PNG") from err
    return h, w


def _relative(path: Path, root: Path) -> str:
    # Paths relative to the root keep the manifest identical across machines.
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _csv_text(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def _check_splits(splits: Sequence[str], frequency_split: str | None) -> tuple[list[str], str]:
    """The split list and the split to count class frequencies on (``train`` if listed, else the first split)."""
    splits = list(splits)
    if not splits:
        raise ValueError("prepare_dataset: splits is empty; expected at least one split name (e.g. train val)")
    if len(set(splits)) != len(splits):
        raise ValueError(f"prepare_dataset: splits {splits} lists a split twice")
    if frequency_split is None:
        frequency_split = "train" if "train" in splits else splits[0]
    elif frequency_split not in splits:
        raise ValueError(f"prepare_dataset: frequency_split {frequency_split!r} is not one of splits {splits}")
    return splits, frequency_split


def _validate_split(dataset, split: str, root: Path, num_classes: int, pixels: np.ndarray | None,
                    max_pixels: int | None = None) -> list[tuple]:
    """Open and check every sample of one split; returns its manifest rows.

    Args:
        dataset: the split's reader (built with ``num_classes=None``).
        split: the split's name, for the manifest.
        root: dataset root; manifest paths are relative to it.
        num_classes: number of classes of the dataset.
        pixels: per-class pixel counts, added to in place; None where the
            split's class frequencies are not counted.
        max_pixels: refuse an image with more pixels (H x W) than this; None or 0: no budget.

    Raises:
        DatasetError: at the first bad sample, naming its file and the problem.
    """
    rows = []
    for i in range(len(dataset)):
        image_path, label_path = Path(dataset.image_path(i)), Path(dataset.label_path(i))
        height_width = _image_size(image_path, max_pixels)
        label = dataset.load_label(i)
        check_label_size(label.shape, height_width, label_path)
        check_label_values(label, num_classes, label_path)
        valid = label[label != IGNORE_INDEX]
        if pixels is not None:
            pixels += np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
        rows.append((split, dataset.ids[i], _relative(image_path, root), _relative(label_path, root),
                     height_width[0], height_width[1], int(valid.size)))
    return rows


def _carve_tune(dataset_name: str, root: Path, tune: dict | None, split_lists: str | os.PathLike | None,
                splits: list[str]) -> str | None:
    """Write the tune list (:func:`eroseg.data.splits.carve_tune_split`) when ``tune`` asks for one; its path."""
    if not tune:
        return None
    from eroseg.data import get_dataset  # the registry imports this module

    unknown = sorted(set(tune) - {"source", "size", "seed"})
    if unknown or "source" not in tune or "size" not in tune:
        raise ValueError(f"prepare_dataset: tune {tune!r}; expected keys source, size and optionally seed")
    if split_lists is None:
        raise ValueError("prepare_dataset: a tune list needs split_lists, the folder it is written to")
    if tune["source"] not in splits:
        raise ValueError(f"prepare_dataset: the tune list's source split {tune['source']!r} is not one of splits "
                         f"{splits}; it must be validated too")
    source = get_dataset(dataset_name, root, tune["source"], num_classes=None)  # every image, none carved yet
    path = carve_tune_split(source.ids, tune["source"], tune["size"], tune.get("seed", 0), split_lists)
    log.info("%s: %d images of split %s carved as the tune list %s", root, tune["size"], tune["source"], path)
    return str(path)


def prepare_dataset(
    dataset_name: str,
    root: str | os.PathLike,
    splits: Sequence[str],
    *,
    manifest_path: str | os.PathLike,
    frequencies_path: str | os.PathLike,
    frequency_split: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS["cuda"],
    tune: dict | None = None,
    split_lists: str | os.PathLike | None = None,
) -> dict:
    """Validate every sample of ``splits``; write the manifest and class-frequency CSVs.

    Args:
        dataset_name: registered dataset name (see :data:`eroseg.data.DATASETS`).
        root: dataset root.
        splits: split names to validate, e.g. ``["train", "val"]``.
        manifest_path: output CSV with one row per sample: split, id, image,
            label (paths relative to ``root``), height, width, valid_pixels
            (non-void label pixels).
        frequencies_path: output CSV with one row per class: class_id,
            class_name, pixels, fraction (of the valid pixels of
            ``frequency_split``).
        frequency_split: split the class frequencies are counted on;
            ``"train"`` if listed in ``splits``, else the first split.
        max_pixels: refuse an image with more pixels (H x W) than this, naming it
            (default: the GPU budget of :data:`eroseg.data.batching.DEFAULT_MAX_PIXELS`, the largest image
            evaluated whole); None or 0: no budget.
        tune: carve the ``tune`` list first: ``{"source": split, "size": n, "seed": s}`` takes ``n``
            images of ``source`` (deterministic in ``s``; see :mod:`eroseg.data.splits`); ``splits`` may
            then name ``tune``, and ``source`` is validated without them.
        split_lists: folder of the carved lists (written with ``tune``, read by every split's reader).

    Returns:
        A summary: ``dataset``, ``root``, ``num_classes``, ``samples`` (per
        split), ``frequency_split``, ``class_pixels`` (list), ``manifest``,
        ``frequencies`` (output paths), ``tune_list`` (the carved list's path, or None).

    Raises:
        ValueError: unknown dataset or empty/duplicate ``splits``.
        DatasetError: at the first bad sample, naming its file and the problem.
    """
    from eroseg.data import dataset_info, get_dataset  # the registry imports this module

    info = dataset_info(dataset_name)
    splits, frequency_split = _check_splits(splits, frequency_split)
    root = Path(root)
    start = time.perf_counter()
    tune_list = _carve_tune(dataset_name, root, tune, split_lists, splits)
    num_classes = info.num_classes
    pixels = np.zeros(num_classes, np.int64)
    rows: list[tuple] = []
    samples: dict[str, int] = {}
    for split in splits:
        # num_classes=None: values are checked here, where the message can name the split.
        carved = {"split_lists": split_lists} if split_lists is not None else {}  # readers outside eroseg lack it
        dataset = get_dataset(dataset_name, root, split, num_classes=None, **carved)
        rows += _validate_split(dataset, split, root, num_classes, pixels if split == frequency_split else None,
                                max_pixels)
        samples[split] = len(dataset)
        log.info("%s: split %s: %d samples valid", root, split, len(dataset))

    total = int(pixels.sum())
    freq_rows = [
        (c, info.classes[c], int(pixels[c]), f"{(pixels[c] / total if total else 0.0):.6f}") for c in range(num_classes)
    ]
    atomic_write_text(manifest_path, _csv_text(MANIFEST_COLUMNS, rows))
    atomic_write_text(frequencies_path, _csv_text(FREQUENCY_COLUMNS, freq_rows))
    absent = [info.classes[c] for c in range(num_classes) if pixels[c] == 0]
    if absent:
        log.warning("%s: classes without any pixel in split %s: %s", root, frequency_split, ", ".join(absent))
    log.info("%s: validated %d samples in %.1f s", root, len(rows), time.perf_counter() - start)
    return {
        "dataset": dataset_name,
        "root": str(root),
        "num_classes": num_classes,
        "samples": samples,
        "frequency_split": frequency_split,
        "class_pixels": [int(v) for v in pixels],
        "manifest": str(manifest_path),
        "frequencies": str(frequencies_path),
        "tune_list": tune_list,
    }


__all__ = ["FREQUENCY_COLUMNS", "MANIFEST_COLUMNS", "prepare_dataset"]
