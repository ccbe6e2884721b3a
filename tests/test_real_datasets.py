"""Real-dataset readers (VOC 2012 + SBD, Cityscapes, ADE20K), their configs and the workflow on them.

The datasets cannot be downloaded here, so each test writes a tiny tree in
the dataset's real layout (file names, folder nesting, label encoding) and
checks the readers, ``prepare_dataset`` and a Snakemake dry run of each
shipped config pointed at that tree.
"""

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from eroseg.data import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    DATASETS,
    IGNORE_INDEX,
    VOC_CLASSES,
    DatasetError,
    DatasetNotFoundError,
    dataset_info,
    get_dataset,
    prepare_dataset,
    voc_palette,
)
from eroseg.data.cityscapes import CITYSCAPES_LABEL_TO_TRAIN
from eroseg.data.splits import choose_tune_ids
from tests.conftest import ROOT, snakemake_cmd, snakemake_env

H, W = 32, 64  # fixture image size (every image of a tree has the same size, so batches can stack)


# ------------------------------------------------------------------ writers
def _image(rng, path, h=H, w=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _label(path, values, mode="L", h=H, w=W):
    """Write a label PNG whose pixels cycle through ``values`` in horizontal bands (every value present)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = np.resize(np.asarray(values, np.uint8), h)
    arr = np.repeat(rows[:, None], w, axis=1)
    if mode == "P":
        im = Image.frombytes("P", (w, h), arr.tobytes())
        im.putpalette([c for rgb in voc_palette() for c in rgb])
    else:
        im = Image.fromarray(arr, mode="L")
    im.save(path)
    return arr


#: labelIds used in the Cityscapes fixture: void ids (0 unlabeled, 1 ego vehicle, 4 static), non-evaluated
#: classes (9 parking, 29 caravan), several train classes, and 255 (the license plate's -1 as a byte).
CS_IDS = [0, 1, 4, 7, 8, 9, 11, 23, 24, 26, 29, 33, 255]
CS_TRAIN = {0: 255, 1: 255, 4: 255, 7: 0, 8: 1, 9: 255, 11: 2, 23: 10, 24: 11, 26: 13, 29: 255, 33: 18, 255: 255}
CS_CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt", "lindau"]}


def make_cityscapes(root: Path, per_city: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split, cities in CS_CITIES.items():
        for city in cities:
            for k in range(per_city):
                name = f"{city}_{k:06d}_000019"
                _image(rng, root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
                _label(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", np.roll(CS_IDS, k))
                # The other gtFine files sit next to the labelIds; the reader must ignore them.
                _label(root / "gtFine" / split / city / f"{name}_gtFine_labelTrainIds.png", [0])
                (root / "gtFine" / split / city / f"{name}_gtFine_polygons.json").write_text("{}")
    return root


def make_ade20k(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(1)
    for folder, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for k in range(1, n + 1):
            stem = f"{prefix}_{k:08d}"
            _image(rng, root / "images" / folder / f"{stem}.jpg")
            _label(root / "annotations" / folder / f"{stem}.png", [0, 1, 2, 75, 150])
    return root


def make_voc(root: Path) -> Path:
    """VOC 2012 with palette labels, plus SBD's SegmentationClassAug and a two-column train_aug list."""
    rng = np.random.default_rng(2)
    voc_ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2007_000042"]}
    sbd_ids = ["2008_000002", "2008_000003"]
    for ids in voc_ids.values():
        for i in ids:
            _image(rng, root / "JPEGImages" / f"{i}.jpg")
            _label(root / "SegmentationClass" / f"{i}.png", [0, 15, 255, 1], mode="P")
    for i in sbd_ids:
        _image(rng, root / "JPEGImages" / f"{i}.jpg")
    for i in voc_ids["train"] + sbd_ids:  # SBD labels are greyscale class-index PNGs
        _label(root / "SegmentationClassAug" / f"{i}.png", [0, 7, 20, 255])
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, ids in voc_ids.items():
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (lists / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in voc_ids["train"] + sbd_ids)
    )
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("real")
    return {
        "voc": make_voc(base / "VOCdevkit" / "VOC2012"),
        "cityscapes": make_cityscapes(base / "cityscapes"),
        "ade20k": make_ade20k(base / "ADEChallengeData2016"),
    }


