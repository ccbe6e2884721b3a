"""Reader for datasets in the PASCAL VOC segmentation layout (VOC 2012 and the synthetic set).

Layout under ``root``::

    JPEGImages/<id>.jpg            (or <id>.png / <id>.jpeg; the synthetic set uses lossless PNG)
    SegmentationClass/<id>.png     palette ("P") or greyscale ("L") PNG; pixel values are class ids, 255 void
    ImageSets/Segmentation/<split>.txt   one id per line

A split list may also hold two paths per line (``/JPEGImages/x.jpg
/SegmentationClassAug/x.png``, relative to ``root``), the format of the
common SBD ``train_aug`` lists.
"""

from __future__ import annotations

import os
from pathlib import Path

from eroseg.conventions import IMAGE_SUFFIXES
from eroseg.data.errors import IGNORE_INDEX, DatasetError, DatasetNotFoundError, layout_hint
from eroseg.data.reader import SegmentationReader
from eroseg.data.splits import carved_selection, select_samples
from eroseg.data.transforms import JointTransform

#: The 21 PASCAL VOC classes; index = class id in the label PNGs.
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


#: What a VOC root holds at least; a folder near a wrong root that holds these is suggested.
LAYOUT_MARKERS: tuple[str, ...] = ("JPEGImages", "ImageSets/Segmentation")


def sbd_hint(root: Path) -> str:
    """The SBD step, for an error about the ``train_aug`` list or its ``SegmentationClassAug`` labels."""
    return (" train_aug is VOC 2012 train plus SBD: put SBD's labels as class-index PNGs in "
            f"{root / 'SegmentationClassAug'} and its train_aug.txt list in {root / 'ImageSets' / 'Segmentation'} "
            "(the dataset section of config/voc.yaml says how), or train on VOC 2012 alone with "
            "`dataset.train_split: train`.")


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """Return the standard PASCAL VOC colour map.

    Class ``i``'s colour spreads the bits of ``i`` over the three channels,
    most significant first (bit 0 -> red, bit 1 -> green, bit 2 -> blue), so
    that neighbouring class ids get very different colours. Index 255 (void)
    is ``(224, 224, 192)``.

    Args:
        n: number of entries (at most 256).

    Returns:
        ``n`` ``(r, g, b)`` tuples.
    """
    if not 0 <= n <= 256:
        raise ValueError(f"voc_palette: n={n}; expected 0..256")
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


