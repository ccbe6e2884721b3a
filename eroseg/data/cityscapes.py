"""Reader for Cityscapes (fine annotations), read in place from the official download.

Layout under ``root`` (the folder holding ``leftImg8bit_trainvaltest.zip`` and
``gtFine_trainvaltest.zip`` extracted side by side)::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

with ``<split>`` one of ``train``, ``val`` or ``test``. The ``labelIds``
PNGs hold the 34 Cityscapes label ids (0..33); :meth:`Cityscapes.load_label`
maps them to the 19 train ids (0..18) used in every benchmark, with every
other id (void, and the classes not evaluated such as ``parking`` or
``caravan``) mapped to 255 (void).
"""

from __future__ import annotations

import os

import numpy as np

from eroseg.data.errors import IGNORE_INDEX, DatasetError, DatasetNotFoundError, layout_hint
from eroseg.data.reader import SegmentationReader
from eroseg.data.splits import carved_selection, select_samples
from eroseg.data.transforms import JointTransform

#: The 19 Cityscapes evaluation classes; index = train id.
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

#: The official Cityscapes colour of each train class (cityscapesScripts' ``labels.py``).
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),  # road
    (244, 35, 232),  # sidewalk
    (70, 70, 70),  # building
    (102, 102, 156),  # wall
    (190, 153, 153),  # fence
    (153, 153, 153),  # pole
    (250, 170, 30),  # traffic light
    (220, 220, 0),  # traffic sign
    (107, 142, 35),  # vegetation
    (152, 251, 152),  # terrain
    (70, 130, 180),  # sky
    (220, 20, 60),  # person
    (255, 0, 0),  # rider
    (0, 0, 142),  # car
    (0, 0, 70),  # truck
    (0, 60, 100),  # bus
    (0, 80, 100),  # train
    (0, 0, 230),  # motorcycle
    (119, 11, 32),  # bicycle
)

_V = IGNORE_INDEX
#: Cityscapes label id -> train id, for all 34 label ids and the license plate
#: (id -1). Every id that is not one of the 19 evaluation classes maps to 255.
CITYSCAPES_LABEL_TO_TRAIN: dict[int, int] = {
    0: _V,  # unlabeled
    1: _V,  # ego vehicle
    2: _V,  # rectification border
    3: _V,  # out of roi
    4: _V,  # static
    5: _V,  # dynamic
    6: _V,  # ground
    7: 0,  # road
    8: 1,  # sidewalk
    9: _V,  # parking
    10: _V,  # rail track
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    14: _V,  # guard rail
    15: _V,  # bridge
    16: _V,  # tunnel
    17: 5,  # pole
    18: _V,  # polegroup
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    29: _V,  # caravan
    30: _V,  # trailer
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
    -1: _V,  # license plate
}
del _V


