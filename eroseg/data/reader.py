"""Base class of the dataset readers: what the VOC, Cityscapes and ADE20K readers share.

A reader locates every file of its split when it is built, so a missing file
fails at once (naming it) rather than in the middle of an epoch. The base
class holds the located samples and loads, checks and transforms them; each
reader adds only its folder layout (how a split's files are found) and, where
the stored label values are not class ids, its label mapping
(:meth:`SegmentationReader.load_label`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eroseg.data.checks import check_label_mode, check_label_size, check_label_values
from eroseg.data.errors import DatasetError
from eroseg.data.transforms import JointTransform


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """Convert a PIL image to a float32 ``[3, H, W]`` tensor in [0, 1]."""
    arr = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy; torch warns on read-only arrays
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().float().div_(255.0)


class SegmentationReader(torch.utils.data.Dataset):
    """A split of a segmentation dataset whose files were all located when it was built.

    ``dataset[i]`` returns ``(image, label)``: a float32 ``[3, H, W]`` tensor
    in [0, 1] and an int64 ``[H, W]`` tensor of class ids (255 void), after
    the optional joint transform. A subclass records each sample it finds
    with :meth:`_add` and overrides :meth:`load_label` where the stored label
    values must be mapped to class ids.

    Args:
        root: dataset root.
        split: split name.
        transform: optional joint transform ``(image, label) -> (image, label)``.
        num_classes: if given, every loaded label is checked to hold only
            ``0..num_classes-1`` or 255 (after any id mapping).

    Attributes:
        ids: the sample ids, in the order the reader found them.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        transform: JointTransform | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.num_classes = num_classes
        self.ids: list[str] = []
        self._images: list[Path] = []
        self._labels: list[Path] = []

    def _add(self, sample_id: str, image: Path, label: Path) -> None:
        """Record one located sample: its id, image file and label file."""
        self.ids.append(sample_id)
        self._images.append(image)
        self._labels.append(label)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        """Path of sample ``index``'s image."""
        return self._images[index]

    def label_path(self, index: int) -> Path:
        """Path of sample ``index``'s label PNG."""
        return self._labels[index]

    def load_image(self, index: int) -> torch.Tensor:
        """Sample ``index``'s image as float32 ``[3, H, W]`` in [0, 1] (no transform; greyscale is expanded)."""
        path = self._images[index]
        try:
            with Image.open(path) as image:
                return image_to_tensor(image)
        except OSError as err:
            raise DatasetError(f"{path}: cannot read image ({err})") from err

    def _read_label(self, index: int) -> np.ndarray:
        """Sample ``index``'s label PNG as stored: uint8 ``[H, W]``, before any id mapping.

        Raises:
            DatasetError: the file is not a palette/greyscale PNG or cannot be read.
        """
        path = self._labels[index]
        try:
            with Image.open(path) as image:
                check_label_mode(image.mode, path)
                return np.asarray(image, dtype=np.uint8)
        except DatasetError:
            raise
        except OSError as err:
            raise DatasetError(f"{path}: cannot read label ({err})") from err

    def load_label(self, index: int) -> np.ndarray:
        """Sample ``index``'s label map as an int64 ``[H, W]`` array (class ids, 255 void).

        The stored values are the class ids; readers whose files store other
        ids override this with their mapping.

        Raises:
            DatasetError: the file is not a palette/greyscale PNG or cannot be read.
        """
        return self._read_label(index).astype(np.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.load_image(index)
        label = self.load_label(index)
        path = self._labels[index]
        check_label_size(label.shape, tuple(image.shape[1:]), path)
        if self.num_classes is not None:
            check_label_values(label, self.num_classes, path)
        label_t = torch.from_numpy(label)
        if self.transform is not None:
            image, label_t = self.transform(image, label_t)
        return image, label_t

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


__all__ = ["SegmentationReader", "image_to_tensor"]
