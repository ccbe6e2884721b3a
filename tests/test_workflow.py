"""The Snakemake workflow end to end on config/tests.yaml, and what reruns after a change."""

import base64
import html
import json
import math
import re
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, copy_configs, run_snakemake, snakemake_cmd, snakemake_env

pytestmark = pytest.mark.workflow


snakemake = run_snakemake


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Jobs a dry run would run, by rule (from snakemake's job-stats table)."""
    res = snakemake(workdir, "-n", "--quiet", "rules", *args)
    jobs = {}
    for line in (res.stdout + res.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            jobs[parts[0]] = int(parts[1])
    return jobs


@pytest.fixture(scope="module")
def workdir(tiny_run) -> Path:
    """The finished run of config/tests.yaml (started in the background with the session, see conftest)."""
    return tiny_run


def test_end_to_end_table_values(workdir):
    out = workdir / "results" / "tests"
    values = pd.read_csv(out / "tables" / "main_values.csv")
    cfg = yaml.safe_load((workdir / "config" / "tests.yaml").read_text())
    ev = cfg["evaluation"]
    assert sorted(values.method.unique()) == sorted(cfg["methods"])
    assert sorted(values.seed.unique()) == sorted(cfg["seeds"])
    attacks = ev["main_attacks"]
    assert list(values.columns) == ["method", "seed", "clean", *attacks, "worst_case"]
    n_classes = len(json.loads((out / "eval/standard/seed0/clean.json").read_text())["per_class_iou"])
    std = values[values.method == "standard"]
    assert (std.clean > 1.5 / n_classes).all(), "clean mIoU not above chance"
    assert (std.pgd < std.clean).all()
    # The worst case is never better than any attack it ranges over, model by model.
    assert (values.worst_case <= values[attacks].min(axis=1) + 1e-9).all()
    # The table agrees with the per-model evaluation JSON, and the reported split is the test split.
    pgd = json.loads((out / "eval/standard/seed0/pgd/eps8_steps3.json").read_text())
    assert pgd["split"] == "test" and pgd["attack_params"]["best_iterate"] is True
    row = values[(values.method == "standard") & (values.seed == 0)].iloc[0]
    assert row.pgd == pytest.approx(pgd["miou"])
    # The tuned step size reached the evaluation.
    tuning = json.loads((out / "tuning/pgd.json").read_text())
    assert tuning["split"] == "val"
    assert pgd["attack_params"]["step_size"] == pytest.approx(
        pgd["attack_params"]["eps"] / {"eps/4": 4, "eps/2": 2}[tuning["chosen"]["step_size"]])
    main_md = (out / "tables" / "main.md").read_text()
    assert main_md.startswith("## ") and " ± " in main_md and "[" in main_md
    for t in ("main", "claims", "verdicts", "checks", "tuning", "ablation"):
        html = (out / "tables" / f"{t}.html").read_text()
        assert "<table" in html, t
    for f in ("robust_vs_steps", "robust_vs_eps", "per_class_iou", "training_curves", "qualitative", "erosion"):
        png = out / "figures" / f"{f}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
        assert (out / "figures" / f"{f}.svg").read_text().lstrip().startswith("<?xml")


def report_data(path: Path, script_id: str, var: str):
    """A value a Snakemake HTML report embeds as ``<script id="{script_id}"> var {var} = <JSON>;</script>``:
    ``results`` (the embedded files by path), ``workflow-desc`` (the landing page's HTML), ..."""
    m = re.search(rf'<script id="{script_id}">\s*var {var} = (.*?);?\s*</script>', path.read_text(), re.S)
    assert m, f"{path}: no embedded {script_id} block"
    return json.loads(m.group(1))


def table_cells(text: str) -> list[str]:
    """Text of every header and data cell of the HTML tables in ``text``, as a reader sees it: markup inside a cell
    (an interval on its own line, a header's break opportunities) dropped, whitespace collapsed."""
    cells = []
    for c in re.findall(r"<t[dh](?:\s[^>]*)?>(.*?)</t[dh]>", text, re.S):
        c = re.sub(r"<[^>]*>", "", re.sub(r"<br\s*/?>", " ", c))
        cells.append(" ".join(html.unescape(c).split()))
    return cells


def assert_table_shows_csv(csv_path: Path, cells: list[str]) -> None:
    """Every header and value of the CSV table is among ``cells`` (numbers to the table's rounding)."""
    numbers = []
    for c in cells:
        try:
            numbers.append(float(c))
        except ValueError:
            pass
    csv = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    for value in [*csv.columns, *csv.to_numpy().ravel()]:
        if value == "" or value.startswith("Unnamed"):
            continue
        try:
            x = float(value)
        except ValueError:
            assert value in cells, f"{csv_path.name}: {value!r} not in the report's table"
        else:
            assert any(math.isclose(x, n, rel_tol=1e-3, abs_tol=0.006) for n in numbers), (csv_path.name, value)


def test_report_shows_every_table_inline_as_html(workdir):
    """Each table is in the report as an HTML table (not only a download) and carries the CSV's values;
    the landing page leads with the verdicts, then the main table and the checks (the long claims table is
    under Tables)."""
    snakemake(workdir, "--configfile", "config/tests.yaml", "--report", "report.html")
    embedded = report_data(workdir / "report.html", "results", "results")
    tables = sorted((workdir / "results" / "tests" / "tables").glob("*.html"))
    assert {"main", "claims", "verdicts", "checks", "tuning", "ablation", "timings"} <= {t.stem for t in tables}
    for path in tables:
        entry = embedded.get(f"results/tests/tables/{path.name}")
        assert entry and entry["mime_type"] == "text/html" and entry["caption"].strip(), path.name
        # Job parameters readable: no JSON quotes (the report shows each one as \"), the spec's keys visible.
        params = entry["job_properties"]["params"]
        assert '\\' not in params and '"' not in params, params[:300]
        assert "methods: [standard, eroseg_at, trades_at]" in params, params[:300]
        assert "headline: {eps: 8/255, steps: 3}" in params, params[:300]
        assert_table_shows_csv(path.with_suffix(".csv"),
                               table_cells(base64.b64decode(entry["data_uri"].split(",", 1)[1]).decode()))
    landing = report_data(workdir / "report.html", "workflow-desc", "workflow_desc")
    titles = []
    for name in ("verdicts", "main", "checks"):
        path = workdir / "results" / "tests" / "tables" / f"{name}.html"
        title = re.search(r"<h3>(.*?)</h3>", path.read_text()).group(1)
        titles.append(landing.find(title))
        block = landing[titles[-1]:landing.index("</table>", titles[-1])]
        assert_table_shows_csv(path.with_suffix(".csv"), table_cells(block))
    assert -1 < titles[0] < titles[1] < titles[2], titles
    claims_title = re.search(r"<h3>(.*?)</h3>", (path.parent / "claims.html").read_text()).group(1)
    assert claims_title not in landing


def test_second_dry_run_has_nothing_to_do(workdir):
    assert planned_jobs(workdir, "--configfile", "config/tests.yaml") == {}


def test_choices_use_val_and_reported_numbers_use_test(workdir):
    """The tuning stage and the per-epoch log read the val split only; every evaluation reads the test split."""
    res = snakemake(workdir, "-n", "-p", "--forceall", "--configfile", "config/tests.yaml")
    cmds = [line.strip().split(" -m eroseg ", 1)[1] for line in res.stdout.splitlines() if " -m eroseg " in line]
    kinds = {c.split()[0] for c in cmds}
    assert {"tune", "evaluate", "train"} <= kinds, kinds
    for c in cmds:
        split = re.search(r"--split (\S+)", c)
        if c.startswith("tune"):
            assert split.group(1) == "val", c
        elif c.startswith("evaluate"):
            assert split.group(1) == "test", c
        elif c.startswith("train"):
            assert re.search(r"--val-split (\S+)", c).group(1) == "val", c
            assert "test" not in re.search(r"--train-split (\S+)", c).group(1), c


def _changed(workdir: Path, name: str, edit) -> dict[str, int]:
    cfg = yaml.safe_load((workdir / "config" / "tests.yaml").read_text())
    edit(cfg)
    path = workdir / "config" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return planned_jobs(workdir, "--configfile", str(path))


def test_changing_one_attack_setting_reruns_only_the_models_it_applies_to(workdir):
    # The ablation variant runs on `standard` only (both seeds): its two evaluation jobs rerun, nothing else.
    jobs = _changed(workdir, "ablation", lambda c: c["evaluation"]["attacks"]["eroseg_selection_only"]["params"]
                    .update(q0=0.5))
    assert jobs == {"evaluate": 2, "aggregate": 1, "figures": 1, "all": 1}, jobs


def test_changing_one_tuning_grid_reruns_that_tuning_and_what_reads_it(workdir):
    # pgd's grid: pgd is tuned and then evaluated on every model; no model is retrained and
    # eroseg's tuning does not run again.
    jobs = _changed(workdir, "grid", lambda c: c["tuning"]["grids"]["pgd"].update(step_size=["eps/4", "eps"]))
    n_models = 3 * 2  # methods x seeds
    assert jobs == {"tune": 1, "evaluate": n_models, "aggregate": 1, "figures": 1, "all": 1}, jobs


def test_changing_one_method_retrains_only_that_method(workdir):
    jobs = _changed(workdir, "method", lambda c: c["methods"]["eroseg_at"].update(params={"random_start": False}))
    # eroseg_at is retrained (both seeds) and its evaluations and minimal-norm run (first seed) redone; nothing
    # of `standard` (which also owns the samples, sweeps, ablation and the tuning) runs again, nor the tuning
    # eroseg_at reads.
    assert jobs == {"train": 2, "evaluate": 2, "min_norm": 1, "aggregate": 1, "figures": 1, "all": 1}, jobs


def test_changing_one_objective_parameter_retrains_only_that_method(workdir):
    jobs = _changed(workdir, "beta", lambda c: c["methods"]["trades_at"]["objective"].update(beta=3))
    # trades_at's two models retrain and are evaluated again; its first seed's minimal-norm run too
    assert jobs == {"train": 2, "evaluate": 2, "min_norm": 1, "aggregate": 1, "figures": 1, "all": 1}, jobs


def test_changing_figure_style_reruns_no_evaluation(workdir):
    assert _changed(workdir, "style", lambda c: c["figures"].update(dpi=61)) == {"figures": 1, "all": 1}


def _dry_run_with(tmp_path: Path, change) -> subprocess.CompletedProcess:
    """A dry run of the tests config after ``change(cfg)`` (not checked for success)."""
    copy_configs(tmp_path)
    cfg = yaml.safe_load((tmp_path / "config" / "tests.yaml").read_text())
    change(cfg)
    (tmp_path / "config" / "changed.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return snakemake(tmp_path, "-n", "-p", "--configfile", "config/changed.yaml", check=False)


def _dry_run_with_train(tmp_path: Path, **train) -> subprocess.CompletedProcess:
    """A dry run of the tests config with ``train`` keys set as given (not checked for success)."""
    return _dry_run_with(tmp_path, lambda cfg: cfg["train"].update(train))


def test_bad_config_names_the_key(tmp_path):
    res = _dry_run_with_train(tmp_path, epochs=0)
    assert res.returncode != 0
    assert "epochs" in res.stdout + res.stderr


def test_bad_claims_value_is_one_line_naming_the_key(tmp_path):
    res = _dry_run_with(tmp_path, lambda cfg: cfg["evaluation"]["claims"].update(min_effect=-1))
    assert res.returncode != 0
    assert "config key evaluation.claims.min_effect: -1; expected points of mIoU >= 0" in res.stdout + res.stderr


def test_unknown_config_key_names_itself_and_the_closest_valid_key(tmp_path):
    res = _dry_run_with_train(tmp_path, batchsize=3)
    assert res.returncode != 0
    assert "config key train.batchsize: unknown; did you mean train.batch_size?" in res.stdout + res.stderr


def _failing_dry_run_output(tmp_path, change) -> str:
    """Output of a failing dry run of the tests config after ``change(cfg)``."""
    res = _dry_run_with(tmp_path, change)
    assert res.returncode != 0
    return res.stdout + res.stderr


def test_misspelt_tuned_training_attack_is_named_as_unknown_not_as_missing_grid(tmp_path):
    misspelt = {"attack": "erosg", "tuned": True}
    out = _failing_dry_run_output(tmp_path, lambda cfg: cfg["methods"].update(eroseg_at=misspelt))
    assert "config key methods.eroseg_at.attack: unknown attack 'erosg'; valid: fgsm, pgd" in out
    assert "did you mean 'eroseg'?" in out and "no tuning grid" not in out


def test_every_budget_out_of_range_is_named(tmp_path):
    def change(cfg):
        cfg["evaluation"]["headline"]["eps"] = 8
        cfg["adversarial_training"]["eps"] = 8

    out = _failing_dry_run_output(tmp_path, change)
    assert "2 bad numbers in the config" in out
    for key in ("evaluation.headline.eps", "adversarial_training.eps"):
        assert f"config key {key}: 8 is above 1, the pixel range" in out and "did you mean '8/255'?" in out, key


def test_rules_run_the_package_with_snakemakes_own_interpreter(tmp_path):
    """A Snakemake started from a venv that is not activated (eroseg not on PATH) still finds the package."""
    copy_configs(tmp_path)
    res = run_snakemake(tmp_path, "results/tests/data/synthetic", "-p", "--configfile", "config/tests.yaml",
                        check=False, env=dict(snakemake_env(), PATH="/usr/bin:/bin"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert '"$EROSEG_PYTHON" -m eroseg synthesize' in res.stdout + res.stderr
    assert len(list((tmp_path / "results/tests/data/synthetic").rglob("*.png"))) > 0


def test_lint_is_clean(workdir):
    """`snakemake --lint` finds nothing (each rule names its conda environment, no hard-coded prefixes)."""
    res = run_snakemake(workdir, "--lint", "--configfile", "config/tests.yaml", check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_slurm_profile_dry_run_requests_gpus(tmp_path):
    """The slurm profile (plugin installed) plans every GPU rule with a GPU request; local rules stay local."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed")
    copy_configs(tmp_path)
    env = snakemake_env(EROSEG_SLURM_ACCOUNT="acct", EROSEG_SLURM_PARTITION="cpu", EROSEG_SLURM_GPU_PARTITION="gpu")
    profile = str(ROOT / "workflow" / "profiles" / "slurm")
    res = subprocess.run(snakemake_cmd(tmp_path, "-n", "--profile", profile, "--configfile", "config/tests.yaml"),
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    blocks: dict[str, list[str]] = {}
    # Jobs of a group (the profile groups the evaluations) are printed indented under "Group job".
    for m in re.finditer(r"^ *(?:local)?rule (\w+):\n((?: {4,}.*\n)+)", out, flags=re.M):
        blocks.setdefault(m.group(1), []).append(m.group(2))
    for rule in ("train", "tune", "evaluate", "samples"):
        assert blocks.get(rule), (rule, out[-2000:])
        for b in blocks[rule]:
            assert "gpu=1" in b and "slurm_partition=gpu" in b, b
    for rule in ("aggregate", "figures"):
        assert blocks.get(rule) and all("gpu=" not in b for b in blocks[rule])
    # Multi-GPU training: the rule's gpu=N request reaches SLURM (the profile must not override it).
    cfg = yaml.safe_load((tmp_path / "config" / "tests.yaml").read_text())
    cfg["resources"]["gpus_per_train"] = 2
    (tmp_path / "config" / "two.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = subprocess.run(  # the profile caps each submitted job at gpu=1 (grouped evaluations share one)
        snakemake_cmd(tmp_path, "-n", "--profile", profile, "--configfile", "config/two.yaml", "--resources", "gpu=2"),
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    train_blocks = re.findall(r"^rule train:\n((?:    .*\n)+)", res.stdout + res.stderr, flags=re.M)
    assert train_blocks and all("gpu=2" in b for b in train_blocks), train_blocks


@pytest.mark.parametrize("key", ["train_split", "val_split", "test_split"])
def test_split_name_holding_a_command_is_refused_and_never_run(tmp_path, key):
    res = _dry_run_with(tmp_path, lambda c: c["dataset"].update({key: "test $(touch pwned)"}))
    assert res.returncode != 0 and not (tmp_path / "pwned").exists()
    out = res.stdout + res.stderr
    assert key in out and "does not match" in out, out[-2000:]


@pytest.mark.parametrize("run", ["..", ".", "../elsewhere", ".hidden"])
def test_run_name_stays_one_folder_under_results(tmp_path, run):
    res = _dry_run_with(tmp_path, lambda c: c.update(run=run))
    assert res.returncode != 0 and "does not match" in res.stdout + res.stderr, (res.stdout + res.stderr)[-2000:]


#: Shell fields of the rules that are not quoted with ``:q``: numbers, and flags the rule quotes itself.
UNQUOTED_FIELDS = {"threads", "wildcards.seed", "params.module", "params.max_images", "params.params_file",
                   "params.n_train", "params.n_val", "params.n_test", "params.height", "params.width",
                   "params.seed", "params.batch_size", "params.n",
                   # options quoted word by word by eroseg.plan (shlex.quote), empty when not used
                   "params.min_norm_options", "params.tune", "params.split_lists", "params.inference"}


def test_every_value_in_a_rule_command_is_quoted():
    """Names and paths from the config reach the shell quoted (``{x:q}``), so no value is ever read as shell code."""
    unquoted = []
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.findall(r"^    shell:\n((?:        .*\n?)+)", smk.read_text(), flags=re.M):
            for field, spec in re.findall(r"(?<!\{)\{([A-Za-z_.]+)(:[^}]*)?\}(?!\})", block):
                if spec != ":q" and field not in UNQUOTED_FIELDS:
                    unquoted.append(f"{smk.name}: {{{field}{spec}}}")
    assert not unquoted, unquoted


def test_evaluation_folder_that_lost_a_file_is_refused_naming_it(tmp_path):
    """Snakemake sees the folder only: a finished evaluation (it has its manifest) missing a result must not
    pass as up to date, nor reach the tables without it."""
    folder = tmp_path / "results" / "tests" / "eval" / "standard" / "seed0"
    (folder / "pgd").mkdir(parents=True)
    (folder / "pgd" / "eps8_steps3.json").write_text("{}")
    (folder / "manifest.json").write_text(json.dumps({"version": 1, "files": ["clean.json", "pgd/eps8_steps3.json"]}))
    res = _dry_run_with(tmp_path, lambda c: None)
    assert res.returncode != 0
    missing = folder.relative_to(tmp_path) / "clean.json"
    assert f"{missing}: missing from its evaluation folder" in res.stdout + res.stderr


def test_dataset_root_holding_a_command_is_refused_as_such(tmp_path):
    res = _dry_run_with(tmp_path, lambda c: c["dataset"].update(name="voc", root=str(tmp_path / "$(touch pwned)")))
    assert res.returncode != 0 and not (tmp_path / "pwned").exists()
    out = res.stdout + res.stderr
    assert "holds a shell command" in out and "environment variable" not in out, out[-2000:]


@pytest.mark.parametrize("key, value, expected", [
    ("eps", "16/255", "evaluation.attacks.pgd_restarts.params.eps: a setting runs at the eps"),
    ("steps", 50, "evaluation.attacks.pgd_restarts.params.steps: would be overwritten"),
])
def test_setting_params_eps_or_steps_are_refused_not_overwritten(tmp_path, key, value, expected):
    res = _dry_run_with(tmp_path, lambda c: c["evaluation"]["attacks"]["pgd_restarts"].update(params={key: value}))
    assert res.returncode != 0 and expected in res.stdout + res.stderr, (res.stdout + res.stderr)[-2000:]


def test_tuning_grid_over_eps_is_refused(tmp_path):
    res = _dry_run_with(tmp_path, lambda c: c["tuning"]["grids"]["pgd"].update(eps=["4/255", "8/255"]))
    assert res.returncode != 0 and "tuning.grids.pgd.eps: eps is fixed by the evaluation" in res.stdout + res.stderr


def test_slurm_gpus_per_train_needs_the_per_job_cap_raised(tmp_path):
    """docs/slurm.md: in the slurm profile `gpu` is a cap per job, so `gpus_per_train: 2` asks SLURM for 2 GPUs
    only with `--resources gpu=2`; evaluations keep asking for 1."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed")
    copy_configs(tmp_path)
    cfg = yaml.safe_load((tmp_path / "config" / "tests.yaml").read_text())
    cfg.setdefault("resources", {}).update(gpus_per_train=2, jobs_per_gpu=1)
    (tmp_path / "config" / "g2.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = snakemake_env(EROSEG_SLURM_ACCOUNT="acct", EROSEG_SLURM_PARTITION="cpu", EROSEG_SLURM_GPU_PARTITION="gpu")
    profile = str(ROOT / "workflow" / "profiles" / "slurm")
    requests = {}
    for extra in ([], ["--resources", "gpu=2"]):
        res = subprocess.run(snakemake_cmd(tmp_path, "-n", "--profile", profile, "--configfile", "config/g2.yaml",
                                           *extra), capture_output=True, text=True, env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        requests[bool(extra)] = {(rule, gpus) for rule, gpus in re.findall(
            r"^ *rule (train|evaluate):\n(?: {4,}.*\n)*? {4,}resources: .*?\bgpu=(\d+)", res.stdout + res.stderr,
            flags=re.M)}
    assert requests == {False: {("train", "1"), ("evaluate", "1")}, True: {("train", "2"), ("evaluate", "1")}}


# ------------------------------------------------------------ tune list, inference and shards in the plan
def _plan(change=lambda cfg: None):
    from eroseg.plan import EvaluationPlan, attack_registry
    from tests.test_plan import load

    cfg = load("tests.yaml")
    change(cfg)
    with tempfile.TemporaryDirectory(prefix="registry") as cache:
        return EvaluationPlan(cfg, attack_registry(Path(cache), "test"))


def test_plan_refuses_a_tune_split_it_does_not_carve_and_reporting_on_tune():
    with pytest.raises(ValueError, match=r"dataset.val_split: 'tune' needs dataset.tune_size > 0"):
        _plan(lambda cfg: cfg["dataset"].update(val_split="tune"))
    with pytest.raises(ValueError, match=r"dataset.test_split: 'tune' is the list carved for the choices"):
        _plan(lambda cfg: cfg["dataset"].update(val_split="tune", tune_size=4, test_split="tune"))
    plan = _plan(lambda cfg: cfg["dataset"].update(val_split="tune", tune_size=4, tune_seed=2))
    assert plan.data_inputs() == ["results/tests/data/splits/tune.csv"]
    assert plan.prepare_tune_option() == (" --tune-from train --tune-size 4 --tune-seed 2"
                                          " --split-lists results/tests/data/splits")
    assert _plan().data_inputs() == [] and _plan().split_lists_option() == _plan().prepare_tune_option() == ""


def test_sharded_plan_puts_each_shard_in_its_folder_at_the_one_jobs_relative_paths():
    plan = _plan(lambda cfg: cfg["evaluation"].update(shards=3))
    one_job = plan.evaluation_settings("standard", 0)
    for index in range(3):
        folder = f"results/tests/eval_shards/standard/seed0/shard{index}of3"
        shard = plan.shard_settings("standard", 0, index)
        assert [item["out"] for item in shard] == [folder + item["out"][len(plan.eval_dir("standard", 0)):]
                                                   for item in one_job]
        assert [{**item, "out": None} for item in shard] == [{**item, "out": None} for item in one_job]
    assert plan.eval_shard_dirs("standard", 0)[2] == "results/tests/eval_shards/standard/seed0/shard2of3"
    assert "results/tests/benchmarks/evaluate_shard/standard_seed0_shard1of3.tsv" in plan.benchmark_files()
    assert not any("/evaluate/" in f for f in plan.benchmark_files())
    assert any("/evaluate/" in f for f in _plan().benchmark_files())


def test_bad_inference_block_is_named_when_the_workflow_is_parsed(tmp_path):
    def change(cfg):
        cfg["evaluation"]["inference"] = {"mode": "slide", "crop": [16, 16], "stride": [24, 8]}

    out = _failing_dry_run_output(tmp_path, change)
    assert "config key evaluation.inference.stride: [24, 8] is larger than the crop [16, 16]" in out


@pytest.mark.slow
def test_merged_shards_equal_the_one_job_folder_of_the_tests_config(workdir, tmp_path, monkeypatch):
    """Every setting of a tests-config model (plus SEA, with its components) evaluated as one job and as 3
    shards merged with ``eroseg merge-shards``: the same per-image counts and metrics in every file."""
    from eroseg import cli
    from eroseg.evaluate import EvalRecord
    from eroseg.io import eval_folder_files

    monkeypatch.chdir(workdir)  # the settings name the run's tuning files relative to it
    plan = _plan()
    settings = plan.evaluation_settings("standard", 0) + [
        {"setting": "sea", "attack": "sea", "params": {"eps": 8 / 255, "steps": 2}, "out": "sea/eps8_steps2.json"}]

    def run(folder, *extra):
        items = [{**item, "out": str(folder / Path(item["out"]).relative_to(plan.eval_dir("standard", 0)))
                  if item["out"].startswith("results/") else str(folder / item["out"])} for item in settings]
        assert cli.main(["evaluate", "--checkpoint", plan.model_path("standard", 0), "--dataset", "synthetic",
                         "--root", plan.data_root(), "--split", "test", "--batch-size", "4", "--seed", "0",
                         "--settings", json.dumps(items), "--manifest", str(folder / "manifest.json"),
                         "--device", "cpu", "--quiet", *extra]) == 0

    run(tmp_path / "one")
    for index in range(3):
        run(tmp_path / f"shard{index}", "--shard", f"{index}/3")
    assert cli.main(["merge-shards", "--shards", *(str(tmp_path / f"shard{i}") for i in range(3)),
                     "--out-dir", str(tmp_path / "merged"), "--quiet"]) == 0
    names = [p.relative_to(tmp_path / "one") for p in eval_folder_files(tmp_path / "one")]
    assert names == [p.relative_to(tmp_path / "merged") for p in eval_folder_files(tmp_path / "merged")]
    assert len(names) == len(settings) and Path("sea/eps8_steps2.json") in names
    shard_sizes = [EvalRecord.read(tmp_path / f"shard{i}" / "clean.json").num_images for i in range(3)]
    assert shard_sizes == [4, 4, 8]  # 16 images, 4 batches of 4
    for name in names:
        one, merged = (EvalRecord.read(tmp_path / folder / name).to_json() for folder in ("one", "merged"))
        one.pop("seconds"), merged.pop("seconds")
        assert merged == one, name
    sea = EvalRecord.read(tmp_path / "merged" / "sea" / "eps8_steps2.json")
    assert len(sea.components) == 4 and sea.miou < EvalRecord.read(tmp_path / "merged" / "clean.json").miou
