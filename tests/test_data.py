"""Dataset reader, registry, validation (prepare) and joint transforms, on hand-built fixtures."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from eroseg.data import (
    DATASETS,
    IGNORE_INDEX,
    VOC_CLASSES,
    DatasetError,
    DatasetNotFoundError,
    VOCSegmentation,
    dataset_info,
    generate_synthetic,
    get_dataset,
    prepare_dataset,
    voc_palette,
)
from eroseg.data.transforms import Compose, RandomHorizontalFlip, RandomScaleCrop


# ---------------------------------------------------------------- fixtures
def _write_label(path, label, mode="P"):
    label = np.asarray(label, np.uint8)
    if mode == "P":
        im = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
        im.putpalette([c for rgb in voc_palette() for c in rgb])
    elif mode == "L":
        im = Image.fromarray(label)
    else:  # colour-coded label, as some tools export it
        im = Image.fromarray(np.stack([label] * 3, -1))
    im.save(path)


def make_voc(root, samples, splits, image_suffix=".png"):
    """Write a VOC-layout dataset: samples is {id: (image uint8 HxWx3, label HxW)}, splits {name: [ids]}."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for sid, (image, label) in samples.items():
        Image.fromarray(np.asarray(image, np.uint8)).save(root / "JPEGImages" / f"{sid}{image_suffix}")
        if label is not None:
            _write_label(root / "SegmentationClass" / f"{sid}.png", label)
    for name, ids in splits.items():
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


@pytest.fixture
def two_images(tmp_path):
    """2 train images (4x6) with hand-counted labels and 1 val image, 8 synthetic classes."""
    a_img = np.zeros((4, 6, 3), np.uint8)
    a_img[:, :, 0] = 255  # red, so the image content can be checked
    a_lab = np.array([[0, 0, 0, 1, 1, 255],
                      [0, 0, 0, 1, 1, 255],
                      [2, 2, 2, 2, 7, 7],
                      [2, 2, 2, 2, 7, 7]])  # 0:6 1:4 2:8 7:4 void:2
    b_img = np.full((4, 6, 3), 128, np.uint8)
    b_lab = np.array([[0] * 6, [0] * 6, [3] * 6, [3, 3, 3, 255, 255, 255]])  # 0:12 3:9 void:3
    v_lab = np.full((4, 6), 5)
    root = make_voc(tmp_path / "voc", {"a": (a_img, a_lab), "b": (b_img, b_lab), "v": (b_img, v_lab)},
                    {"train": ["a", "b"], "val": ["v"]})
    return root


def _prepare(root, tmp_path, splits=("train", "val")):
    return prepare_dataset("synthetic", root, list(splits), manifest_path=tmp_path / "out" / "manifest.csv",
                           frequencies_path=tmp_path / "out" / "freq.csv")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ reader
def test_reader_returns_tensors_in_convention(two_images):
    ds = VOCSegmentation(two_images, "train", num_classes=8)
    assert len(ds) == 2 and ds.ids == ["a", "b"]
    assert ds.image_path(0).name == "a.png" and ds.label_path(1).name == "b.png"
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 4, 6)
    assert torch.allclose(image[0], torch.ones(4, 6)) and torch.all(image[1:] == 0)
    assert label.dtype == torch.int64 and label.shape == (4, 6)
    assert label[0, 5] == IGNORE_INDEX and label[2, 4] == 7


def test_reader_accepts_jpg_greyscale_labels_and_sbd_lists(tmp_path):
    label = np.array([[0, 1], [15, 255]])
    root = make_voc(tmp_path / "voc", {"x": (np.zeros((2, 2, 3)), None)}, {"train": ["x"]}, image_suffix=".jpg")
    _write_label(root / "SegmentationClass" / "x.png", label, mode="L")
    _, lab = get_dataset("voc", root, "train")[0]
    assert lab.tolist() == label.tolist()
    # SBD-style list: image and label paths per line, labels in another folder
    (root / "SegmentationClassAug").mkdir()
    _write_label(root / "SegmentationClassAug" / "x.png", label)
    (root / "aug.txt").write_text("/JPEGImages/x.jpg /SegmentationClassAug/x.png\n")
    ds = get_dataset("voc", root, "train_aug", list_file="aug.txt")
    assert ds.ids == ["x"] and ds.label_path(0).parent.name == "SegmentationClassAug"


def test_error_missing_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nowhere: dataset root not found"):
        VOCSegmentation(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="generate it first"):
        get_dataset("synthetic", tmp_path / "nowhere", "train")


def test_error_missing_split_lists_existing_ones(two_images):
    with pytest.raises(DatasetNotFoundError, match=r"test\.txt: split list .*existing splits: train, val"):
        VOCSegmentation(two_images, "test")