class VOCSegmentation(SegmentationReader):
    """A split of a dataset in the PASCAL VOC layout.

    All files of the split are located when the dataset is built, so a
    missing image or label fails at once (naming the file) rather than in
    the middle of an epoch.

    Args:
        root: dataset root (holds ``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/``).
        split: split name; its list is ``ImageSets/Segmentation/<split>.txt``.
        list_file: path of the split list, overriding the one derived from
            ``split`` (e.g. an SBD ``train_aug.txt``). Relative paths are taken
            relative to ``root``.
        transform: optional joint transform ``(image, label) -> (image, label)``.
        num_classes: if given, every loaded label is checked to hold only
            ``0..num_classes-1`` or 255.
        image_dir: image folder under ``root``.
        label_dir: label folder under ``root`` (``SegmentationClassAug`` for SBD).
        split_lists: folder of carved split lists (:mod:`eroseg.data.splits`): ``split`` is read from
            ``<split_lists>/<split>.csv`` where that exists, and without the ids carved from it otherwise.

    Attributes:
        ids: the sample ids in list order.

    Raises:
        DatasetNotFoundError: root, split list, an image or a label is missing.
        DatasetError: the split list is empty.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        list_file: str | os.PathLike | None = None,
        transform: JointTransform | None = None,
        num_classes: int | None = None,
        image_dir: str = "JPEGImages",
        label_dir: str = "SegmentationClass",
        split_lists: str | os.PathLike | None = None,
    ) -> None:
        source, keep, drop = carved_selection(split_lists, split)
        super().__init__(root, source, transform=transform, num_classes=num_classes)
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"{self.root}: dataset root not found; expected a folder in the PASCAL VOC layout "
                "(JPEGImages/, SegmentationClass/, ImageSets/Segmentation/<split>.txt)"
                + layout_hint(self.root, LAYOUT_MARKERS)
            )
        self.list_file = self._list_path(list_file)
        self._read_list(image_dir, label_dir)
        if split_lists is not None:
            select_samples(self, split, keep, drop)

    # ----------------------------------------------------------------- building
    def _list_path(self, list_file: str | os.PathLike | None) -> Path:
        if list_file is not None:
            path = Path(list_file)
            path = path if path.is_absolute() else self.root / path
            if not path.is_file():
                raise DatasetNotFoundError(f"{path}: split list file not found (given as list_file)")
            return path
        list_dir = self.root / "ImageSets" / "Segmentation"
        path = list_dir / f"{self.split}.txt"
        if not path.is_file():
            found = sorted(p.stem for p in list_dir.glob("*.txt")) if list_dir.is_dir() else []
            have = ", ".join(found) if found else f"none ({list_dir} has no .txt lists)"
            hint = ""
            if not all((self.root / m).is_dir() for m in LAYOUT_MARKERS):  # not a VOC root at all
                hint = layout_hint(self.root, LAYOUT_MARKERS)
            elif "aug" in self.split:
                hint = sbd_hint(self.root)
            raise DatasetNotFoundError(
                f"{path}: split list for split {self.split!r} not found; existing splits: {have}.{hint}"
            )
        return path

    def _read_list(self, image_dir: str, label_dir: str) -> None:
        lines = [line.strip() for line in self.list_file.read_text().splitlines()]
        entries = [line for line in lines if line and not line.startswith("#")]
        if not entries:
            raise DatasetError(f"{self.list_file}: split list is empty; expected one sample id per line")
        img_root, lbl_root = self.root / image_dir, self.root / label_dir
        # One listdir per folder instead of a stat per file: VOC lists hold
        # ~10k ids, and network file systems make each stat slow.
        img_names = set(os.listdir(img_root)) if img_root.is_dir() else set()
        lbl_names = set(os.listdir(lbl_root)) if lbl_root.is_dir() else set()
        first_line: dict[str, int] = {}
        for lineno, entry in enumerate(entries, 1):
            fields = entry.split()
            if len(fields) == 2:  # SBD style: "<image path> <label path>" relative to root
                image = self.root / fields[0].lstrip("/")
                label = self.root / fields[1].lstrip("/")
                sample_id = image.stem
                if not image.is_file():
                    raise DatasetNotFoundError(
                        f"{image}: image not found (listed on line {lineno} of {self.list_file})"
                    )
                if not label.is_file():
                    hint = sbd_hint(self.root) if "SegmentationClassAug" in label.parts else ""
                    raise DatasetNotFoundError(
                        f"{label}: label not found (listed on line {lineno} of {self.list_file}).{hint}"
                    )
            elif len(fields) == 1:
                sample_id = fields[0]
                image = next((img_root / f"{sample_id}{s}" for s in IMAGE_SUFFIXES if f"{sample_id}{s}" in img_names),
                             None)
                if image is None:
                    raise DatasetNotFoundError(
                        f"{img_root / (sample_id + '.jpg')}: image of sample {sample_id!r} not found "
                        f"(listed in {self.list_file}); expected "
                        f"{sample_id}{{{','.join(IMAGE_SUFFIXES)}}} in {img_root}"
                    )
                label = lbl_root / f"{sample_id}.png"
                if label.name not in lbl_names:
                    hint = sbd_hint(self.root) if label_dir == "SegmentationClassAug" else ""
                    raise DatasetNotFoundError(
                        f"{label}: label of sample {sample_id!r} not found (listed in {self.list_file}); "
                        f"expected a PNG per image in {lbl_root}.{hint}"
                    )
            else:
                raise DatasetError(
                    f"{self.list_file}: line {lineno} is {entry!r}; expected one id, or an image path and a label path"
                )
            if sample_id in first_line:
                raise DatasetError(
                    f"{self.list_file}: sample id {sample_id!r} is listed twice (entries {first_line[sample_id]} "
                    f"and {lineno}); each sample must appear once in a split"
                )
            first_line[sample_id] = lineno
            self._add(sample_id, image, label)


__all__ = ["IGNORE_INDEX", "VOC_CLASSES", "VOCSegmentation", "voc_palette"]