def _copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -------------------------------------------------------------- class tables
def test_registry_has_real_datasets():
    assert {"voc", "cityscapes", "ade20k"} <= set(DATASETS)
    assert dataset_info("cityscapes").num_classes == 19
    assert dataset_info("ade20k").num_classes == 150
    assert dataset_info("voc").num_classes == len(VOC_CLASSES) == 21


def test_cityscapes_tables():
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[-1] == "bicycle" and len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_PALETTE[0] == (128, 64, 128) and CITYSCAPES_PALETTE[13] == (0, 0, 142)  # road, car
    assert len(set(CITYSCAPES_PALETTE)) == 19
    assert sorted(CITYSCAPES_LABEL_TO_TRAIN) == list(range(-1, 34))
    train_ids = [v for v in CITYSCAPES_LABEL_TO_TRAIN.values() if v != IGNORE_INDEX]
    assert sorted(train_ids) == list(range(19))  # each train id from exactly one label id
    assert CITYSCAPES_LABEL_TO_TRAIN[-1] == IGNORE_INDEX  # license plate
    assert CITYSCAPES_LABEL_TO_TRAIN[7] == 0 and CITYSCAPES_LABEL_TO_TRAIN[33] == 18


def test_ade20k_tables():
    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:5] == ("wall", "building", "sky", "floor", "tree") and ADE20K_CLASSES[-1] == "flag"
    assert len(ADE20K_PALETTE) == len(set(ADE20K_PALETTE)) == 150
    from eroseg.data.ade20k import ade20k_palette

    assert tuple(ade20k_palette()) == ADE20K_PALETTE  # deterministic
    a = np.array(ADE20K_PALETTE, float)
    d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1)) + np.eye(150) * 1e9
    assert d.min() > 30  # clearly different colours, not just different tuples


# ----------------------------------------------------------------- readers
def _check_sample(ds, i):
    image, label = ds[i]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, H, W)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert label.dtype == torch.int64 and tuple(label.shape) == (H, W)
    arr = ds.load_label(i)
    assert arr.dtype == np.int64 and np.array_equal(arr, label.numpy())
    return arr


def test_cityscapes_reader(trees):
    ds = get_dataset("cityscapes", trees["cityscapes"], "train")
    assert len(ds) == 4
    assert ds.ids == ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000019", "bochum_000001_000019"]
    assert ds.image_path(2).parent.name == "bochum" and ds.image_path(2).name.endswith("_leftImg8bit.png")
    assert ds.label_path(2).name == "bochum_000000_000019_gtFine_labelIds.png"
    with Image.open(ds.label_path(0)) as im:
        raw = np.array(im, np.int64)
    lab = _check_sample(ds, 0)
    expected = np.vectorize(CS_TRAIN.get)(raw)
    assert np.array_equal(lab, expected)
    assert set(np.unique(lab)) == {0, 1, 2, 10, 11, 13, 18, 255}
    assert set(np.unique(raw)) == set(CS_IDS)  # the fixture covers void ids, non-train ids and license plate
    assert len(get_dataset("cityscapes", trees["cityscapes"], "val")) == 4


def test_ade20k_reader(trees):
    ds = get_dataset("ade20k", trees["ade20k"], "train")
    assert len(ds) == 4 and ds.ids[0] == "ADE_train_00000001"
    with Image.open(ds.label_path(0)) as im:
        raw = np.array(im, np.int64)
    lab = _check_sample(ds, 0)
    assert set(np.unique(raw)) == {0, 1, 2, 75, 150}
    assert np.array_equal(lab, np.where(raw == 0, 255, raw - 1))
    assert set(np.unique(lab)) == {0, 1, 74, 149, 255}
    val = get_dataset("ade20k", trees["ade20k"], "val")
    assert val.ids[0] == "ADE_val_00000001" and "validation" in val.image_path(0).parts
    assert get_dataset("ade20k", trees["ade20k"], "validation").ids == val.ids


