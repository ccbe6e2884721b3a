"""Robustness by object size through the pipeline: the object summaries evaluate() keeps, their life in records and
shards, the minimal-norm records' summaries, and the size table's per-image worst case (eroseg.report.size)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eroseg.attacks import create_attack
from eroseg.evaluate import EvalRecord, EvalSetting, evaluate
from eroseg.metrics import PerImageStats, per_image_stats
from eroseg.objects import LabelObjects, component_summary
from eroseg.report import ReportSpec
from eroseg.report.evals import Evals
from eroseg.report.min_norm import load_min_norm
from eroseg.report.size import size_of, worst_case_summaries
from eroseg.shards import merge_records
from tests.test_batching import SIZES, MixedSizes, Tiny

EPS = 8 / 255


# ------------------------------------------------------------------ evaluate() keeps the summaries
@pytest.fixture(scope="module")
def restarted():
    """A 2-restart PGD evaluation of mixed-size images in batches of 4 (gathered by size, so out of order)."""
    attack = create_attack("pgd", eps=EPS, step_size=EPS / 4, steps=2)
    return evaluate(Tiny().eval(), MixedSizes(), 2, attack=attack, batch_size=4, restarts=2, objects=4,
                    num_workers=0)


def _correct(rows: list[dict]) -> np.ndarray:
    return np.array([sum(row["correct"]) for row in rows])


def test_summaries_are_in_dataset_order_and_add_up_to_the_per_image_counts(restarted):
    objects, per_image = restarted["objects"], restarted["per_image"]
    assert objects["connectivity"] == 4 and len(objects["clean"]) == len(objects["adv"]) == len(SIZES)
    # every valid pixel lies in one component: the areas of image i add up to its labelled pixels
    assert [sum(row["area"]) for row in objects["clean"]] == list(per_image.label.sum(1))
    assert np.array_equal(_correct(objects["adv"]), per_image.tp.sum(1))  # right pixels under attack
    assert set(objects["components"]) == set(restarted["components"]) == {"restart_0", "restart_1"}
    for name, rows in objects["components"].items():
        assert np.array_equal(_correct(rows), restarted["components"][name].tp.sum(1)), name
    clean = evaluate(Tiny().eval(), MixedSizes(), 2, batch_size=4, objects=4, num_workers=0)
    assert np.array_equal(_correct(objects["clean"]), clean["per_image"].tp.sum(1))
    assert clean["objects"]["clean"] == objects["clean"]
    assert all(set(row["flipped"]) == {0} for row in clean["objects"]["adv"])  # nothing flips without an attack
    assert sum(sum(row["flipped"]) for row in objects["adv"]) > 0


def test_summaries_equal_component_summary_of_the_predictions():
    images, labels = zip(*(MixedSizes()[i] for i in range(3)))
    model = Tiny().eval()
    result = evaluate(model, MixedSizes(), 2, batch_size=1, max_images=3, objects=8, num_workers=0)
    for i, (image, label) in enumerate(zip(images, labels)):
        with torch.no_grad():
            pred = model(image[None]).argmax(1)[0].numpy()
        expected = component_summary(label.numpy(), pred, pred, connectivity=8)
        stored = result["objects"]["clean"][i]
        assert stored["union"] == expected["union_clean"] and stored["area"] == expected["area"]


def test_records_keep_the_summaries_and_shards_concatenate_them(restarted, tmp_path):
    first = EvalRecord(method="m", seed=0, setting="pgd", attack="pgd", attack_params={"eps": EPS, "steps": 2},
                       split="test", checkpoint="m.pt", classes=None, per_image=restarted["per_image"],
                       components=restarted["components"], objects=restarted["objects"],
                       **restarted["metrics"])
    first.write(tmp_path / "with.json")
    assert EvalRecord.read(tmp_path / "with.json").objects == restarted["objects"]
    bare = EvalRecord(**{**first.__dict__, "objects": None})
    bare.write(tmp_path / "without.json")
    assert "objects" not in json.loads((tmp_path / "without.json").read_text())
    merged = merge_records([first, first])
    assert merged.objects["clean"] == restarted["objects"]["clean"] * 2
    assert merged.objects["components"]["restart_1"] == restarted["objects"]["components"]["restart_1"] * 2
    other = EvalRecord(**{**first.__dict__, "objects": {**first.objects, "connectivity": 8}})
    with pytest.raises(ValueError, match="differ in 'objects'"):
        merge_records([first, other])


@pytest.mark.parametrize("objects, message", [({"connectivity": 6}, "4 or 8"), ({"conectivity": 4}, "4 or 8"),
                                              (True, "must be null")])
def test_a_bad_objects_entry_is_named(objects, message):
    with pytest.raises(ValueError, match=message) as err:
        EvalSetting.from_dict({"attack": "none", "out": "x.json", "objects": objects}, "--settings[0]")
    assert "--settings[0].objects" in str(err.value)


# ------------------------------------------------------------------ the size table's worst case
# Two 8x8 images: void column 0, class 1 a 2x2 square and class 2 a 6x3 block on a class 0 background.
LABEL = np.zeros((8, 8), dtype=np.int64)
LABEL[:, 0] = 255
LABEL[1:3, 1:3] = 1
LABEL[2:8, 5:8] = 2


def _hit(cls: int) -> np.ndarray:
    """The prediction with every pixel of ``cls`` predicted as background."""
    return np.where(LABEL == cls, 0, np.where(LABEL == 255, 0, LABEL))


def _record(setting: str, preds: list[np.ndarray], attack="pgd", components=None) -> EvalRecord:
    labels = torch.as_tensor(np.stack([LABEL, LABEL]))
    stats = per_image_stats(torch.as_tensor(np.stack(preds)), labels, 3, 255)
    objects = [LabelObjects(LABEL) for _ in preds]
    summaries = {"connectivity": 4, "clean": [o.clean_summary(LABEL) for o in objects],
                 "adv": [o.attacked_summary(LABEL, p) for o, p in zip(objects, preds)], "components": {}}
    s = stats.scores()
    return EvalRecord(method="m", seed=0, setting=setting, attack=attack,
                      attack_params={"eps": EPS, "steps": 3} if attack != "none" else {}, split="test",
                      checkpoint=f"{setting}.pt", classes=["bg", "square", "block"], miou=s["miou"],
                      pixel_acc=s["pixel_acc"], per_class_iou=s["per_class_iou"], per_image=stats,
                      objects=summaries, components=components or {})


def _evals():
    # fgsm hides the square on image 0 only, pgd the block on image 1 only: each is the worst case on one image
    records = [_record("clean", [LABEL, LABEL], attack="none"), _record("fgsm", [_hit(1), LABEL]),
               _record("pgd", [LABEL, _hit(2)])]
    return Evals(records, [f"{r.setting}.json" for r in records])


SPEC = {"methods": ["m"], "headline": {"eps": EPS, "steps": 3}, "attacks": ["fgsm", "pgd"], "size": True}


def test_each_image_takes_the_summaries_of_its_worst_case_candidate():
    summaries, classes = worst_case_summaries(_evals(), ReportSpec.from_dict(SPEC), [])
    assert classes == ["bg", "square", "block"] and [s["image"] for s in summaries] == [0, 1]
    flipped = {(s["image"], c): f for s in summaries for c, f in zip(s["class"], s["flipped"])}
    assert flipped == {(0, 0): 0, (0, 1): 4, (0, 2): 0, (1, 0): 0, (1, 1): 0, (1, 2): 18}
    table = size_of(_evals(), ReportSpec.from_dict(SPEC)).set_index(["tercile", "class"])
    # areas 4 (square), 18 (block), 34 (background) in each image: one component per tercile
    assert table.loc[("small", "square"), "flipped_share"] == pytest.approx(50.0)  # hidden on one image of two
    assert table.loc[("medium", "block"), "iou_adv"] == pytest.approx(50.0)
    assert table.loc[("large", "bg"), "iou_clean"] == pytest.approx(100.0)
    assert table.loc[("large", "bg"), "iou_adv"] < 100.0  # the hidden pixels joined the background's prediction
    assert table.loc[("small", "all"), "components"] == 2


def _min_norm_file(tmp_path, preds: list[np.ndarray]) -> str:
    labels = torch.as_tensor(np.stack([LABEL, LABEL]))
    stats = per_image_stats(torch.as_tensor(np.stack(preds)), labels, 3, 255)
    clean = per_image_stats(labels.clamp(max=2), labels, 3, 255)
    objects = LabelObjects(LABEL)
    record = {"kind": "min_norm", "version": 1, "attack": "alma_prox", "attack_params": {}, "eps_grid": [EPS],
              "num_images": 2, "seconds": 1.0, "method": "m", "seed": 0, "setting": "alma_prox",
              "per_image": {"norm": [0.02] * 2, "perturbation_norm": [0.02] * 2, "fooled_share": [0.6] * 2,
                            "success": [True] * 2, "seconds": [0.5] * 2},
              "clean": {"miou": 1.0, "pixel_acc": 1.0, "per_image": clean.to_dict()},
              "at_eps": [{"eps": EPS, "miou": 0.0, "pixel_acc": 0.0, "per_image": stats.to_dict()}],
              "objects": {"eps": EPS, "connectivity": 4, "clean": [objects.clean_summary(LABEL)] * 2,
                          "adv": [objects.attacked_summary(LABEL, p) for p in preds]}}
    path = tmp_path / "alma_prox.json"
    path.write_text(json.dumps(record))
    return str(path)


def test_a_winning_minimal_norm_perturbation_gives_its_own_summaries(tmp_path):
    everything = np.zeros_like(LABEL)  # every pixel background: square and block both hidden
    path = _min_norm_file(tmp_path, [everything, LABEL])
    spec = ReportSpec.from_dict({**SPEC, "min_norm": {"eps": [EPS], "files": [path]}})
    summaries, _ = worst_case_summaries(_evals(), spec, load_min_norm(spec))
    assert summaries[0]["flipped"] == [0, 4, 18]  # image 0: the minimal-norm candidate
    assert summaries[1]["flipped"] == [0, 0, 18]  # image 1: still pgd's


def test_an_evaluation_without_summaries_is_named():
    evals = _evals()
    evals.get("m", 0, "pgd", EPS, 3).objects = None
    with pytest.raises(ValueError, match="'pgd' on pgd.pt keeps no object summaries"):
        size_of(evals, ReportSpec.from_dict(SPEC))


def test_the_per_image_stats_of_the_hand_made_records_are_consistent():
    # the worst case reads per_image; the size table reads objects: both must describe one prediction
    rec = _evals().get("m", 0, "fgsm", EPS, 3)
    assert isinstance(rec.per_image, PerImageStats)
    assert [sum(row["correct"]) for row in rec.objects["adv"]] == list(rec.per_image.tp.sum(1))


def test_the_size_figure_draws_one_line_per_method_from_the_records(tmp_path):
    from eroseg.report import FIGURES
    from eroseg.report.figures import FigureInputs

    paths = []
    for rec in _evals().records:
        rec.write(tmp_path / f"{rec.setting}.json")
        paths.append(str(tmp_path / f"{rec.setting}.json"))
    inputs = FigureInputs(spec=ReportSpec.from_dict(SPEC), out_dir=tmp_path / "figures", evals=paths)
    written = FIGURES["size"].build(inputs)
    assert sorted(p.name for p in written) == ["size.png", "size.svg"]
    assert (tmp_path / "figures" / "size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no evaluation records"):
        FIGURES["size"].build(FigureInputs(spec=ReportSpec.from_dict(SPEC), out_dir=tmp_path))
