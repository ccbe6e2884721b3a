"""The pipeline through the `slurm` profile against a real single-node SLURM (tests/slurm/cluster.sh).

Marked `slurm`: `pytest -m slurm`. The cluster script installs slurm-wlm and munge with
apt when run as root; when it cannot start a cluster, the tests are skipped with its reason.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
pytestmark = pytest.mark.slurm
GPU_RULES = ("train", "evaluate_clean", "evaluate_attack", "samples")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, EROSEG_SLURM_DIR=str(d), EROSEG_SLURM_GPUS="2", EROSEG_SLURM_PORT="6937")
    res = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        pytest.skip((res.stderr or res.stdout).strip().splitlines()[-1])
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed")
    env["SLURM_CONF"] = env["EROSEG_SLURM_CONF"] = str(d / "etc" / "slurm.conf")
    env["PATH"] = f"{d / 'bin'}{os.pathsep}{env['PATH']}"  # the srun shim (see cluster.sh)
    yield env
    subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, text=True, env=env)


def _snakemake(workdir, env, *args, check=True):
    env = dict(env, MPLBACKEND="Agg", EROSEG_SLURM_ACCOUNT="", EROSEG_SLURM_PARTITION="debug",
               EROSEG_SLURM_GPU_PARTITION="debug")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(workdir), "--snakefile", str(ROOT / "Snakefile"),
           "--profile", str(ROOT / "workflow" / "profiles" / "slurm"), "--slurm-no-account",
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--slurm-keep-successful-logs", "--slurm-logdir", str(workdir / "slurm-logs"),
           # The test node has 2 CPUs and ~19 GB: scale the profile's requests down, keep the GPU request.
           "--set-resources", *[f"{r}:{k}={v}" for r in GPU_RULES for k, v in (("cpus_per_task", 1), ("mem_mb", 2000))],
           *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{res.stdout[-4000:]}\n{res.stderr[-8000:]}")
    return res


def test_dry_run_requests_gpus(tmp_path, cluster):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    res = _snakemake(tmp_path, cluster, "-n", "--configfile", "config/tests.yaml")
    assert res.returncode == 0


def test_pipeline_through_slurm_matches_local(tmp_path, cluster):
    slurm_dir = tmp_path / "slurm"
    local_dir = tmp_path / "local"
    for d in (slurm_dir, local_dir):
        shutil.copytree(ROOT / "config", d / "config")
    t0 = time.time()
    res = _snakemake(slurm_dir, cluster, "--configfile", "config/tests.yaml")
    wall = time.time() - t0
    out = res.stdout + res.stderr
    ids = set(re.findall(r"SLURM run ID:? *(\d+)|Job \d+ has been submitted with SLURM jobid (\d+)", out))
    submitted = {i for pair in ids for i in pair if i}
    logs = list((slurm_dir / "slurm-logs").rglob("*.log"))
    rules_on_slurm = {p.parent.parent.name if p.parent.name.isdigit() else p.parent.name for p in logs}
    print(f"SLURM run: {wall:.0f} s, {len(submitted)} jobs submitted, rules {sorted(rules_on_slurm)}")
    assert submitted, out[-3000:]
    for rule in ("train", "evaluate_attack", "evaluate_clean"):
        assert any(rule in str(p) for p in logs), (rule, logs[:5])
    # Local rules never went to SLURM.
    assert not any("aggregate" in str(p) or "figures" in str(p) for p in logs)
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--directory", str(local_dir),
                    "--snakefile", str(ROOT / "Snakefile"), "--configfile", "config/tests.yaml"],
                   check=True, capture_output=True, env=env, cwd=local_dir)
    a = pd.read_csv(slurm_dir / "results/tests/tables/main_values.csv", index_col=0)
    b = pd.read_csv(local_dir / "results/tests/tables/main_values.csv", index_col=0)
    pd.testing.assert_frame_equal(a, b, atol=1e-6, rtol=0)


def _squeue(env):
    # Job id, state and comment: the executor plugin puts the rule's name into the comment.
    res = subprocess.run(["squeue", "-h", "-o", "%i %T %k"], capture_output=True, text=True, env=env)
    rows = [line.split(maxsplit=2) for line in res.stdout.splitlines() if line.strip()]
    return [row + [""] * (3 - len(row)) for row in rows]


def test_cancelled_training_job_resumes_from_its_checkpoint(tmp_path, cluster):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    cfg = yaml.safe_load((tmp_path / "config" / "tests.yaml").read_text())
    cfg["methods"] = {"standard": {"attack": None}}
    cfg["train"].update(epochs=8, checkpoint_every=2)
    for key in ("sweep", "ablation"):
        cfg["evaluation"][key]["method"] = "standard"
    (tmp_path / "config" / "kill.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    partial = tmp_path / "results/tests/models/standard/seed0/model.pt.partial"
    env = dict(cluster, MPLBACKEND="Agg", EROSEG_SLURM_ACCOUNT="", EROSEG_SLURM_PARTITION="debug",
               EROSEG_SLURM_GPU_PARTITION="debug")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    cmd = [sys.executable, "-m", "snakemake", "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"),
           "--profile", str(ROOT / "workflow" / "profiles" / "slurm"), "--slurm-no-account",
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--set-resources", *[f"{r}:{k}={v}" for r in GPU_RULES for k, v in (("cpus_per_task", 1), ("mem_mb", 2000))],
           "--configfile", "config/kill.yaml"]
    # Only what training needs (the evaluations would add minutes, not evidence); the target goes before
    # the options, which take several values each.
    cmd[3:3] = ["results/tests/models/standard/seed0/model.pt"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    cancelled = None
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        jobs = [j for j in _squeue(env) if j[1] == "RUNNING" and "train" in j[2]]
        if partial.exists() and jobs:
            cancelled = jobs[0][0]
            subprocess.run(["scancel", cancelled], env=env, check=True)
            break
        time.sleep(0.5)
    out1 = first.communicate(timeout=300)[0]
    assert cancelled, f"no training job was seen running with a checkpoint:\n{out1[-3000:]}"
    assert first.returncode != 0, "the run with a cancelled job must fail"
    assert not (tmp_path / "results/tests/models/standard/seed0/model.pt").exists()
    kept = partial.exists()
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    train_log = (tmp_path / "results/tests/logs/train/standard_seed0.log").read_text()
    print(f"cancelled SLURM job {cancelled}; checkpoint kept: {kept}")
    assert kept and "resuming" in train_log
    rows = pd.read_csv(tmp_path / "results/tests/models/standard/seed0/log.csv")
    assert list(rows["epoch"]) == list(range(1, 9))