def test_voc_reader_palette_and_sbd_list(trees):
    ds = get_dataset("voc", trees["voc"], "train")
    lab = _check_sample(ds, 0)
    with Image.open(ds.label_path(0)) as im:
        assert im.mode == "P"
    assert set(np.unique(lab)) == {0, 1, 15, 255}
    aug = get_dataset("voc", trees["voc"], "train_aug")
    assert aug.ids == ["2007_000032", "2007_000039", "2008_000002", "2008_000003"]
    assert aug.label_path(3).parent.name == "SegmentationClassAug"
    assert set(np.unique(_check_sample(aug, 3))) == {0, 7, 20, 255}


# ------------------------------------------------------------------ errors
def test_cityscapes_missing_split(trees):
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("cityscapes", trees["cityscapes"], "test")
    msg = str(err.value)
    assert str(trees["cityscapes"] / "leftImg8bit" / "test") in msg
    assert "gtFine/<split>/<city>/<name>_gtFine_labelIds.png" in msg and "train, val" in msg


def test_cityscapes_missing_label(trees, tmp_path):
    root = _copy_tree(trees["cityscapes"], tmp_path / "cs")
    missing = root / "gtFine" / "val" / "lindau" / "lindau_000001_000019_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("cityscapes", root, "val")
    assert str(missing) in str(err.value) and "leftImg8bit/<split>/<city>" in str(err.value)


def test_cityscapes_rejects_non_label_ids(trees, tmp_path):
    root = _copy_tree(trees["cityscapes"], tmp_path / "cs")
    bad = root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    _label(bad, [7, 40])  # 40 is not a label id (e.g. a wrong file)
    ds = get_dataset("cityscapes", root, "train")
    with pytest.raises(DatasetError, match="value 40 is not a Cityscapes label id") as err:
        ds.load_label(0)
    assert str(bad) in str(err.value)


def test_ade20k_missing_split_and_annotation(trees, tmp_path):
    root = _copy_tree(trees["ade20k"], tmp_path / "ade")
    (root / "images" / "validation").rename(root / "images" / "val")  # a wrongly named folder
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("ade20k", root, "val")
    assert str(root / "images" / "validation") in str(err.value) and "annotations/" in str(err.value)
    missing = root / "annotations" / "training" / "ADE_train_00000003.png"
    missing.unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("ade20k", root, "train")
    assert str(missing) in str(err.value) and "ADE_train_00000003.jpg" in str(err.value)
    with pytest.raises(DatasetError, match="no split 'test'"):
        get_dataset("ade20k", root, "test")


def test_ade20k_rejects_values_above_150(trees, tmp_path):
    root = _copy_tree(trees["ade20k"], tmp_path / "ade")
    bad = root / "annotations" / "training" / "ADE_train_00000001.png"
    _label(bad, [0, 151])
    with pytest.raises(DatasetError, match="annotation value 151") as err:
        get_dataset("ade20k", root, "train")[0]
    assert str(bad) in str(err.value)


def test_voc_missing_split_and_label(trees, tmp_path):
    root = _copy_tree(trees["voc"], tmp_path / "voc")
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("voc", root, "trainval")
    assert str(root / "ImageSets" / "Segmentation" / "trainval.txt") in str(err.value)
    missing = root / "SegmentationClassAug" / "2008_000003.png"
    missing.unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("voc", root, "train_aug")
    assert str(missing) in str(err.value) and "train_aug.txt" in str(err.value)


def test_missing_roots_name_the_layout(tmp_path):
    for name, hint in (("cityscapes", "leftImg8bit"), ("ade20k", "ADEChallengeData2016"), ("voc", "JPEGImages")):
        with pytest.raises(DatasetNotFoundError) as err:
            get_dataset(name, tmp_path / "nowhere", "train")
        assert str(tmp_path / "nowhere") in str(err.value) and hint in str(err.value)



