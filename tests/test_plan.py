"""The evaluation plan (eroseg.plan) on the shipped configs, without Snakemake: settings, paths, checks, outputs."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import yaml

from eroseg.plan import EvaluationPlan, attack_registry, flow_arg
from eroseg.report import FIGURES, TABLES, ReportSpec, register_figure, register_table
from tests.conftest import ROOT

SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


def _with_defaults(value, schema):
    """``value`` with the schema's defaults filled in where a key is missing (as Snakemake's validate() does)."""
    props = schema.get("properties")
    if not isinstance(value, dict) or props is None:
        return value
    out = dict(value)
    for key, sub in props.items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = _with_defaults(out[key], sub)
    return out


@pytest.fixture(scope="module")
def registry_info(tmp_path_factory):
    return attack_registry(tmp_path_factory.mktemp("registry"), "test")


def load(name: str) -> dict:
    return _with_defaults(yaml.safe_load((ROOT / "config" / name).read_text()), SCHEMA)


@pytest.fixture(scope="module")
def tests_plan(registry_info):
    return EvaluationPlan(load("tests.yaml"), registry_info)


def test_model_settings_of_the_tests_config(tests_plan):
    # headline 8/255 with 3 steps (FGSM 1); checks: pgd at 4/255, 16/255, 1 with 2 steps and pgd_restarts on
    # every seed; the sweep (pgd at 4/255 and steps 2) and the ablation on standard's first seed only
    common = {("fgsm", "8", 1), ("pgd", "8", 3), ("eroseg", "8", 3), ("pgd", "4", 2), ("pgd", "16", 2),
              ("pgd", "255", 2), ("pgd_restarts", "8", 3)}
    assert set(tests_plan.model_settings("eroseg_at", 1)) == common
    assert set(tests_plan.model_settings("standard", 0)) == common | {("pgd", "4", 3), ("pgd", "8", 2),
                                                                      ("eroseg_selection_only", "8", 3)}
    assert set(tests_plan.model_settings("standard", 1)) == common | {("eroseg_selection_only", "8", 3)}


def test_evaluation_settings_and_paths(tests_plan):
    items = {(i["setting"], i["out"]): i for i in tests_plan.evaluation_settings("standard", 0)}
    assert ("clean", "results/tests/eval/standard/seed0/clean.json") in items
    pgd = items[("pgd", "results/tests/eval/standard/seed0/pgd/eps8_steps3.json")]
    assert pgd["params"]["eps"] == pytest.approx(8 / 255)
    assert pgd["params"]["step_size"] == pytest.approx(2 / 255)  # evaluation.step_size eps/4
    assert pgd["params_file"] == "results/tests/tuning/pgd.json"  # tuned: true
    assert "params_file" not in items[("fgsm", "results/tests/eval/standard/seed0/fgsm/eps8_steps1.json")]
    assert tests_plan.tuning_inputs_of_eval("standard", 0) == ["results/tests/tuning/eroseg.json",
                                                                "results/tests/tuning/pgd.json"]
    assert tests_plan.model_path("eroseg_at", 1) == "results/tests/models/eroseg_at/seed1/model.pt"
    assert tests_plan.samples_path() == "results/tests/samples/standard_seed0_eroseg.npz"
    assert tests_plan.benchmark_files()[0] == "results/tests/benchmarks/train/standard_seed0.tsv"
    assert tests_plan.training_attack("eroseg_at")[0] == "eroseg"
    assert tests_plan.training_attack("standard") == (None, {})
    assert tests_plan.training_tuning_file("eroseg_at") == "results/tests/tuning/eroseg.json"


def test_object_summaries_on_clean_and_the_headline_worst_case_only(tests_plan, registry_info):
    items = tests_plan.evaluation_settings("standard", 0)
    with_objects = {(i["setting"], i["out"].rsplit("/", 1)[-1]) for i in items if "objects" in i}
    # evaluation.size defaults to 4-connected components; worst_case: fgsm, pgd, eroseg at 8/255 (fgsm 1 step)
    assert with_objects == {("clean", "clean.json"), ("fgsm", "eps8_steps1.json"), ("pgd", "eps8_steps3.json"),
                            ("eroseg", "eps8_steps3.json")}
    assert {i["objects"]["connectivity"] for i in items if "objects" in i} == {4}
    assert "--objects-eps 0.03137254901960784 --connectivity 4" in tests_plan.min_norm_options("alma_prox")
    config = load("tests.yaml")
    config["evaluation"]["size"] = None
    off = EvaluationPlan(config, registry_info)
    assert not any("objects" in i for i in off.evaluation_settings("standard", 0))
    assert "--objects-eps" not in off.min_norm_options("alma_prox")
    assert "size" not in {t.name for t in off.report_tables()} | {f.name for f in off.report_figures()}


def test_outputs_name_the_tables_each_config_enables(tests_plan, registry_info):
    outputs = tests_plan.all_outputs()
    tables = {p.split("/")[-1].rsplit(".", 1)[0] for p in outputs if "/tables/" in p}
    # tests.yaml: tuning grids, checks, claims and minimal-norm runs, but no SEA
    assert tables == {"main", "results", "steps", "eps", "ablation", "timings", "tuning", "checks", "claims",
                      "verdicts", "min_norm", "size"}
    assert "results/tests/figures/erosion.svg" in outputs and "results/tests/data/manifest.csv" in outputs
    default = EvaluationPlan(load("config.yaml"), registry_info)
    default_tables = {t.name for t in default.report_tables()}
    assert "sea" in default_tables and "tuning" in default_tables
    spec = default.report_spec()
    # worst_case: [] in config.yaml: the main attacks, SEA added
    assert spec.worst_case_settings() == [*load("config.yaml")["evaluation"]["main_attacks"], "sea"]
    assert spec.steps_of["fgsm"] == 1 and spec.checks.seeds == (0,)  # checks.seeds: first


def test_report_spec_survives_the_shell_argument(tests_plan):
    from eroseg.numbers import budgets_as_numbers

    spec = tests_plan.report_spec()
    text = flow_arg(tests_plan.figure_spec())
    assert "eps: 8/255" in text
    assert ReportSpec.from_dict(budgets_as_numbers(yaml.safe_load(text))) == spec
    assert "dpi" not in tests_plan.aggregate_spec() and tests_plan.figure_spec()["dpi"] == 60


@pytest.mark.parametrize("change, message", [
    (lambda c: c["evaluation"].update(main_attacks=["fgsm", "pdg"]),
     "config key evaluation.main_attacks: unknown attack setting 'pdg'"),
    (lambda c: c["evaluation"]["attacks"]["pgd"].update(attack="pgdd"),
     "config key evaluation.attacks.pgd.attack: unknown attack 'pgdd'"),
    (lambda c: c["evaluation"]["attacks"]["fgsm"].update(params={"eps": 0.1}),
     "config key evaluation.attacks.fgsm.params.eps"),
    (lambda c: c["tuning"]["grids"]["pgd"].update(steps=[1, 2]), "config key tuning.grids.pgd.steps"),
    (lambda c: c["evaluation"]["sweep"].update(method="nobody"),
     "config key evaluation.sweep.method: unknown method 'nobody'"),
])
def test_a_bad_config_is_one_error_naming_its_key(registry_info, change, message):
    config = load("tests.yaml")
    change(config)
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        EvaluationPlan(config, registry_info)


def test_every_bad_budget_is_named_at_once(registry_info):
    config = load("tests.yaml")
    config["evaluation"]["headline"]["eps"] = "8/0"
    config["adversarial_training"]["eps"] = 2
    with pytest.raises(ValueError, match="2 bad numbers") as err:
        EvaluationPlan(config, registry_info)
    assert "evaluation.headline.eps" in str(err.value) and "adversarial_training.eps" in str(err.value)


def test_dataset_root_of_real_data(registry_info, monkeypatch):
    config = load("voc.yaml")
    monkeypatch.delenv("EROSEG_NOT_SET", raising=False)
    config["dataset"]["root"] = "$EROSEG_NOT_SET/voc"
    with pytest.raises(ValueError, match="names the environment variable \\$EROSEG_NOT_SET"):
        EvaluationPlan(config, registry_info).data_root()
    config["dataset"]["root"] = "~/voc"
    assert not EvaluationPlan(config, registry_info).data_root().startswith("~")


def test_a_registered_table_reaches_the_workflow_outputs_and_the_tables(tmp_path, registry_info):
    """The route of a new table: one registered function (here in a temporary registry), nothing else."""
    from eroseg.aggregate import aggregate

    tables = dict(TABLES)
    register_table("methods_count", title=lambda inputs: f"{len(inputs.spec.methods)} methods",
                   enabled=lambda spec: len(spec.methods) > 1, registry=tables)(
        lambda inputs: pd.DataFrame({"method": list(inputs.spec.methods)}).set_index("method"))
    plan = EvaluationPlan(load("tests.yaml"), registry_info)
    outputs = plan.all_outputs(tables=tables)
    assert {f"results/tests/tables/methods_count.{ext}" for ext in ("csv", "md", "html")} <= set(outputs)
    assert not any("methods_count" in p for p in plan.all_outputs())  # the shipped registry is untouched

    only_new = {"methods_count": tables["methods_count"]}
    tables = aggregate([], plan.aggregate_spec(), tmp_path / "tables", tables=only_new)
    assert list(tables["methods_count"].index) == ["standard", "eroseg_at", "trades_at"] == plan.methods
    assert (tmp_path / "tables" / "methods_count.md").read_text().startswith("## 3 methods\n")
    csv_text = (tmp_path / "tables" / "methods_count.csv").read_text()
    assert csv_text == "method\n" + "".join(f"{m}\n" for m in plan.methods)
    # a spec that does not enable it: neither in the outputs nor built
    assert aggregate([], {"methods": ["one"]}, tmp_path / "none", tables=only_new) == {}


def test_a_registered_figure_reaches_the_workflow_outputs(registry_info):
    figures = dict(FIGURES)
    register_figure("blank", title="nothing", caption="fig_sweeps", registry=figures)(lambda inputs: [])
    plan = EvaluationPlan(load("tests.yaml"), registry_info)
    assert {"results/tests/figures/blank.png", "results/tests/figures/blank.svg"} <= set(
        plan.all_outputs(figures=figures))
