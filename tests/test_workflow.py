"""The Snakemake workflow end to end on config/tests.yaml, and what reruns after a change."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow


def _env():
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--directory", str(workdir),
           "--snakefile", str(ROOT / "Snakefile"), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=workdir)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}")
    return res


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
def workdir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("wf")
    # The Snakefile resolves workflow/ and the package sources relative to itself; configs are
    # copied so each test can change its own copy.
    shutil.copytree(ROOT / "config", wd / "config")
    snakemake(wd, "--configfile", "config/tests.yaml")
    return wd


def test_end_to_end_table_values(workdir):
    out = workdir / "results" / "tests"
    main = pd.read_csv(out / "tables" / "main_values.csv", index_col=0)
    cfg = yaml.safe_load((workdir / "config" / "tests.yaml").read_text())
    assert list(main.index) == list(cfg["methods"])
    assert list(main.columns) == ["clean", *cfg["evaluation"]["main_attacks"], "worst_case"]
    n_classes = len(json.loads((out / "eval/standard/seed0/clean.json").read_text())["per_class_iou"])
    clean = main.loc["standard", "clean"]
    assert clean > 1.5 / n_classes, f"clean mIoU {clean:.3f} not above chance"
    assert main.loc["standard", "pgd"] < clean
    # The worst case is never better than any single attack it ranges over.
    for m in main.index:
        assert main.loc[m, "worst_case"] <= main.loc[m, cfg["evaluation"]["worst_case"]].min() + 1e-9
    # The table agrees with the per-job JSON.
    pgd = json.loads((out / "eval/standard/seed0/pgd/eps8_steps3.json").read_text())
    assert main.loc["standard", "pgd"] == pytest.approx(pgd["miou"])
    for f in ("robust_vs_steps", "robust_vs_eps", "per_class_iou", "training_curves", "qualitative", "erosion"):
        png = out / "figures" / f"{f}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
        assert (out / "figures" / f"{f}.svg").read_text().lstrip().startswith("<?xml")
    assert (out / "tables" / "main.md").read_text().startswith("## ")


def test_second_dry_run_has_nothing_to_do(workdir):
    assert planned_jobs(workdir, "--configfile", "config/tests.yaml") == {}


def test_changing_one_attack_reruns_only_its_evaluations(workdir):
    cfg_path = workdir / "config" / "tests.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["evaluation"]["attacks"]["eroseg"]["params"] = {"q0": 0.5}
    changed = workdir / "config" / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg, sort_keys=False))
    jobs = planned_jobs(workdir, "--configfile", str(changed))
    # eroseg: 2 models at the headline + ablation reuse (same file) ; samples uses eroseg too.
    assert set(jobs) <= {"evaluate_attack", "samples", "aggregate", "figures", "all"}, jobs
    assert "train" not in jobs and "evaluate_clean" not in jobs
    assert jobs.get("evaluate_attack") == 2  # standard and pgd_at at the headline setting


def test_changing_one_method_retrains_only_that_method(workdir):
    cfg = yaml.safe_load((workdir / "config" / "tests.yaml").read_text())
    cfg["methods"]["pgd_at"]["params"] = {"random_start": False}
    changed = workdir / "config" / "method.yaml"
    changed.write_text(yaml.safe_dump(cfg, sort_keys=False))
    jobs = planned_jobs(workdir, "--configfile", str(changed))
    evals = [p for p in (workdir / "results/tests/eval/pgd_at/seed0").rglob("*.json") if p.name != "clean.json"]
    # pgd_at is retrained and each of its evaluations redone; nothing of `standard` (which also
    # owns the samples, sweeps and ablation) runs again.
    assert jobs == {"train": 1, "evaluate_clean": 1, "evaluate_attack": len(evals), "aggregate": 1, "figures": 1,
                    "all": 1}, jobs


def test_changing_figure_style_reruns_no_evaluation(workdir):
    cfg = yaml.safe_load((workdir / "config" / "tests.yaml").read_text())
    cfg["figures"]["dpi"] = 61
    changed = workdir / "config" / "style.yaml"
    changed.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert planned_jobs(workdir, "--configfile", str(changed)) == {"figures": 1, "all": 1}


def test_bad_config_names_the_key(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    cfg = yaml.safe_load((tmp_path / "config" / "tests.yaml").read_text())
    cfg["train"]["epochs"] = 0
    (tmp_path / "config" / "bad.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = snakemake(tmp_path, "-n", "--configfile", "config/bad.yaml", check=False)
    assert res.returncode != 0
    assert "epochs" in res.stdout + res.stderr


def test_slurm_profile_dry_run_requests_gpus(tmp_path):
    """The slurm profile (plugin installed) plans every GPU rule with a GPU request; local rules stay local."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed")
    shutil.copytree(ROOT / "config", tmp_path / "config")
    env = dict(_env(), EROSEG_SLURM_ACCOUNT="acct", EROSEG_SLURM_PARTITION="cpu", EROSEG_SLURM_GPU_PARTITION="gpu")
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"),
         "--profile", str(ROOT / "workflow" / "profiles" / "slurm"), "--configfile", "config/tests.yaml"],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    blocks: dict[str, list[str]] = {}
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", out, flags=re.M):
        blocks.setdefault(m.group(1), []).append(m.group(2))
    for rule in ("train", "evaluate_attack", "evaluate_clean", "samples"):
        assert blocks.get(rule), (rule, out[-2000:])
        for b in blocks[rule]:
            assert "gpu=1" in b and "slurm_partition=gpu" in b, b
    for rule in ("aggregate", "figures"):
        assert blocks.get(rule) and all("gpu=" not in b for b in blocks[rule])
    # Multi-GPU training: the rule's gpu=N request reaches SLURM (the profile must not override it).
    cfg = yaml.safe_load((tmp_path / "config" / "tests.yaml").read_text())
    cfg["resources"]["gpus_per_train"] = 2
    (tmp_path / "config" / "two.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"),
         "--profile", str(ROOT / "workflow" / "profiles" / "slurm"), "--configfile", "config/two.yaml"],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    train_blocks = re.findall(r"^rule train:\n((?:    .*\n)+)", res.stdout + res.stderr, flags=re.M)
    assert train_blocks and all("gpu=2" in b for b in train_blocks), train_blocks