@pytest.mark.parametrize(("name", "inner"), [
    ("voc", "VOCdevkit/VOC2012"), ("cityscapes", "cityscapes"), ("ade20k", "ADEChallengeData2016")])
def test_root_one_or_two_folders_too_high_suggests_the_folder_with_the_layout(trees, tmp_path, name, inner):
    # The user points at the download folder instead of the dataset's own root.
    tree = _copy_tree(trees[name], tmp_path / "downloads" / inner)
    high = tmp_path / "downloads"
    for root in (high, tree.parent) if inner.count("/") else (high,):
        with pytest.raises(DatasetNotFoundError) as err:
            get_dataset(name, root, "train")
        message = str(err.value)
        assert f"Did you mean {tree}?" in message, message
        assert "dataset.root" in message


@pytest.mark.parametrize(("name", "inner", "sub"), [
    ("voc", "VOC2012", "JPEGImages"), ("cityscapes", "cityscapes", "leftImg8bit"),
    ("ade20k", "ADEChallengeData2016", "images")])
def test_root_one_folder_too_low_suggests_its_parent(trees, tmp_path, name, inner, sub):
    tree = _copy_tree(trees[name], tmp_path / inner)
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset(name, tree / sub, "train")
    assert f"Did you mean {tree}?" in str(err.value), str(err.value)


