"""Shared checks on label maps, used by the readers and by ``prepare``.

Keeping the checks (and their messages) in one place means a bad label fails
with the same wording whether it is met during validation or in training.
"""

from __future__ import annotations

import os

import numpy as np

from eroseg.data.errors import IGNORE_INDEX, DatasetError

#: PIL modes whose pixel values are class indices (palette or greyscale PNGs).
LABEL_MODES = ("P", "L")


def check_label_mode(mode: str, path: str | os.PathLike) -> None:
    """Raise unless a label image stores class indices directly.

    Args:
        mode: the PIL mode of the opened label image.
        path: the label file, named in the error.

    Raises:
        DatasetError: ``mode`` is not a palette ("P") or greyscale ("L") mode.
    """
    if mode in LABEL_MODES:
        return
    if mode in ("RGB", "RGBA"):
        raise DatasetError(
            f"{path}: label image is {mode} (colour-coded); expected palette indices "
            "(a mode 'P' or 'L' PNG whose pixel values are the class ids, 255 for void). "
            "Convert the colours to class indices first."
        )
    raise DatasetError(
        f"{path}: label image has PIL mode {mode!r}; expected a palette ('P') or greyscale ('L') PNG "
        "whose pixel values are the class ids (255 for void)"
    )


def check_label_size(label_hw: tuple[int, int], image_hw: tuple[int, int], path: str | os.PathLike) -> None:
    """Raise if a label's height/width differ from its image's.

    Args:
        label_hw: ``(height, width)`` of the label.
        image_hw: ``(height, width)`` of the image.
        path: the label file, named in the error.

    Raises:
        DatasetError: the sizes differ (written as ``WIDTHxHEIGHT`` like image viewers do).
    """
    if tuple(label_hw) != tuple(image_hw):
        raise DatasetError(
            f"{path}: size {label_hw[1]}x{label_hw[0]} does not match image size "
            f"{image_hw[1]}x{image_hw[0]} (width x height); a label must cover its image pixel for pixel"
        )


def check_label_values(label: np.ndarray, num_classes: int, path: str | os.PathLike) -> None:
    """Raise if a label holds a value outside ``0..num_classes-1`` other than void.

    Args:
        label: integer label map.
        num_classes: number of classes of the dataset.
        path: the label file, named in the error.

    Raises:
        DatasetError: naming the first offending value (in raster order) and how many pixels are bad.
    """
    arr = np.asarray(label)
    valid = ((arr >= 0) & (arr < num_classes)) | (arr == IGNORE_INDEX)
    if valid.all():
        return
    bad = arr[~valid]
    raise DatasetError(
        f"{path}: label value {int(bad.flat[0])} out of range ({bad.size} pixels outside the valid values); "
        f"expected 0..{num_classes - 1} or {IGNORE_INDEX} (void)"
    )