def _label_lut() -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables over the 256 byte values: train id of each, and whether the value is a label id.

    The license plate's id -1 is not drawn into the official ``labelIds`` PNGs
    (cityscapesScripts skips negative ids), but a file written with it as an
    unsigned byte holds 255, so 255 is accepted and maps to void.
    """
    lut = np.full(256, IGNORE_INDEX, np.int64)
    known = np.zeros(256, bool)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id % 256] = train_id
        known[label_id % 256] = True
    return lut, known


_LUT, _KNOWN = _label_lut()

#: Folder layout, quoted in every "not found" error.
LAYOUT = (
    "leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and gtFine/<split>/<city>/<name>_gtFine_labelIds.png "
    "under the Cityscapes root"
)

#: What a Cityscapes root holds; a folder near a wrong root that holds these is suggested.
LAYOUT_MARKERS: tuple[str, ...] = ("leftImg8bit", "gtFine")

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


class Cityscapes(SegmentationReader):
    """A split of Cityscapes with fine annotations, labels mapped to the 19 train ids.

    All files of the split are located when the dataset is built, so a
    missing label fails at once (naming the file) rather than in the middle
    of an epoch.

    Args:
        root: Cityscapes root (holds ``leftImg8bit/`` and ``gtFine/``).
        split: ``train``, ``val`` or ``test`` (any folder of ``leftImg8bit/``).
        transform: optional joint transform ``(image, label) -> (image, label)``.
        num_classes: if given, every loaded label is checked to hold only
            ``0..num_classes-1`` or 255 (after the id mapping).
        split_lists: folder of carved split lists (:mod:`eroseg.data.splits`): ``split`` is read from
            ``<split_lists>/<split>.csv`` where that exists, and without the ids carved from it otherwise.

    Attributes:
        ids: sample ids (``<city>_<seq>_<frame>``), sorted by city then name.

    Raises:
        DatasetNotFoundError: root, the split folder or a label is missing.
        DatasetError: the split holds no images.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        transform: JointTransform | None = None,
        num_classes: int | None = None,
        split_lists: str | os.PathLike | None = None,
    ) -> None:
        source, keep, drop = carved_selection(split_lists, split)
        super().__init__(root, source, transform=transform, num_classes=num_classes)
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"{self.root}: Cityscapes root not found; expected {LAYOUT}."
                                       + layout_hint(self.root, LAYOUT_MARKERS))
        self._scan()
        if split_lists is not None:
            select_samples(self, split, keep, drop)

    def _scan(self) -> None:
        image_split = self.root / "leftImg8bit" / self.split
        label_split = self.root / "gtFine" / self.split
        if not image_split.is_dir():
            parent = image_split.parent
            if parent.is_dir():
                have = ", ".join(sorted(p.name for p in parent.iterdir() if p.is_dir())) or "none"
            else:
                have = f"none ({parent} does not exist)"
            hint = "" if parent.is_dir() else layout_hint(self.root, LAYOUT_MARKERS)
            raise DatasetNotFoundError(
                f"{image_split}: image folder of split {self.split!r} not found; expected {LAYOUT}. "
                f"Existing splits: {have}.{hint}"
            )
        if not label_split.is_dir():
            raise DatasetNotFoundError(
                f"{label_split}: label folder of split {self.split!r} not found (extract gtFine_trainvaltest.zip "
                f"next to leftImg8bit); expected {LAYOUT}"
            )
        for city_dir in sorted(p for p in image_split.iterdir() if p.is_dir()):
            city = city_dir.name
            label_dir = label_split / city
            # One listdir per city instead of a stat per file (slow on network file systems).
            label_names = set(os.listdir(label_dir)) if label_dir.is_dir() else set()
            for name in sorted(os.listdir(city_dir)):
                if not name.endswith(IMAGE_SUFFIX):
                    continue
                sample_id = name[: -len(IMAGE_SUFFIX)]
                label = label_dir / f"{sample_id}{LABEL_SUFFIX}"
                if label.name not in label_names:
                    raise DatasetNotFoundError(
                        f"{label}: label of image {city_dir / name} not found; expected {LAYOUT}"
                    )
                self._add(sample_id, city_dir / name, label)
        if not self.ids:
            raise DatasetError(
                f"{image_split}: no *{IMAGE_SUFFIX} images in any city folder of split {self.split!r}; "
                f"expected {LAYOUT}"
            )

    # ------------------------------------------------------------------ labels
    def load_label(self, index: int) -> np.ndarray:
        """Sample ``index``'s label map in train ids: int64 ``[H, W]``, 0..18, 255 void.

        Raises:
            DatasetError: the file is not a greyscale/palette PNG, cannot be
                read, or holds a value that is not a Cityscapes label id.
        """
        path = self.label_path(index)
        raw = self._read_label(index)
        known = _KNOWN[raw]
        if not known.all():
            bad = raw[~known]
            raise DatasetError(
                f"{path}: value {int(bad.flat[0])} is not a Cityscapes label id ({bad.size} pixels); expected "
                "the label ids 0..33 of a *_gtFine_labelIds.png (not the color, instanceIds or labelTrainIds file)"
            )
        return _LUT[raw]


__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_LABEL_TO_TRAIN", "CITYSCAPES_PALETTE", "Cityscapes"]