def test_no_suggestion_when_nothing_near_holds_the_layout(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for name in ("voc", "cityscapes", "ade20k"):
        with pytest.raises(DatasetNotFoundError) as err:
            get_dataset(name, tmp_path / "empty", "train")
        assert "Did you mean" not in str(err.value)


def test_missing_sbd_list_names_the_sbd_step_and_train_split_train(trees, tmp_path):
    root = _copy_tree(trees["voc"], tmp_path / "VOC2012")
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("voc", root, "train_aug")
    message = str(err.value)
    assert str(root / "ImageSets" / "Segmentation" / "train_aug.txt") in message
    assert "SBD" in message and "SegmentationClassAug" in message and "dataset.train_split: train" in message
    assert "existing splits: train, val" in message


def test_missing_sbd_labels_name_the_sbd_step(trees, tmp_path):
    root = _copy_tree(trees["voc"], tmp_path / "VOC2012")
    shutil.rmtree(root / "SegmentationClassAug")
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("voc", root, "train_aug")
    message = str(err.value)
    assert str(root / "SegmentationClassAug") in message
    assert "SBD" in message and "dataset.train_split: train" in message
    # a plain missing VOC split gets no SBD advice
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset("voc", root, "trainval")
    assert "SBD" not in str(err.value)


# ----------------------------------------------------------------- prepare
@pytest.mark.parametrize("name,splits,n", [
    ("voc", ["train_aug", "val"], {"train_aug": 4, "val": 2}),
    ("cityscapes", ["train", "val"], {"train": 4, "val": 4}),
    ("ade20k", ["train", "val"], {"train": 4, "val": 4}),
])
def test_prepare_dataset(trees, tmp_path, name, splits, n):
    manifest, freqs = tmp_path / "manifest.csv", tmp_path / "freq.csv"
    summary = prepare_dataset(name, trees[name], splits, manifest_path=manifest, frequencies_path=freqs)
    assert summary["samples"] == n
    rows = list(csv.DictReader(manifest.open()))
    assert len(rows) == sum(n.values())
    assert all(int(r["height"]) == H and int(r["width"]) == W for r in rows)
    assert not any(os.path.isabs(r["image"]) for r in rows)  # relative to the root
    freq = list(csv.DictReader(freqs.open()))
    assert len(freq) == dataset_info(name).num_classes
    assert sum(float(r["fraction"]) for r in freq) == pytest.approx(1.0, abs=1e-4)
    if name == "cityscapes":
        assert int(freq[0]["pixels"]) > 0 and int(freq[3]["pixels"]) == 0  # road present, wall absent
    if name == "ade20k":
        assert int(freq[149]["pixels"]) > 0 and freq[149]["class_name"] == "flag"


# ------------------------------------------------------------- the tune list
TRAIN_SPLITS = {"voc": "train_aug", "cityscapes": "train", "ade20k": "train"}


def _prepare_with_tune(name, root, out: Path, size=2, seed=0) -> tuple[dict[str, list[str]], Path]:
    """prepare_dataset with a tune list of ``size`` images carved from the training split; ids per manifest split."""
    lists = out / "splits"
    prepare_dataset(name, root, [TRAIN_SPLITS[name], "tune", "val"], manifest_path=out / "manifest.csv",
                    frequencies_path=out / "freq.csv", tune={"source": TRAIN_SPLITS[name], "size": size, "seed": seed},
                    split_lists=lists)
    ids: dict[str, list[str]] = {}
    for row in csv.DictReader((out / "manifest.csv").open()):
        ids.setdefault(row["split"], []).append(row["id"])
    return ids, lists


@pytest.mark.parametrize("name", sorted(TRAIN_SPLITS))
def test_tune_list_is_carved_from_training_and_never_reaches_it(trees, tmp_path, name):
    train = TRAIN_SPLITS[name]
    everything = get_dataset(name, trees[name], train).ids
    ids, lists = _prepare_with_tune(name, trees[name], tmp_path)
    assert len(ids["tune"]) == 2 and not set(ids["tune"]) & set(ids[train])
    assert sorted(ids["tune"] + ids[train]) == sorted(everything)  # taken out of training, nothing lost
    assert (tmp_path / "splits" / "tune.csv").is_file()  # beside the manifest
    # What a training job and a tuning job read, given the same folder of lists:
    assert get_dataset(name, trees[name], train, split_lists=lists).ids == ids[train]
    tune = get_dataset(name, trees[name], "tune", split_lists=lists)
    assert tune.ids == ids["tune"] and tune.split == "tune"
    image, label = tune[0]
    assert image.shape[-2:] == label.shape == (H, W)
    assert get_dataset(name, trees[name], "val", split_lists=lists).ids == get_dataset(name, trees[name], "val").ids


def test_tune_list_does_not_depend_on_listing_order(trees, tmp_path, monkeypatch):
    first, _ = _prepare_with_tune("cityscapes", trees["cityscapes"], tmp_path / "a", seed=3)
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: list(reversed(real_listdir(path))))
    again, _ = _prepare_with_tune("cityscapes", trees["cityscapes"], tmp_path / "b", seed=3)
    assert again["tune"] == first["tune"]
    monkeypatch.undo()
    voc = _copy_tree(trees["voc"], tmp_path / "voc")  # the train_aug list in reverse order
    listing = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    listing.write_text("".join(reversed(listing.read_text().splitlines(keepends=True))))
    assert (_prepare_with_tune("voc", voc, tmp_path / "c", seed=3)[0]["tune"]
            == _prepare_with_tune("voc", trees["voc"], tmp_path / "d", seed=3)[0]["tune"])


def test_tune_choice_is_seeded_and_order_free():
    ids = [f"img_{k:04d}" for k in range(200)]
    chosen = choose_tune_ids(ids, 20, seed=0)
    assert chosen == choose_tune_ids(list(reversed(ids)), 20, seed=0) == sorted(chosen)
    assert chosen != choose_tune_ids(ids, 20, seed=1)
    with pytest.raises(ValueError, match=r"dataset.tune_size: 200; expected an integer from 1 to 199"):
        choose_tune_ids(ids, 200, seed=0)


def test_tune_split_without_its_list_or_from_another_root_is_refused(trees, tmp_path):
    _, lists = _prepare_with_tune("ade20k", trees["ade20k"], tmp_path)
    with pytest.raises(DatasetError, match="no split 'tune'"):
        get_dataset("ade20k", trees["ade20k"], "tune")
    (lists / "tune.csv").write_text("id,source_split\nADE_train_99999999,train\n")
    with pytest.raises(DatasetError, match=r"ids not in split 'train' \(first: 'ADE_train_99999999'\)"):
        get_dataset("ade20k", trees["ade20k"], "tune", split_lists=lists)


