"""Minimal-norm runs in the pipeline: the config block, the plan's jobs and outputs, the report's table and the
minimal-norm candidate of the main table's worst case (hand-made records; no attack runs here)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from eroseg.evaluate import EvalRecord
from eroseg.metrics import PerImageStats
from eroseg.plan import EvaluationPlan, attack_registry
from eroseg.report import ReportSpec
from eroseg.report.min_norm import headline_worst_case, load_min_norm
from eroseg.report.tables import main_table
from tests.test_plan import load

EPS = 8 / 255
CLASSES, IMAGES = 3, 6


@pytest.fixture(scope="module")
def registry_info(tmp_path_factory):
    return attack_registry(tmp_path_factory.mktemp("registry"), "test")


def _plan(registry_info, min_norm="keep") -> EvaluationPlan:
    config = copy.deepcopy(load("tests.yaml"))
    if min_norm != "keep":
        config["evaluation"]["min_norm"] = min_norm
    return EvaluationPlan(config, registry_info)


# ------------------------------------------------------------------ config and plan
def test_min_norm_jobs_paths_and_outputs_only_when_configured(registry_info):
    plan = _plan(registry_info)
    assert plan.min_norm_files() == ["results/tests/min_norm/standard/seed0/alma_prox.json",
                                     "results/tests/min_norm/eroseg_at/seed0/alma_prox.json",
                                     "results/tests/min_norm/trades_at/seed0/alma_prox.json"]
    assert plan.min_norm_eps() == pytest.approx([4 / 255, 8 / 255, 16 / 255])
    outputs = plan.all_outputs()
    assert "results/tests/tables/min_norm.csv" in outputs
    assert "results/tests/figures/robustness_curve.png" in outputs
    assert "results/tests/benchmarks/min_norm/standard_seed0_alma_prox.tsv" in plan.benchmark_files()
    options = plan.min_norm_options("alma_prox")
    assert "--steps 3" in options and "--max-images 4" in options and "--adv-threshold 0.5" in options
    spec = ReportSpec.from_dict(plan.aggregate_spec())
    assert spec.min_norm.files == tuple(plan.min_norm_files())

    off = _plan(registry_info, None)
    assert off.min_norm_files() == [] and off.report_spec().min_norm is None
    assert not any("min_norm" in p or "robustness_curve" in p for p in off.all_outputs() + off.benchmark_files())


def test_min_norm_seeds_methods_and_headline_eps(registry_info):
    block = {"attacks": {"a": {"attack": "dag", "steps": 2}, "pdpgd": {}}, "eps": ["2/255"], "seeds": "all",
             "methods": ["standard"], "norm": "linf"}
    plan = _plan(registry_info, block)
    assert plan.min_norm_jobs() == [("standard", 0, "a"), ("standard", 0, "pdpgd"), ("standard", 1, "a"),
                                    ("standard", 1, "pdpgd")]
    assert plan.min_norm_eps() == pytest.approx([2 / 255, 8 / 255])  # the headline eps is added
    assert plan.min_norm_args("a")["attack"] == "dag" and plan.min_norm_args("pdpgd")["steps"] is None


@pytest.mark.parametrize("block, message", [
    ({"attacks": {"alma_proxx": {}}, "eps": ["8/255"]}, "evaluation.min_norm.attacks.alma_proxx: unknown"),
    ({"attacks": {"alma_prox": {"params": {"lr": 1}}}, "eps": ["8/255"]},
     "evaluation.min_norm.attacks.alma_prox: alma_prox: unknown parameter"),
    ({"attacks": {"pdgd": {}}, "eps": ["8/255"], "norm": "linf"}, "evaluation.min_norm.attacks.pdgd: pdgd: norm"),
    ({"attacks": {"dag": {}}, "eps": ["8/255"], "methods": ["nope"]}, "evaluation.min_norm.methods: unknown method"),
    ({"attacks": {"dag": {}}, "eps": ["300/255"]}, "evaluation.min_norm.eps"),
])
def test_a_bad_min_norm_block_is_one_error_naming_its_key(registry_info, block, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")) as err:
        _plan(registry_info, block)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ the worst case with a minimal-norm candidate
def _stats(correct: list[float], label: int = 100) -> PerImageStats:
    """Per-image counts: image i has ``correct[i]`` of its pixels right in every class, the rest to the next class."""
    labels = np.full((len(correct), CLASSES), label, dtype=np.int64)
    tp = np.round(labels * np.asarray(correct)[:, None]).astype(np.int64)
    return PerImageStats(tp, tp + np.roll(labels - tp, -1, axis=1), labels)


def _record(setting: str, stats: PerImageStats, eps=EPS) -> EvalRecord:
    s = stats.scores()
    return EvalRecord(method="m", seed=0, setting=setting, attack="none" if setting == "clean" else "pgd",
                      attack_params={} if setting == "clean" else {"eps": eps, "steps": 3}, split="test",
                      checkpoint="m.pt", classes=None, miou=s["miou"], pixel_acc=s["pixel_acc"],
                      per_class_iou=s["per_class_iou"], per_image=stats)


def _min_norm_record(tmp_path, at_headline: PerImageStats, name="alma_prox", clean=None) -> str:
    n = len(at_headline.tp)
    clean = clean if clean is not None else _stats([0.9] * n)
    entry = {"miou": 0.0, "pixel_acc": 0.0, "per_image": at_headline.to_dict()}
    record = {"kind": "min_norm", "version": 1, "attack": "alma_prox", "attack_params": {}, "eps_grid": [EPS],
              "num_images": n, "seconds": 1.0, "method": "m", "seed": 0, "setting": name,
              "per_image": {"norm": [0.02] * n, "perturbation_norm": [0.02] * n, "fooled_share": [0.6] * n,
                            "success": [True] * n, "seconds": [0.5] * n},
              "clean": {"miou": 0.9, "pixel_acc": 0.9, "per_image": clean.to_dict()},
              "at_eps": [{"eps": EPS, **entry}]}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(record))
    return str(path)


def _evals_and_spec(tmp_path, candidate: PerImageStats):
    from eroseg.report.evals import Evals

    pgd = _stats([0.5, 0.6, 0.7, 0.4, 0.8, 0.5])
    records = [_record("clean", _stats([0.9] * IMAGES), eps=0), _record("pgd", pgd)]
    records[0].attack_params = {}
    evals = Evals(records, ["clean.json", "pgd.json"])
    spec = ReportSpec.from_dict({"methods": ["m"], "headline": {"eps": EPS, "steps": 3}, "attacks": ["pgd"],
                                 "min_norm": {"eps": [EPS], "files": [_min_norm_record(tmp_path, candidate)]}})
    return evals, spec, pgd


def test_a_stronger_candidate_lowers_the_worst_case_and_counts_its_images(tmp_path):
    # stronger on images 0 and 2 only, and it covers only the first 4 of the 6 images
    evals, spec, pgd = _evals_and_spec(tmp_path, _stats([0.1, 0.9, 0.2, 0.9]))
    records = load_min_norm(spec)
    with_it, wins = headline_worst_case(evals, spec, "m", 0, records)
    without, none = headline_worst_case(evals, spec, "m", 0, [])
    assert none is None and without == pytest.approx(pgd.scores()["miou"])
    assert with_it < without
    assert wins == {"alma_prox": 2}
    table, values = main_table(evals, spec, records)
    assert values.loc[0, "worst_case"] == pytest.approx(with_it)
    assert values.loc[0, "min_norm_won:alma_prox"] == 2


def test_a_weaker_candidate_leaves_the_worst_case_unchanged(tmp_path):
    evals, spec, pgd = _evals_and_spec(tmp_path, _stats([0.95] * IMAGES))
    with_it, wins = headline_worst_case(evals, spec, "m", 0, load_min_norm(spec))
    assert with_it == pytest.approx(pgd.scores()["miou"]) and wins == {"alma_prox": 0}


def test_a_record_of_other_images_is_refused(tmp_path):
    evals, spec, _ = _evals_and_spec(tmp_path, _stats([0.1] * 4))
    other = _stats([0.9] * 4, label=90)
    spec = ReportSpec.from_dict({**spec.to_dict(), "min_norm": {"eps": [EPS], "files": [
        _min_norm_record(tmp_path, _stats([0.1] * 4), clean=other)]}})
    with pytest.raises(ValueError, match="not the evaluation's first 4 images"):
        headline_worst_case(evals, spec, "m", 0, load_min_norm(spec))


def test_a_file_that_is_not_a_min_norm_record_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"miou": 0.5}))
    spec = ReportSpec.from_dict({"methods": ["m"], "min_norm": {"eps": [EPS], "files": [str(path)]}})
    with pytest.raises(ValueError, match="x.json: not a minimal-norm record"):
        load_min_norm(spec)


def test_the_min_norm_table_reports_the_images_won(tmp_path):
    from eroseg.report import TABLES
    from eroseg.report.evals import TableInputs

    evals, spec, _ = _evals_and_spec(tmp_path, _stats([0.1, 0.9, 0.2, 0.9]))
    inputs = TableInputs(evals, spec, tmp_path)
    inputs.tables["main"] = TABLES["main"].build(inputs)
    table = TABLES["min_norm"].build(inputs)
    row = table.iloc[0]
    assert (row["method"], row["setting"]) == ("m", "alma_prox")
    assert row["images won in the worst case"] == 2
    assert row["success %"] == 100 and row["norm median (x/255)"] == pytest.approx(0.02 * 255)


def test_norm_quartiles_count_failures_as_infinite(tmp_path):
    from eroseg.minnorm.tables import min_norm_frame

    spec = ReportSpec.from_dict({"methods": ["m"], "min_norm": {"eps": [EPS], "files": [
        _min_norm_record(tmp_path, _stats([0.1] * 4))]}})
    record = load_min_norm(spec)[0]
    record["per_image"]["norm"] = [0.01, 0.02, None, None]  # two failures (norm inf, stored as null)
    row = min_norm_frame([record]).iloc[0]
    assert row["success_rate"] == 0.5
    assert row["norm_q1"] == pytest.approx(0.0175) and row["norm_median"] == np.inf and row["norm_q3"] == np.inf


def test_a_bad_attack_fails_in_one_line_before_the_model_is_loaded(tmp_path, caplog):
    from eroseg.cli import main

    code = main(["min-norm", "--checkpoint", str(tmp_path / "missing.pt"), "--dataset", "synthetic", "--root",
                 str(tmp_path), "--attack", "alma_proxx", "--eps", "8/255", "--out", str(tmp_path / "o.json")])
    assert code == 1 and "unknown minimal-norm attack 'alma_proxx'" in caplog.text
    assert "missing.pt" not in caplog.text and not (tmp_path / "o.json").exists()


@pytest.mark.workflow
def test_the_pipeline_writes_min_norm_records_and_their_table(tiny_run):
    """config/tests.yaml: one record per method (first seed), named, on the grid with the headline eps."""
    import pandas as pd

    for method in ("standard", "eroseg_at"):
        record = json.loads((tiny_run / f"results/tests/min_norm/{method}/seed0/alma_prox.json").read_text())
        assert (record["method"], record["seed"], record["setting"], record["num_images"]) == (method, 0,
                                                                                               "alma_prox", 4)
        assert record["eps_grid"] == pytest.approx([4 / 255, 8 / 255, 16 / 255])
        assert record["attack_params"]["steps"] == 3 and record["attack_params"]["lr_init"] == 0.05
    table = pd.read_csv(tiny_run / "results/tests/tables/min_norm.csv")
    assert list(table["method"]) == ["standard", "eroseg_at", "trades_at"]
    assert {"robust % @ 8/255", "mIoU % @ 16/255", "images won in the worst case"} <= set(table.columns)
    assert (tiny_run / "results/tests/figures/robustness_curve.png").is_file()


def test_the_robustness_curve_is_drawn_with_the_headline_points(tmp_path, monkeypatch):
    from eroseg import figures as plots
    from eroseg.report import FIGURES
    from eroseg.report.figures import FigureInputs

    evals, spec, _ = _evals_and_spec(tmp_path, _stats([0.1, 0.9, 0.2, 0.9]))
    paths = []
    for rec in evals.records:
        path = tmp_path / f"{rec.setting}.json"
        rec.write(path)
        paths.append(str(path))
    kept = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, out_dir, name, dpi: kept.setdefault(name, fig) and [])
    FIGURES["robustness_curve"].build(FigureInputs(spec=spec, out_dir=tmp_path, evals=paths))
    labels = kept["robustness_curve"].legends[0].get_texts()
    assert [t.get_text() for t in labels] == ["m / alma_prox", "m / worst case"]
