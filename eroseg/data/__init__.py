"""Datasets for eroseg: the registry, the readers, the synthetic generator and validation.

Conventions shared by every reader: ``dataset[i]`` returns ``(image, label)``
with ``image`` a float32 tensor ``[3, H, W]`` in [0, 1] and ``label`` an int64
tensor ``[H, W]`` of class ids, :data:`IGNORE_INDEX` (255) for void pixels.

A reader also provides ``ids`` (sample ids), ``image_path(i)``,
``label_path(i)`` and ``load_label(i)`` (int64 numpy array of class ids after
any id mapping); :func:`prepare_dataset` validates through these, so a new
dataset (Cityscapes, ADE20K, ...) only needs a reader with this interface and
a :class:`DatasetInfo` added with :func:`register_dataset`. Subclassing
:class:`eroseg.data.reader.SegmentationReader` gives all of it but the
folder layout and the label mapping.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from eroseg.data.ade20k import ADE20K, ADE20K_CLASSES, ADE20K_PALETTE
from eroseg.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, Cityscapes
from eroseg.data.errors import IGNORE_INDEX, DatasetError, DatasetNotFoundError
from eroseg.data.prepare import prepare_dataset
from eroseg.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, generate_synthetic
from eroseg.data.voc import VOC_CLASSES, VOCSegmentation, voc_palette


@dataclass(frozen=True)
class DatasetInfo:
    """What the pipeline needs to know about a dataset besides its files.

    Attributes:
        name: registry key.
        classes: class names; index = class id.
        palette: one display ``(r, g, b)`` per class (void is drawn separately).
        factory: ``factory(root, split, **kwargs) -> Dataset``; receives
            ``num_classes`` in kwargs (None turns off the per-sample value check).
        description: one line for listings.
    """

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    factory: Callable[..., torch.utils.data.Dataset] = field(repr=False)
    description: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes (void not counted)."""
        return len(self.classes)


def _synthetic_factory(root: str | os.PathLike, split: str, **kwargs: Any) -> VOCSegmentation:
    if not os.path.isdir(root):
        raise DatasetNotFoundError(
            f"{root}: synthetic dataset not found; generate it first "
            "(`eroseg synthesize --root ROOT ...` or eroseg.data.generate_synthetic)"
        )
    return VOCSegmentation(root, split, **kwargs)


def _voc_factory(root: str | os.PathLike, split: str, **kwargs: Any) -> VOCSegmentation:
    return VOCSegmentation(root, split, **kwargs)


#: Registered datasets by name.
DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add (or replace) a dataset in :data:`DATASETS` and return it."""
    if len(info.palette) < info.num_classes:
        raise ValueError(
            f"register_dataset: {info.name!r} has {info.num_classes} classes but {len(info.palette)} palette colours; "
            "expected one colour per class"
        )
    DATASETS[info.name] = info
    return info


register_dataset(DatasetInfo(
    "synthetic", SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, _synthetic_factory,
    "embedded synthetic outdoor scenes (PASCAL VOC layout), made by `eroseg synthesize`",
))
register_dataset(DatasetInfo(
    "voc", VOC_CLASSES, tuple(voc_palette(len(VOC_CLASSES))), _voc_factory,
    "PASCAL VOC 2012 segmentation (VOCdevkit/VOC2012 as root; list_file= for SBD train_aug)",
))
register_dataset(DatasetInfo(
    "cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, Cityscapes,
    "Cityscapes fine annotations, 19 train ids (root holds leftImg8bit/ and gtFine/)",
))
register_dataset(DatasetInfo(
    "ade20k", ADE20K_CLASSES, ADE20K_PALETTE, ADE20K,
    "ADE20K SceneParsing, 150 classes (ADEChallengeData2016 as root; splits train/val)",
))


def dataset_info(name: str) -> DatasetInfo:
    """Return the registry entry of ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of: {', '.join(sorted(DATASETS))}") from None


def get_dataset(name: str, root: str | os.PathLike, split: str, **kwargs: Any) -> torch.utils.data.Dataset:
    """Build the reader of split ``split`` of dataset ``name`` at ``root``.

    Args:
        name: registered dataset name.
        root: dataset root folder.
        split: split name (e.g. ``train``, ``val``).
        **kwargs: passed to the reader (``transform``, ``list_file``, ...).
            ``num_classes`` defaults to the dataset's, so every loaded label
            is checked; pass ``num_classes=None`` to skip that check.

    Raises:
        ValueError: unknown dataset name.
        DatasetError: the files are missing or malformed.
    """
    info = dataset_info(name)
    kwargs.setdefault("num_classes", info.num_classes)
    return info.factory(root, split, **kwargs)


__all__ = [
    "ADE20K",
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "DATASETS",
    "IGNORE_INDEX",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_PALETTE",
    "VOC_CLASSES",
    "Cityscapes",
    "DatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "VOCSegmentation",
    "dataset_info",
    "generate_synthetic",
    "get_dataset",
    "prepare_dataset",
    "register_dataset",
    "voc_palette",
]
