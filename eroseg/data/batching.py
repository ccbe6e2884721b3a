"""Whole-image batches of equal-size images, gathered across the whole split.

Whole-image evaluation cannot stack images of different sizes, and real
datasets mix sizes (PASCAL VOC: 500x375, 375x500, 500x333, ...; ADE20K: many
more). Batching only *consecutive* equal sizes leaves most batches at one
image. Here the indices of the split are bucketed by exact ``(H, W)`` first,
each bucket is cut into batches of ``batch_size``, and the batches are decoded
in DataLoader workers. Every batch carries its dataset indices, so the caller
puts per-image results back into dataset order (:func:`dataset_order`).

Batches come in the order of their first index: with ``batch_size=1``, or on
a dataset whose images share one size, the batches are exactly those of a
plain sequential pass, so per-batch random streams (keyed by the batch's
position) are unchanged for those cases. No padding is done: an image is only
ever batched with images of its own size, so its result is the same as at
batch 1 up to the numerics of a batched forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch


def sample_size(dataset, index: int) -> tuple[int, int]:
    """``(H, W)`` of sample ``index`` of ``dataset``, as cheaply as the dataset allows.

    In order: the dataset's own ``size(index)``; through a
    :class:`torch.utils.data.Subset` to its base dataset; the image file's
    header (``image_path(index)``, read without decoding) for readers without a
    ``transform``; otherwise the sample is loaded and its label's shape taken.
    """
    size = getattr(dataset, "size", None)
    if callable(size):
        h, w = size(index)
        return int(h), int(w)
    if isinstance(dataset, torch.utils.data.Subset):
        return sample_size(dataset.dataset, int(dataset.indices[index]))
    image_path = getattr(dataset, "image_path", None)
    if callable(image_path) and getattr(dataset, "transform", None) is None:
        from PIL import Image

        with Image.open(image_path(index)) as im:  # header only: PIL decodes lazily
            w, h = im.size
        return int(h), int(w)
    _, label = dataset[index]
    return int(label.shape[-2]), int(label.shape[-1])


#: Default pixel budget (H x W) per image, by device type: ``eroseg attack`` skips larger images,
#: ``eroseg evaluate`` refuses them (``--max-pixels``); ``eroseg prepare`` refuses above the GPU budget.
DEFAULT_MAX_PIXELS = {"cpu": 4_000_000, "cuda": 16_000_000}


def pixel_budget_error(name: str, height: int, width: int, max_pixels: int, flag: str = "--max-pixels") -> str:
    """The one line for an image above a pixel budget (evaluate, prepare; attack skips such images instead)."""
    return (f"{name}: {height}x{width} image ({height * width:,} pixels) is above the pixel budget of "
            f"{max_pixels:,} ({flag}), too large to evaluate whole; resize the image or raise {flag} (0: no budget)")


def check_pixel_budget(dataset, max_pixels: int | None, count: int | None = None) -> None:
    """Refuse the first of the first ``count`` samples with more than ``max_pixels`` pixels, before any is decoded.

    Sizes come from :func:`sample_size` (the image header where the reader allows), so a huge image is
    named here instead of failing later as an allocation error that names no image.

    Raises:
        ValueError: naming the sample's image file (or id) and its size; ``max_pixels`` 0 or None: no check.
    """
    if not max_pixels:
        return
    n = len(dataset) if count is None else min(count, len(dataset))
    for i in range(n):
        h, w = sample_size(dataset, i)
        if h * w > max_pixels:
            image_path = getattr(dataset, "image_path", None)
            ids = getattr(dataset, "ids", None)
            name = str(image_path(i)) if callable(image_path) else f"sample {ids[i] if ids is not None else i}"
            raise ValueError(pixel_budget_error(name, h, w, max_pixels))


def size_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Group indices ``0..len(sizes)-1`` into batches of one exact size.

    Args:
        sizes: ``(H, W)`` of each sample, in dataset order.
        batch_size: most indices per batch (the last batch of each size may hold fewer).

    Returns:
        The batches (lists of indices, ascending within a batch), ordered by their first index.

    Raises:
        ValueError: ``batch_size`` is not a positive integer.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, hw in enumerate(sizes):
        buckets.setdefault(tuple(hw), []).append(i)
    batches = [idx[k:k + batch_size] for idx in buckets.values() for k in range(0, len(idx), batch_size)]
    return sorted(batches, key=lambda b: b[0])


class _Indexed(torch.utils.data.Dataset):
    """``(index, image, label)`` of the wrapped dataset, so a batch knows its dataset indices."""

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return index, image, label


def _collate(items):
    indices = [int(i) for i, _, _ in items]
    return indices, torch.stack([im for _, im, _ in items]), torch.stack([lb for _, _, lb in items])


def size_bucketed_batches(
    dataset,
    batch_size: int,
    *,
    num_workers: int = 0,
    sizes: Sequence[tuple[int, int]] | None = None,
    pin_memory: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield ``(indices, images, labels)`` batches of equal-size images from anywhere in ``dataset``.

    Args:
        dataset: returns ``(image [3, H, W], label [H, W])``.
        batch_size: most images per batch.
        num_workers: DataLoader worker processes that decode the images (0: in
            this process, the right choice on a CPU-only machine with few cores).
        sizes: ``(H, W)`` per sample when already known (e.g. from a manifest);
            by default read with :func:`sample_size`.
        pin_memory: pin batches for faster copies to a GPU.

    Returns:
        An iterator over ``(indices, images, labels)``; ``indices`` are the
        dataset indices of the batch's images, ascending.

    Shape:
        images ``[B, 3, H, W]``, labels ``[B, H, W]``, ``len(indices) == B``.

    Raises:
        ValueError: ``batch_size`` or ``num_workers`` is invalid, or ``sizes`` has the wrong length.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if sizes is None:
        sizes = [sample_size(dataset, i) for i in range(len(dataset))]
    elif len(sizes) != len(dataset):
        raise ValueError(f"sizes has {len(sizes)} entries for a dataset of {len(dataset)} samples")
    batches = size_batches(sizes, batch_size)
    loader = torch.utils.data.DataLoader(
        _Indexed(dataset), batch_sampler=batches, num_workers=num_workers, collate_fn=_collate,
        pin_memory=pin_memory, persistent_workers=False,
        # Workers would otherwise each start as many threads as the main process.
        worker_init_fn=_one_thread if num_workers else None,
    )
    yield from loader


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def dataset_order(indices: Sequence[Sequence[int]]) -> np.ndarray:
    """Permutation that puts rows concatenated batch by batch back into dataset order.

    Args:
        indices: the dataset indices of each batch, in the order the batches were processed.

    Returns:
        ``order`` such that ``rows[order]`` lists the rows by ascending dataset index.

    Raises:
        ValueError: an index appears twice.
    """
    flat = np.fromiter((i for batch in indices for i in batch), dtype=np.int64)
    if len(np.unique(flat)) != len(flat):
        raise ValueError("dataset_order: an index appears in more than one batch")
    return np.argsort(flat, kind="stable")


def default_num_workers(device: torch.device | str) -> int:
    """Decoding workers for an evaluation on ``device``: none on a CPU, a few beside a GPU."""
    if torch.device(device).type == "cpu":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cpus - 1))


__all__ = ["dataset_order", "default_num_workers", "sample_size", "size_batches", "size_bucketed_batches"]
