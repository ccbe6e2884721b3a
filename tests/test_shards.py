"""Shards of one evaluation (eroseg.shards): disjoint covering ranges, and merged records equal to one job's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eroseg.attacks import create_attack
from eroseg.evaluate import EvalRecord, _generator, evaluate
from eroseg.shards import merge_record_files, merge_records, shard_batch_offset, shard_range
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


class _GlobalBatchStreams:
    """An attack whose random starts use the one-job stream of each batch: batch k of a shard is batch
    ``offset + k`` of the one job (what a shard job must pass; one attack call per batch, no restarts)."""

    def __init__(self, attack, seed: int, offset: int):
        self.attack, self.seed, self.offset, self.calls = attack, seed, offset, 0

    def __call__(self, model, images, labels, generator=None, **kwargs):
        stream = _generator(self.seed, self.offset + self.calls, images.device)
        self.calls += 1
        return self.attack(model, images, labels, generator=stream, **kwargs)


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
        images = shard_range(len(dataset), 3, index, batch_size=2)
        shard_attack = attack and _GlobalBatchStreams(attack, 5, shard_batch_offset(len(dataset), 3, index, 2))
        result = evaluate(model, torch.utils.data.Subset(dataset, images), TOY_CLASSES, attack=shard_attack,
                          **options)
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
