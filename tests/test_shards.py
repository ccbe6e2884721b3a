"""Shards of one evaluation (eroseg.shards): disjoint covering ranges, and merged records equal to one job's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eroseg.attacks import create_attack
from eroseg.evaluate import EvalRecord, evaluate
from eroseg.shards import (
    merge_record_files,
    merge_records,
    merge_shard_folders,
    parse_shard,
    shard_batch_offset,
    shard_range,
    shard_subset,
)
from tests.conftest import TOY_CLASSES, ToyNet, toy_batch


@pytest.mark.parametrize("num_images, shards, batch_size", [(10, 3, 1), (32, 8, 4), (7, 3, 2), (3, 5, 1), (0, 2, 4)])
def test_shard_ranges_are_disjoint_cover_in_order_and_start_on_batches(num_images, shards, batch_size):
    ranges = [shard_range(num_images, shards, i, batch_size) for i in range(shards)]
    assert [i for r in ranges for i in r] == list(range(num_images))
    for i, r in enumerate(ranges):
        assert r.start % batch_size == 0
        assert r.start == min(shard_batch_offset(num_images, shards, i, batch_size) * batch_size, num_images)
    sizes = [-(-len(r) // batch_size) for r in ranges]  # batches per shard
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("args, match", [((10, 0, 0), "shards must be"), ((10, 3, 3), r"shard index .*\[0, 3\)"),
                                         ((-1, 3, 0), "num_images"), ((10, 3, 0, 0), "batch_size")])
def test_bad_shard_arguments_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        shard_range(*args)


def _record(result: dict, setting: str) -> EvalRecord:
    return EvalRecord(method="toy", seed=0, setting=setting, attack=setting, attack_params={}, split="test",
                      checkpoint="toy.pt", classes=None, per_image=result["per_image"],
                      components=result["components"], seconds=result["seconds"], **result["metrics"])


@pytest.fixture(scope="module")
def toy_setup():
    torch.manual_seed(0)
    model = ToyNet().eval()
    images, labels = toy_batch(12, seed=3)
    return model, torch.utils.data.TensorDataset(images, labels)


@pytest.mark.parametrize("setting", ["clean", "pgd", "sea"])
def test_merged_shards_equal_the_one_job_record(toy_setup, tmp_path, setting):
    model, dataset = toy_setup
    attack = {"clean": None, "pgd": create_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=3),
              "sea": create_attack("sea", eps=8 / 255, steps=4)}[setting]
    options = dict(batch_size=2, seed=5, components=setting == "sea", num_workers=0)
    whole = _record(evaluate(model, dataset, TOY_CLASSES, attack=attack, **options), setting)
    paths = []
    for index in range(3):
        images, offset = shard_subset(dataset, (index, 3), batch_size=2)
        assert offset == shard_batch_offset(len(dataset), 3, index, 2)
        result = evaluate(model, images, TOY_CLASSES, attack=attack, batch_offset=offset, **options)
        paths.append(tmp_path / f"shard{index}.json")
        _record(result, setting).write(paths[-1])
    merged = merge_record_files(paths, tmp_path / "merged.json")
    assert EvalRecord.read(tmp_path / "merged.json").to_json() == merged.to_json()
    for field in ("tp", "pred", "label"):
        np.testing.assert_array_equal(getattr(merged.per_image, field), getattr(whole.per_image, field))
    assert (merged.miou, merged.pixel_acc, merged.per_class_iou) == (whole.miou, whole.pixel_acc, whole.per_class_iou)
    assert sorted(merged.components) == sorted(whole.components) == (
        ["balanced_ce", "js", "masked_ce", "masked_spherical"] if setting == "sea" else [])
    for name, stats in whole.components.items():
        np.testing.assert_array_equal(merged.components[name].tp, stats.tp)
    if setting != "clean":  # the attack changes predictions, so equality above is not that of clean runs
        assert merged.miou < _record(evaluate(model, dataset, TOY_CLASSES, **options), "clean").miou


def test_shards_without_the_batch_offset_draw_other_random_starts(toy_setup):
    model, dataset = toy_setup
    pgd = create_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=1)
    whole = evaluate(model, dataset, TOY_CLASSES, attack=pgd, batch_size=2, seed=5, num_workers=0)["per_image"]
    parts = [evaluate(model, torch.utils.data.Subset(dataset, shard_range(12, 3, i, 2)), TOY_CLASSES, attack=pgd,
                      batch_size=2, seed=5, num_workers=0)["per_image"] for i in range(3)]
    assert not np.array_equal(np.concatenate([p.tp for p in parts]), whole.tp)


def test_records_of_different_evaluations_are_not_merged(toy_setup):
    model, dataset = toy_setup
    record = _record(evaluate(model, dataset, TOY_CLASSES, batch_size=4, num_workers=0), "clean")
    other = _record(evaluate(model, dataset, TOY_CLASSES, batch_size=4, num_workers=0), "pgd")
    with pytest.raises(ValueError, match="differ in 'setting'"):
        merge_records([record, other])
    with pytest.raises(ValueError, match="no shard records"):
        merge_records([])


@pytest.mark.parametrize("text, expected", [("0/8", (0, 8)), ("7/8", (7, 8)), ("0/1", (0, 1))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["8/8", "-1/8", "1", "a/b", "1/0", "1/2/3"])
def test_bad_shard_is_named(text):
    with pytest.raises(ValueError, match=f"--shard '{text}': expected I/N"):
        parse_shard(text)


def test_shard_subset_cuts_max_images_first_and_refuses_an_empty_shard():
    data = torch.utils.data.TensorDataset(torch.arange(10))
    second, offset = shard_subset(data, (1, 2), batch_size=2, max_images=6)  # 6 images, 3 batches: [0-1], [2-5]
    assert [int(second[i][0]) for i in range(len(second))] == [2, 3, 4, 5] and offset == 1
    assert shard_subset(data, None, batch_size=2, max_images=3)[0].indices == range(3)
    with pytest.raises(ValueError, match=r"--shard 0/4: no images .* 3 batches of 2\); use at most 3 shards"):
        shard_subset(data, (0, 4), batch_size=2, max_images=6)


def _eval_folder(folder, records: dict) -> None:
    from eroseg.io import EVAL_MANIFEST, write_eval_manifest

    for name, record in records.items():
        record.write(folder / name)
    write_eval_manifest(folder / EVAL_MANIFEST, [folder / name for name in records])


def test_merge_shard_folders_merges_every_listed_file_and_writes_the_manifest_last(toy_setup, tmp_path):
    from eroseg.io import eval_folder_files

    model, dataset = toy_setup
    pgd = create_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=1)
    folders, whole = [tmp_path / f"shard{i}" for i in range(2)], {}
    for setting, attack in (("clean", None), ("pgd", pgd)):
        whole[setting] = _record(evaluate(model, dataset, TOY_CLASSES, attack=attack, batch_size=4, seed=1,
                                          num_workers=0), setting)
    for index, folder in enumerate(folders):
        images, offset = shard_subset(dataset, (index, 2), batch_size=4)
        _eval_folder(folder, {f"{setting}/r.json" if setting != "clean" else "clean.json": _record(evaluate(
            model, images, TOY_CLASSES, attack=attack, batch_size=4, seed=1, num_workers=0, batch_offset=offset),
            setting) for setting, attack in (("clean", None), ("pgd", pgd))})
    merged = merge_shard_folders(folders, tmp_path / "merged")
    assert [p.relative_to(tmp_path / "merged").as_posix() for p in eval_folder_files(tmp_path / "merged")] == [
        "clean.json", "pgd/r.json"] == [p.relative_to(tmp_path / "merged").as_posix() for p in merged]
    for name, setting in (("clean.json", "clean"), ("pgd/r.json", "pgd")):
        record = EvalRecord.read(tmp_path / "merged" / name)
        np.testing.assert_array_equal(record.per_image.tp, whole[setting].per_image.tp)
        assert record.miou == whole[setting].miou and record.num_images == len(dataset)
    (folders[1] / "pgd" / "r.json").unlink()
    with pytest.raises(FileNotFoundError, match="r.json"):
        merge_shard_folders(folders, tmp_path / "again")
    (folders[1] / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="shard1: no manifest.json.*rerun that shard"):
        merge_shard_folders(folders, tmp_path / "again")
    assert not (tmp_path / "again" / "manifest.json").exists()
