"""The synthetic dataset generator: determinism, layout, value ranges, and that context matters."""

import json
import time

import numpy as np
import pytest
import torch

from eroseg.data import (
    IGNORE_INDEX,
    SYNTHETIC_CLASSES,
    SYNTHETIC_PALETTE,
    DatasetError,
    generate_synthetic,
    get_dataset,
)
from eroseg.data import synthetic as synth
from eroseg.data.synthetic import CAR, GRASS, HOUSE, PERSON, ROAD, SKY, TREE, WATER, render_scene

N_CLASSES = len(SYNTHETIC_CLASSES)
OBJECTS = (TREE, HOUSE, CAR, PERSON)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def moderate():
    """200 rendered 64x64 training scenes as arrays (images uint8 [N,H,W,3], labels uint8 [N,H,W])."""
    pairs = [render_scene(0, "train", i, 64, 64) for i in range(200)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _iou_of_lookup(key: np.ndarray, label: np.ndarray, n_keys: int) -> np.ndarray:
    """Per-class IoU of the best lookup table key -> class, fitted on the very pixels it is scored on."""
    counts = np.zeros((n_keys, N_CLASSES))
    np.add.at(counts, (key, label), 1)
    pred = counts.argmax(1)[key]
    return np.array([((pred == c) & (label == c)).sum() / max(1, ((pred == c) | (label == c)).sum())
                     for c in range(N_CLASSES)])


# ------------------------------------------------------------------ files
def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a = generate_synthetic(tmp_path / "a", n_train=6, n_val=3, height=32, width=40, seed=3)
    b = generate_synthetic(tmp_path / "b", n_train=6, n_val=3, height=32, width=40, seed=3)
    c = generate_synthetic(tmp_path / "c", n_train=6, n_val=3, height=32, width=40, seed=4)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa.keys() == fc.keys()
    changed = [k for k in fa if k.startswith("JPEGImages/") and fa[k] != fc[k]]
    assert len(changed) == 9


def test_val_split_does_not_depend_on_n_train(tmp_path):
    a = _files(generate_synthetic(tmp_path / "a", n_train=3, n_val=4, height=32, width=32, seed=1))
    b = _files(generate_synthetic(tmp_path / "b", n_train=9, n_val=4, height=32, width=32, seed=1))
    val = [k for k in a if "val_" in k or k.endswith("val.txt")]
    assert len(val) == 9  # 4 images + 4 labels + the list
    assert all(a[k] == b[k] for k in val)
    assert a["JPEGImages/train_00002.png"] == b["JPEGImages/train_00002.png"]


def test_layout_lists_and_metadata(tmp_path):
    root = generate_synthetic(tmp_path / "ds", n_train=5, n_val=2, height=48, width=80, seed=0)
    for split, n in (("train", 5), ("val", 2)):
        ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert ids == [f"{split}_{i:05d}" for i in range(n)]
        for i in ids:
            assert (root / "JPEGImages" / f"{i}.png").is_file()
            assert (root / "SegmentationClass" / f"{i}.png").is_file()
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["params"] == {"n_train": 5, "n_val": 2, "height": 48, "width": 80, "seed": 0}
    assert meta["classes"] == list(SYNTHETIC_CLASSES)
    ds = get_dataset("synthetic", root, "train")
    image, label = ds[0]
    assert ds.ids == [f"train_{i:05d}" for i in range(5)]
    assert image.shape == (3, 48, 80) and label.shape == (48, 80)
    # labels are palette PNGs drawn with the display palette
    from PIL import Image

    with Image.open(root / "SegmentationClass" / "train_00000.png") as im:
        assert im.mode == "P"
        assert tuple(im.getpalette()[3 * SKY:3 * SKY + 3]) == SYNTHETIC_PALETTE[SKY]


def test_existing_dataset_kept_replaced_or_refused(tmp_path):
    root = generate_synthetic(tmp_path / "ds", n_train=2, n_val=1, height=32, width=32, seed=0)
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    (root / "marker").write_text("kept")
    generate_synthetic(root, n_train=2, n_val=1, height=32, width=32, seed=0)
    assert (root / "marker").exists() and (root / "synthetic.json").stat().st_mtime_ns == stamp

    generate_synthetic(root, n_train=3, n_val=1, height=32, width=32, seed=0)
    assert not (root / "marker").exists()
    assert len((root / "ImageSets/Segmentation/train.txt").read_text().split()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary or old folders left

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("x")
    with pytest.raises(DatasetError, match="mine.*no synthetic.json"):
        generate_synthetic(foreign, n_train=2, n_val=1, height=32, width=32, seed=0)
    assert (foreign / "precious.txt").exists()


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synth._save_label

    def failing(path, label):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real(path, label)

    monkeypatch.setattr(synth, "_save_label", failing)
    with pytest.raises(OSError, match="disk full"):
        generate_synthetic(tmp_path / "ds", n_train=4, n_val=2, height=32, width=32, seed=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key,value", [("n_train", 0), ("n_val", -1), ("height", 8), ("seed", -2), ("width", 2.5)])
def test_bad_arguments_name_the_key(tmp_path, key, value):
    args = {"n_train": 2, "n_val": 1, "height": 32, "width": 32, "seed": 0, key: value}
    with pytest.raises(ValueError, match=key):
        generate_synthetic(tmp_path / "ds", **args)


def test_render_is_fast():
    start = time.perf_counter()
    for i in range(100):
        render_scene(0, "train", i, 64, 64)
    # ~1.5 ms per image on one core; 10x headroom for slow CI machines
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize("hw", [(48, 80), (256, 256), (16, 16)])
def test_other_sizes(hw):
    image, label = render_scene(2, "val", 1, *hw)
    assert image.shape == (*hw, 3) and image.dtype == np.uint8
    assert label.shape == hw and label.dtype == np.uint8
    assert (label == SKY).any() and (label == GRASS).any()


# ----------------------------------------------------------------- content
def test_values_classes_and_void(moderate):
    images, labels = moderate
    valid = labels != IGNORE_INDEX
    assert labels[valid].max() < N_CLASSES
    for c in range(N_CLASSES):
        assert (labels == c).any(), f"class {SYNTHETIC_CLASSES[c]} never drawn"
    void = 1 - valid.mean()
    assert 0.005 < void < 0.1
    # the void band outlines objects: almost every void pixel touches an object pixel
    obj = np.isin(labels, OBJECTS)
    touch = np.zeros_like(obj)
    touch[:, 1:] |= obj[:, :-1]
    touch[:, :-1] |= obj[:, 1:]
    touch[:, :, 1:] |= obj[:, :, :-1]
    touch[:, :, :-1] |= obj[:, :, 1:]
    assert touch[~valid].mean() > 0.95
    # the whole 0..255 range is used, not a few flat colours
    assert images.min() < 20 and images.max() > 235 and len(np.unique(images)) > 200


def test_reader_tensors(tmp_path):
    root = generate_synthetic(tmp_path / "ds", n_train=4, n_val=2, height=64, width=64, seed=0)
    image, label = get_dataset("synthetic", root, "val")[1]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert label.dtype == torch.int64 and label.shape == (64, 64)
    expected = torch.from_numpy(render_scene(0, "val", 1, 64, 64)[1].astype(np.int64))
    assert torch.equal(label, expected)


def test_context_sky_on_top_water_and_objects_below(moderate):
    _, labels = moderate
    rows = np.arange(64)[None, :, None]
    sky_rows = np.broadcast_to(rows, labels.shape)[labels == SKY]
    assert (sky_rows < 32).mean() > 0.9
    water_rows = np.broadcast_to(rows, labels.shape)[labels == WATER]
    assert (water_rows >= 20).mean() > 0.95
    # the bottom row holds ground things only (people/cars/trees stand there), never sky
    assert not (labels[:, -1] == SKY).any()


def test_cars_sit_on_roads(moderate):
    _, labels = moderate
    car = labels == CAR
    ring = np.zeros_like(car)
    for dy, dx in [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]:
        ring |= np.roll(car, (dy, dx), axis=(1, 2))
    ring &= ~car
    near_car = (labels[ring] == ROAD).mean()
    overall = (labels == ROAD).mean()
    assert near_car > 2 * overall
    # no car without a road in its image
    has_car = car.reshape(len(labels), -1).any(1)
    has_road = (labels == ROAD).reshape(len(labels), -1).any(1)
    assert has_car.any() and not (has_car & ~has_road).any()


def test_colour_alone_does_not_determine_class(moderate):
    images, labels = moderate
    ok = labels != IGNORE_INDEX
    colours = images[ok].astype(np.float32) / 255
    y = labels[ok].astype(np.int64)
    centroids = np.stack([colours[y == c].mean(0) for c in range(N_CLASSES)])
    # look-alike pairs: much closer to each other than sky is to grass
    far = np.linalg.norm(centroids[SKY] - centroids[GRASS])
    for a, b in [(SKY, WATER), (GRASS, TREE), (ROAD, HOUSE), (ROAD, CAR)]:
        assert np.linalg.norm(centroids[a] - centroids[b]) < 0.35 * far, (SYNTHETIC_CLASSES[a], SYNTHETIC_CLASSES[b])
    # a nearest-centroid colour classifier is poor
    pred = ((colours[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y).mean() < 0.7
    # even the best colour lookup table (16 levels per channel, fitted on these very pixels)
    # cannot find water or trees, and adding the row (context) clearly helps
    q16 = (colours * 15.999).astype(np.int64)
    colour_iou = _iou_of_lookup(q16[:, 0] * 256 + q16[:, 1] * 16 + q16[:, 2], y, 4096)
    assert colour_iou[WATER] < 0.2 and colour_iou[TREE] < 0.2
    assert colour_iou.mean() < 0.45
    q8 = (colours * 7.999).astype(np.int64)
    row = np.broadcast_to(np.arange(64)[None, :, None], labels.shape)[ok] // 8
    colour8_iou = _iou_of_lookup(q8[:, 0] * 64 + q8[:, 1] * 8 + q8[:, 2], y, 512)
    context_iou = _iou_of_lookup((q8[:, 0] * 64 + q8[:, 1] * 8 + q8[:, 2]) * 8 + row, y, 4096)
    assert context_iou.mean() > colour8_iou.mean() + 0.05
