"""Reader for ADE20K as released for the MIT Scene Parsing benchmark (ADEChallengeData2016).

Layout under ``root`` (the extracted ``ADEChallengeData2016`` folder)::

    images/training/ADE_train_<n>.jpg        images/validation/ADE_val_<n>.jpg
    annotations/training/ADE_train_<n>.png   annotations/validation/ADE_val_<n>.png

Splits ``train`` and ``val`` name the folders ``training`` and ``validation``
(the folder names themselves are accepted too). The annotation PNGs are
greyscale: 0 is "other objects" (void) and 1..150 are the 150 classes;
:meth:`ADE20K.load_label` maps 0 to 255 and ``k`` to ``k - 1``.
"""

from __future__ import annotations

import os

import numpy as np

from eroseg.conventions import IMAGE_SUFFIXES
from eroseg.data.errors import IGNORE_INDEX, DatasetError, DatasetNotFoundError, layout_hint
from eroseg.data.reader import SegmentationReader
from eroseg.data.splits import carved_selection, select_samples
from eroseg.data.transforms import JointTransform

#: The 150 SceneParsing classes in the benchmark's order (``objectInfo150``,
#: first name of each entry); index = annotation value - 1.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

#: Number of annotated classes (annotation values 1..150).
NUM_ADE20K_CLASSES = 150


def ade20k_palette(n: int = NUM_ADE20K_CLASSES) -> list[tuple[int, int, int]]:
    """Return ``n`` well-separated display colours, the same on every call.

    Colours are picked greedily from an 8-level RGB grid (black and white
    left out): each next colour is the grid colour farthest from all colours
    picked so far (ties go to the first in grid order), so any two of the
    150 class colours differ clearly.

    Args:
        n: number of colours (at most 510, the grid size less black and white).

    Returns:
        ``n`` distinct ``(r, g, b)`` tuples.
    """
    levels = np.round(np.linspace(0, 255, 8)).astype(np.int64)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[(grid.sum(1) > 0) & (grid.sum(1) < 3 * 255)]
    if not 0 <= n <= len(grid):
        raise ValueError(f"ade20k_palette: n={n}; expected 0..{len(grid)}")
    picked: list[int] = []
    # Distance of every grid colour to the nearest picked one; start from pure red.
    first = int(np.flatnonzero((grid == (255, 0, 0)).all(1))[0])
    dist = np.full(len(grid), np.inf)
    for _ in range(n):
        k = first if not picked else int(np.argmax(dist))
        picked.append(k)
        dist = np.minimum(dist, ((grid - grid[k]) ** 2).sum(1))
    return [tuple(int(c) for c in grid[k]) for k in picked]  # type: ignore[misc]


#: One display colour per class.
ADE20K_PALETTE: tuple[tuple[int, int, int], ...] = tuple(ade20k_palette())

#: Split names accepted for the two released folders.
SPLIT_FOLDERS: dict[str, str] = {"train": "training", "val": "validation", "training": "training",
                                 "validation": "validation"}


LAYOUT = (
    "images/{training,validation}/*.jpg and annotations/{training,validation}/*.png (same file stem) "
    "under the ADEChallengeData2016 root"
)

#: What an ADEChallengeData2016 root holds; a folder near a wrong root that holds these is suggested.
LAYOUT_MARKERS: tuple[str, ...] = ("images", "annotations")

# Annotation value -> class id: 0 (other objects) -> void, k -> k - 1; above 150 is not a class.
_LUT = np.full(256, IGNORE_INDEX, np.int64)
_LUT[1:NUM_ADE20K_CLASSES + 1] = np.arange(NUM_ADE20K_CLASSES)


class ADE20K(SegmentationReader):
    """A split of ADE20K (SceneParsing release), labels mapped to class ids 0..149.

    All files of the split are located when the dataset is built, so a
    missing annotation fails at once (naming the file).

    Args:
        root: the ``ADEChallengeData2016`` folder.
        split: ``train`` or ``val`` (or the folder names ``training`` / ``validation``).
        transform: optional joint transform ``(image, label) -> (image, label)``.
        num_classes: if given, every loaded label is checked to hold only
            ``0..num_classes-1`` or 255 (after the mapping).
        split_lists: folder of carved split lists (:mod:`eroseg.data.splits`): ``split`` is read from
            ``<split_lists>/<split>.csv`` where that exists, and without the ids carved from it otherwise.

    Attributes:
        ids: sample ids (file stems such as ``ADE_train_00000001``), sorted.

    Raises:
        DatasetError: unknown split name, or the split holds no images.
        DatasetNotFoundError: root, the split's image or annotation folder, or an annotation is missing.
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
        if source not in SPLIT_FOLDERS:
            raise DatasetError(
                f"{self.root}: ADE20K has no split {source!r}; expected one of {', '.join(SPLIT_FOLDERS)} "
                f"(the folders of {LAYOUT})"
            )
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"{self.root}: ADE20K root not found; expected {LAYOUT}."
                                       + layout_hint(self.root, LAYOUT_MARKERS))
        self._scan(SPLIT_FOLDERS[source])
        if split_lists is not None:
            select_samples(self, split, keep, drop)

    def _scan(self, folder: str) -> None:
        image_dir = self.root / "images" / folder
        label_dir = self.root / "annotations" / folder
        if not image_dir.is_dir():
            hint = "" if (self.root / "images").is_dir() else layout_hint(self.root, LAYOUT_MARKERS)
            raise DatasetNotFoundError(
                f"{image_dir}: image folder of split {self.split!r} not found; expected {LAYOUT} "
                f"(is root the ADEChallengeData2016 folder itself?){hint}"
            )
        if not label_dir.is_dir():
            raise DatasetNotFoundError(
                f"{label_dir}: annotation folder of split {self.split!r} not found; expected {LAYOUT}"
            )
        label_names = set(os.listdir(label_dir))  # one listdir, not a stat per file
        for name in sorted(os.listdir(image_dir)):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in IMAGE_SUFFIXES:
                continue
            label = label_dir / f"{stem}.png"
            if label.name not in label_names:
                raise DatasetNotFoundError(
                    f"{label}: annotation of image {image_dir / name} not found; expected {LAYOUT}"
                )
            self._add(stem, image_dir / name, label)
        if not self.ids:
            raise DatasetError(
                f"{image_dir}: no images ({'/'.join(IMAGE_SUFFIXES)}) in split {self.split!r}; expected {LAYOUT}"
            )

    # ------------------------------------------------------------------ labels
    def load_label(self, index: int) -> np.ndarray:
        """Sample ``index``'s label map: int64 ``[H, W]``, class ids 0..149, 255 void (annotation value 0).

        Raises:
            DatasetError: the file is not a greyscale/palette PNG, cannot be
                read, or holds a value above 150.
        """
        path = self.label_path(index)
        raw = self._read_label(index)
        bad = raw > NUM_ADE20K_CLASSES
        if bad.any():
            raise DatasetError(
                f"{path}: annotation value {int(raw[bad].flat[0])} out of range ({int(bad.sum())} pixels); "
                f"expected 0 (other/void) or 1..{NUM_ADE20K_CLASSES} (the SceneParsing classes)"
            )
        return _LUT[raw]


__all__ = ["ADE20K", "ADE20K_CLASSES", "ADE20K_PALETTE", "NUM_ADE20K_CLASSES", "ade20k_palette"]