def test_cli_prepare_carves_the_list_and_the_jobs_read_it(trees, tmp_path, monkeypatch):
    """eroseg prepare --tune-from/--tune-size/--split-lists writes the list; train, evaluate and attack given
    --split-lists read tune from it and the training split without it."""
    from eroseg import cli

    name, root, lists = "cityscapes", trees["cityscapes"], tmp_path / "splits"
    assert cli.main(["prepare", "--dataset", name, "--root", str(root), "--splits", "train", "tune", "val",
                     "--manifest", str(tmp_path / "manifest.csv"), "--frequencies", str(tmp_path / "freq.csv"),
                     "--tune-from", "train", "--tune-size", "2", "--tune-seed", "1", "--split-lists", str(lists),
                     "--quiet"]) == 0
    carved = [row["id"] for row in csv.DictReader((lists / "tune.csv").open())]
    assert carved == choose_tune_ids(get_dataset(name, root, "train").ids, 2, seed=1)
    seen = {}

    def fake_training_job(**kwargs):  # what the training job's readers see (it passes split_lists to both)
        lists = {"split_lists": kwargs["split_lists"]}
        seen["train"] = get_dataset(kwargs["dataset"], kwargs["root"], kwargs["train_split"], **lists).ids
        seen["val"] = get_dataset(kwargs["dataset"], kwargs["root"], kwargs["val_split"], **lists).ids

    monkeypatch.setattr("eroseg.training.run_training_job", fake_training_job)
    assert cli.main(["train", "--dataset", name, "--root", str(root), "--train-split", "train", "--val-split", "tune",
                     "--split-lists", str(lists), "--out", str(tmp_path / "m.pt"), "--log", str(tmp_path / "l.csv"),
                     "--quiet"]) == 0
    assert seen["val"] == carved and not set(carved) & set(seen["train"]) and seen["train"]
    assert get_dataset(name, root, "train").ids != seen["train"]  # outside the command, nothing is carved
    args = cli.build_parser().parse_args(["evaluate", "--checkpoint", "m.pt", "--dataset", name, "--root", str(root),
                                          "--split", "tune", "--split-lists", str(lists), "--out", "x.json"])
    assert cli._dataset(args.dataset, args.root, args.split, args.split_lists).ids == carved


def test_cli_prepare_tune_options_go_together(trees, tmp_path):
    from eroseg import cli

    base = ["prepare", "--dataset", "ade20k", "--root", str(trees["ade20k"]), "--splits", "train", "val",
            "--manifest", str(tmp_path / "m.csv"), "--frequencies", str(tmp_path / "f.csv")]
    with pytest.raises(ValueError, match="--tune-from and --tune-size go together"):
        cli.cmd_prepare(cli.build_parser().parse_args(base + ["--tune-size", "2"]))
    with pytest.raises(ValueError, match="--tune-size needs --split-lists"):
        cli.cmd_prepare(cli.build_parser().parse_args(base + ["--tune-size", "2", "--tune-from", "train"]))
    assert not (tmp_path / "m.csv").exists()


# ----------------------------------------------------------------- configs
CONFIGS = {"voc": ("voc.yaml", "$VOC_ROOT"), "cityscapes": ("cityscapes.yaml", "$CITYSCAPES_ROOT"),
           "ade20k": ("ade20k.yaml", "$ADE20K_ROOT")}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shipped_config_matches_schema(name):
    from snakemake.utils import validate

    file, env = CONFIGS[name]
    cfg = yaml.safe_load((ROOT / "config" / file).read_text())
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert list(cfg) == list(default)  # same keys as the default config
    assert cfg["dataset"]["name"] == name and cfg["dataset"]["root"] == env and cfg["run"] == name
    assert cfg["model"]["arch"] == "DeepLabV3" and cfg["model"]["encoder"] == "resnet50"
    assert cfg["resources"] == {"threads": 8, "gpus_per_train": 1, "jobs_per_gpu": 1}
    assert cfg["evaluation"]["headline"]["steps"] == 20 and 100 in cfg["evaluation"]["sweep"]["steps"]
    assert cfg["dataset"]["val_split"] == "tune" and cfg["dataset"]["tune_size"] > 0  # choices never on val
    assert cfg["evaluation"]["inference"]["mode"] == ("whole" if name == "voc" else "slide")
    validate(dict(cfg), str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))