def test_error_empty_split_list(two_images):
    (two_images / "ImageSets" / "Segmentation" / "empty.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"empty\.txt: split list is empty"):
        VOCSegmentation(two_images, "empty")


def test_error_missing_image_and_label(two_images):
    (two_images / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"SegmentationClass/b\.png: label of sample 'b' not found"):
        VOCSegmentation(two_images, "train")
    (two_images / "JPEGImages" / "v.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"JPEGImages/v\.jpg: image of sample 'v' not found"):
        VOCSegmentation(two_images, "val")


def test_error_rgb_label(two_images):
    _write_label(two_images / "SegmentationClass" / "a.png", np.zeros((4, 6)), mode="RGB")
    ds = VOCSegmentation(two_images, "train")
    with pytest.raises(DatasetError, match=r"a\.png: label image is RGB .*expected palette indices"):
        ds[0]


def test_error_label_size_mismatch(two_images, tmp_path):
    _write_label(two_images / "SegmentationClass" / "b.png", np.zeros((5, 6)))
    ds = VOCSegmentation(two_images, "train")
    with pytest.raises(DatasetError, match=r"b\.png: size 6x5 does not match image size 6x4"):
        ds[1]
    with pytest.raises(DatasetError, match=r"SegmentationClass/b\.png: size 6x5 does not match image size 6x4"):
        _prepare(two_images, tmp_path)
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_error_label_value_out_of_range(two_images, tmp_path):
    bad = np.zeros((4, 6))
    bad[1, 2] = 37
    _write_label(two_images / "SegmentationClass" / "v.png", bad)
    ds = get_dataset("synthetic", two_images, "val")  # num_classes=8 from the registry
    with pytest.raises(DatasetError, match=r"v\.png: label value 37 out of range.*expected 0\.\.7 or 255"):
        ds[0]
    assert get_dataset("synthetic", two_images, "val", num_classes=None)[0][1].max() == 37  # check off
    with pytest.raises(DatasetError, match=r"SegmentationClass/v\.png: label value 37 out of range"):
        _prepare(two_images, tmp_path)


# ----------------------------------------------------------------- prepare
def test_prepare_writes_manifest_and_train_frequencies(two_images, tmp_path):
    summary = _prepare(two_images, tmp_path)
    manifest = _rows(tmp_path / "out" / "manifest.csv")
    assert list(manifest[0]) == ["split", "id", "image", "label", "height", "width", "valid_pixels"]
    assert [(r["split"], r["id"], r["image"], r["label"], r["height"], r["width"], r["valid_pixels"])
            for r in manifest] == [
        ("train", "a", "JPEGImages/a.png", "SegmentationClass/a.png", "4", "6", "22"),
        ("train", "b", "JPEGImages/b.png", "SegmentationClass/b.png", "4", "6", "21"),
        ("val", "v", "JPEGImages/v.png", "SegmentationClass/v.png", "4", "6", "24"),
    ]
    freq = _rows(tmp_path / "out" / "freq.csv")
    assert list(freq[0]) == ["class_id", "class_name", "pixels", "fraction"]
    assert [r["class_name"] for r in freq] == list(dataset_info("synthetic").classes)
    # counted over train only (the val image is all class 5): 43 valid pixels
    expected = [18, 4, 8, 9, 0, 0, 0, 4]
    assert [int(r["pixels"]) for r in freq] == expected
    assert [float(r["fraction"]) for r in freq] == pytest.approx([p / 43 for p in expected], abs=1e-6)
    assert summary["samples"] == {"train": 2, "val": 1} and summary["class_pixels"] == expected


def test_prepare_unknown_dataset_and_split(two_images, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'kitti'.*synthetic.*voc"):
        prepare_dataset("kitti", two_images, ["train"], manifest_path=tmp_path / "m", frequencies_path=tmp_path / "f")
    with pytest.raises(DatasetNotFoundError, match="existing splits: train, val"):
        _prepare(two_images, tmp_path, splits=("train", "trainval"))


# ---------------------------------------------------------------- registry
def test_registry():
    assert {"synthetic", "voc"} <= set(DATASETS)
    voc = dataset_info("voc")
    assert voc.num_classes == 21 and voc.classes[0] == "background" and voc.classes == VOC_CLASSES
    assert voc.palette[1] == (128, 0, 0) and voc.palette[15] == (192, 128, 128)
    syn = dataset_info("synthetic")
    assert syn.num_classes == 8 and len(syn.palette) == 8 and len(set(syn.palette)) == 8
    with pytest.raises(ValueError, match="unknown dataset 'nope'; expected one of: .*synthetic, voc"):
        dataset_info("nope")


def test_voc_palette():
    pal = voc_palette()
    assert len(pal) == 256 and pal[0] == (0, 0, 0) and pal[255] == (224, 224, 192)
    assert pal[7] == (128, 128, 128) and pal[20] == (0, 64, 128)


# -------------------------------------------------------------- transforms
def _pattern(h=6, w=8):
    label = torch.arange(h * w).reshape(h, w) % 7
    image = torch.stack([label.float() / 10, torch.zeros(h, w), torch.ones(h, w)])
    return image, label


def test_flip_keeps_image_and_label_aligned():
    image, label = _pattern()
    out_img, out_lab = RandomHorizontalFlip(1.0)(image, label)
    assert torch.equal(out_lab, label.flip(-1)) and not torch.equal(out_lab, label)
    assert torch.equal(out_img[0] * 10, out_lab.float())
    same_img, same_lab = RandomHorizontalFlip(0.0)(image, label)
    assert torch.equal(same_lab, label) and torch.equal(same_img, image)


def test_scale_crop_alignment_and_padding():
    image, label = _pattern(4, 4)
    # scale 2 exactly: the nearest-resized label is each pixel repeated 2x2
    t = RandomScaleCrop((2.0, 2.0), 8, generator=torch.Generator().manual_seed(0))
    img2, lab2 = t(image, label)
    assert torch.equal(lab2, label.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert lab2.dtype == torch.int64 and img2.shape == (3, 8, 8)
    # crop bigger than the image: padded with 0 (image) and 255 (label) at bottom/right
    img3, lab3 = RandomScaleCrop((1.0, 1.0), (6, 5))(image, label)
    assert torch.equal(lab3[:4, :4], label) and torch.all(lab3[4:] == IGNORE_INDEX) and torch.all(lab3[:, 4] == 255)
    assert torch.equal(img3[:, :4, :4], image) and torch.all(img3[:, 4:] == 0)
    # a random crop at scale 1 is a window of both, at the same place
    img4, lab4 = RandomScaleCrop((1.0, 1.0), (3, 3), generator=torch.Generator().manual_seed(5))(*_pattern(6, 8))
    assert torch.allclose(img4[0] * 10, lab4.float())


def test_transforms_reproducible_with_generator():
    image, label = _pattern(8, 8)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        t = Compose([RandomHorizontalFlip(0.5, generator=g), RandomScaleCrop((0.5, 1.5), 6, generator=g)])
        return [t(image, label)[1] for _ in range(6)]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_transform_in_reader(two_images):
    ds = VOCSegmentation(two_images, "train", transform=RandomHorizontalFlip(1.0))
    _, label = ds[0]
    assert label[0, 0] == IGNORE_INDEX and label[2, 0] == 7


# ------------------------------------------------------------- reader base
def test_reader_base_gives_a_subclass_everything_but_layout_and_mapping(two_images):
    """A reader that only lists its files and maps its ids gets loading, checks, transform and repr."""
    from eroseg.data.reader import SegmentationReader

    class Shifted(SegmentationReader):  # stores class id + 1, 0 for void, as ADE20K does
        def __init__(self, root, **kwargs):
            super().__init__(root, "train", **kwargs)
            for sid in ("a", "b"):
                self._add(sid, self.root / "JPEGImages" / f"{sid}.png", self.root / f"{sid}_shifted.png")

        def load_label(self, index):
            raw = self._read_label(index).astype(np.int64)
            return np.where(raw == 0, IGNORE_INDEX, raw - 1)

    stored = np.array([[1, 1, 0, 3, 3, 3]] * 4)  # classes 0 and 2, void in column 2
    for sid in ("a", "b"):
        _write_label(two_images / f"{sid}_shifted.png", stored, mode="L")
    ds = Shifted(two_images, num_classes=3)
    assert len(ds) == 2 and ds.ids == ["a", "b"] and ds.label_path(1) == two_images / "b_shifted.png"
    assert repr(ds) == f"Shifted(root={str(two_images)!r}, split='train', n=2)"
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 4, 6) and float(image[0].min()) == 1.0
    assert label.dtype == torch.int64 and label[0].tolist() == [0, 0, IGNORE_INDEX, 2, 2, 2]
    with pytest.raises(DatasetError, match=r"b_shifted\.png: label value 2 out of range"):
        Shifted(two_images, num_classes=2)[1]  # the mapped ids are checked against num_classes
    flipped = Shifted(two_images, transform=RandomHorizontalFlip(1.0))[0][1]
    assert flipped[0].tolist() == [2, 2, 2, IGNORE_INDEX, 0, 0]


# ---------------------------------------------------------------- split lists of a generated dataset
@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """A small generated synthetic dataset (4 train, 2 val images of 32x32)."""
    return generate_synthetic(tmp_path_factory.mktemp("syn") / "syn", n_train=4, n_val=2, height=32, width=32,
                              seed=0)


def test_duplicate_ids_in_a_split_list_are_refused(synthetic_root):
    root = synthetic_root
    lst = root / "ImageSets" / "Segmentation" / "val.txt"
    text = lst.read_text()
    first = text.split()[0]
    lst.write_text(text + first + "\n")
    try:
        with pytest.raises(DatasetError, match=rf"val\.txt: sample id '{first}' is listed twice"):
            get_dataset("synthetic", root, "val")
    finally:
        lst.write_text(text)
