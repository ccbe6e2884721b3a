"""Splits carved out of a dataset's own splits: the ``tune`` list taken from the training split.

VOC, Cityscapes and ADE20K publish no test labels, so their official ``val``
is the reported split and the choices (tuning, the per-epoch log) need a split
of their own. :func:`carve_tune_split` takes ``size`` images out of the
training split, deterministically: the split's ids are sorted (so neither the
file system's nor the list file's order matters), permuted by
``numpy.random.default_rng(seed)`` and the first ``size`` taken. It writes them
as ``<lists_dir>/tune.csv`` (columns ``id``, ``source_split``; the workflow's
``lists_dir`` is ``results/<run>/data/splits``, beside the data manifest).

A reader given ``split_lists=<lists_dir>`` then reads split ``tune`` as those
images of its source split, and the source split *without* them: every carved
list in the folder is taken out of the split it was carved from, so the tune
images never reach training when the training job is given the same folder.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eroseg.data.errors import DatasetError
from eroseg.io import atomic_write_text

#: Name of the split carved from the training split for the choices.
TUNE_SPLIT = "tune"
LIST_COLUMNS = ("id", "source_split")


def choose_tune_ids(ids: Sequence[str], size: int, seed: int) -> list[str]:
    """``size`` of ``ids`` chosen by ``seed``, independent of the order of ``ids``; returned sorted.

    Raises:
        ValueError: ``size`` below 1 or not below the number of ids (training must keep an image).
    """
    pool = sorted(set(ids))
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size < len(pool):
        raise ValueError(f"dataset.tune_size: {size!r}; expected an integer from 1 to {len(pool) - 1} (the "
                         f"training split has {len(pool)} images and must keep at least one)")
    order = np.random.default_rng(seed).permutation(len(pool))
    return sorted(pool[i] for i in order[:size])


def carve_tune_split(ids: Sequence[str], source_split: str, size: int, seed: int,
                     lists_dir: str | os.PathLike) -> Path:
    """Choose the tune images among ``ids`` (those of ``source_split``) and write ``<lists_dir>/tune.csv``."""
    chosen = choose_tune_ids(ids, size, seed)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LIST_COLUMNS)
    writer.writerows((sample_id, source_split) for sample_id in chosen)
    path = Path(lists_dir) / f"{TUNE_SPLIT}.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def _read_list(path: Path) -> tuple[str, list[str]]:
    """The source split and the ids of a carved list."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or any(set(LIST_COLUMNS) - set(row) for row in rows):
        raise DatasetError(f"{path}: not a carved split list; expected a CSV with columns {', '.join(LIST_COLUMNS)} "
                           "and at least one row (rerun the prepare stage)")
    sources = {row["source_split"] for row in rows}
    if len(sources) != 1:
        raise DatasetError(f"{path}: ids of several source splits {sorted(sources)}; expected one")
    return sources.pop(), [row["id"] for row in rows]


def carved_selection(split_lists: str | os.PathLike | None, split: str) -> tuple[str, list[str] | None, set[str]]:
    """How a reader builds ``split``: ``(split to scan, ids to keep in order or None for all, ids to leave out)``.

    ``split`` is carved when ``<split_lists>/<split>.csv`` exists: the reader scans its source split and keeps
    its ids, in the list's order (sorted), whatever the order of the source split. Otherwise the reader scans
    ``split`` itself, leaving out the ids of every list carved from it.
    """
    if split_lists is None:
        return split, None, set()
    folder = Path(split_lists)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder of carved split lists not found; expected the prepare stage's "
                           "splits folder (beside the data manifest)")
    own = folder / f"{split}.csv"
    if own.is_file():
        source, ids = _read_list(own)
        return source, ids, set()
    carved = [_read_list(path) for path in sorted(folder.glob("*.csv"))]
    return split, None, {i for source, ids in carved if source == split for i in ids}


def select_samples(reader, split: str, keep: list[str] | None, drop: set[str]) -> None:
    """Restrict a reader built on its source split to ``keep`` (in that order; None: all, in the reader's
    order) minus ``drop``, and rename it ``split``.

    Raises:
        DatasetError: a kept id is not in the source split (the list belongs to another dataset or root).
    """
    position = {sample_id: k for k, sample_id in enumerate(reader.ids)}
    if keep is not None:
        missing = [i for i in keep if i not in position]
        if missing:
            raise DatasetError(f"{reader.root}: split {split!r} lists {len(missing)} ids not in split "
                               f"{reader.split!r} (first: {missing[0]!r}); the carved list belongs to another "
                               "dataset or root: rerun the prepare stage")
    order = [position[i] for i in keep] if keep is not None else range(len(reader.ids))
    rows = [(reader.ids[k], reader.image_path(k), reader.label_path(k)) for k in order if reader.ids[k] not in drop]
    reader.ids, reader._images, reader._labels = [], [], []
    for sample_id, image, label in rows:
        reader._add(sample_id, image, label)
    reader.split = split


__all__ = ["LIST_COLUMNS", "TUNE_SPLIT", "carve_tune_split", "carved_selection", "choose_tune_ids", "select_samples"]