def _small_config(name: str, root: Path, workdir: Path) -> Path:
    """The shipped config of ``name`` pointed at ``root``, with a tiny model and sizes."""
    cfg = yaml.safe_load((ROOT / "config" / CONFIGS[name][0]).read_text())
    cfg["dataset"]["root"] = str(root)
    if name == "voc":
        cfg["dataset"]["train_split"] = "train_aug"
    cfg["model"] = {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None,
                    "kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}}
    cfg["train"].update(epochs=1, batch_size=2, crop_size=[32, 32], num_workers=0, checkpoint_every=0,
                        amp=False, val_robust_images=2, val_robust_steps=1)
    cfg["resources"] = {"threads": 1, "gpus_per_train": 1}
    cfg["dataset"]["tune_size"] = 2
    cfg["tuning"] = {"models": ["standard"], "max_images": 2, "steps": 1, "grids": {"pgd": {"step_size": ["eps/4"]}}}
    path = workdir / f"small_{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _snakemake(workdir: Path, configfile: Path, *args: str) -> subprocess.Popen:
    cmd = snakemake_cmd(workdir, *args, "--configfile", str(configfile))
    return subprocess.Popen(cmd, cwd=workdir, env=snakemake_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


SHARDS = 8


@pytest.fixture(scope="module")
def dry_runs(trees, tmp_path_factory) -> dict[str, tuple[int, str, Path]]:
    """One dry run per shipped config: the first alone (it fills the session's Snakefile cache: the
    configs share their attack settings, whose check imports torch), then the others together."""
    names = sorted(CONFIGS)
    results = {}
    for batch in (names[:1], names[1:]):
        procs = {}
        for name in batch:
            wd = tmp_path_factory.mktemp(f"dry_{name}")
            config = _small_config(name, trees[name], wd)
            if name == "cityscapes":  # evaluation sharded over 8 jobs per model (VOC and ADE20K: one job)
                cfg = yaml.safe_load(config.read_text())
                cfg["evaluation"]["shards"] = SHARDS
                config.write_text(yaml.safe_dump(cfg, sort_keys=False))
            procs[name] = (wd, _snakemake(wd, config, "-n", "-p", "--cores", "1"))
        for name, (wd, proc) in procs.items():
            out, _ = proc.communicate(timeout=300)
            results[name] = (proc.returncode, out, wd)
    return results


@pytest.mark.workflow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_workflow_dry_run(dry_runs, trees, name):
    rc, out, wd = dry_runs[name]
    assert rc == 0, f"dry run of {CONFIGS[name][0]} failed:\n{out[-6000:]}"
    assert f"--dataset {name} --root {trees[name]}" in out  # the data is read in place at dataset.root
    for rule in ("prepare", "train", "evaluate", "aggregate", "figures"):
        assert rule in out, rule
    assert "synthesize" not in out
    assert not (wd / "results").exists()  # a dry run writes nothing
    # The choices (per-epoch validation, tuning) read the tune list; only the evaluations read val.
    commands = [line for line in out.splitlines() if " -m eroseg " in line or " train --dataset" in line]
    trains = [c for c in commands if " train --dataset" in c]
    tunes = [c for c in commands if " -m eroseg tune " in c]
    evaluations = [c for c in commands if " -m eroseg evaluate " in c]
    assert trains and tunes and evaluations
    assert all("--val-split tune" in c for c in trains) and all("--split tune" in c for c in tunes)
    assert all("--split val" in c for c in evaluations)
    assert not any("--split val" in c or "--val-split val" in c for c in trains + tunes)
    # prepare carves the list; every job that reads the data gets the folder of lists and waits for the list.
    prepare = [c for c in commands if " -m eroseg prepare " in c]
    assert len(prepare) == 1 and f"--tune-from {TRAIN_SPLITS[name]} --tune-size 2 --tune-seed 0" in prepare[0]
    lists = f"--split-lists results/{name}/data/splits"
    assert lists in prepare[0] and "tune" in prepare[0].split("--splits")[1].split("--manifest")[0]
    assert all(lists in c for c in trains + tunes + evaluations)
    assert f"results/{name}/data/splits/tune.csv" in out
    # Cityscapes and ADE20K evaluate (and tune) with sliding windows, VOC whole.
    slide = [c for c in tunes + evaluations if "--inference '{\"crop\"" in c and '"mode": "slide"' in c]
    assert len(slide) == (0 if name == "voc" else len(tunes + evaluations))


@pytest.mark.workflow
def test_cityscapes_sharded_evaluation_dry_run(dry_runs):
    """config/cityscapes.yaml with evaluation.shards: 8: 8 evaluation jobs per model and one merge each."""
    rc, out, _ = dry_runs["cityscapes"]
    assert rc == 0, out[-6000:]
    cfg = yaml.safe_load((ROOT / "config" / "cityscapes.yaml").read_text())
    models = [(m, s) for m in cfg["methods"] for s in cfg["seeds"]]
    commands = [line for line in out.splitlines() if " -m eroseg evaluate " in line and "--shard " in line]
    merges = [line for line in out.splitlines() if " -m eroseg merge-shards " in line]
    assert len(commands) == SHARDS * len(models) and len(merges) == len(models)
    for method, seed in models:
        folders = [f"results/cityscapes/eval_shards/{method}/seed{seed}/shard{i}of{SHARDS}" for i in range(SHARDS)]
        mine = [c for c in commands if f"--checkpoint results/cityscapes/models/{method}/seed{seed}/model.pt" in c]
        assert sorted(c.split("--shard ")[1].split()[0] for c in mine) == sorted(f"{i}/{SHARDS}" for i in range(SHARDS))
        merge = [c for c in merges if f"--out-dir results/cityscapes/eval/{method}/seed{seed} " in c]
        assert len(merge) == 1 and " ".join(folders) in merge[0]
    assert " -m eroseg evaluate " in out and "--samples " in out  # the samples job stays one job


@pytest.mark.slow  # ~30 s; the dry runs above plan every rule of each real config in the fast tier
@pytest.mark.workflow
def test_cityscapes_end_to_end(trees, tmp_path):
    """The whole chain for real on the Cityscapes fixture: tiny model, 2 epochs, one 1-step attack (~20 s)."""
    cfg_path = _small_config("cityscapes", trees["cityscapes"], tmp_path)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"].update(epochs=2)
    cfg["tuning"] = {"models": [], "grids": {}}
    cfg["methods"] = {"standard": {"attack": None}}
    cfg["evaluation"].update(
        batch_size=4, attacks={"pgd": {"attack": "pgd"}}, headline={"eps": "8/255", "steps": 1},
        main_attacks=["pgd"], worst_case=["pgd"],
        sweep={"method": "standard", "attacks": ["pgd"], "eps": ["8/255"], "steps": [1]},
        ablation={"method": "standard", "variants": {"pgd": "pgd"}},
        samples={"method": "standard", "attack": "pgd", "n": 2},
        sea=None, sea_plus=[], checks=None, claims=None,
    )
    cfg["figures"] = {"dpi": 40}
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = _snakemake(tmp_path, cfg_path, "--cores", "2")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-6000:]
    res = tmp_path / "results" / "cityscapes"
    clean = json.loads((res / "eval" / "standard" / "seed0" / "clean.json").read_text())
    assert len(clean["per_class_iou"]) == 19 and clean["num_images"] == 4
    assert (res / "tables" / "main.csv").is_file() and (res / "figures" / "qualitative.png").is_file()
