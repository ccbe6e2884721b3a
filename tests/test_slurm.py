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

from eroseg.io import EVAL_MANIFEST
from tests.conftest import ROOT, snakemake_cmd, snakemake_env

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
# Snakemake with the plugin's status checks at most 1 s apart (the plugin backs off by 10 s per check).
FAST_POLL = ROOT / "tests" / "slurm" / "snakemake_fast_poll.py"
pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # minutes: `make test-slurm`, not `make test`
GPU_RULES = ("train", "tune", "evaluate", "samples")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, EROSEG_SLURM_DIR=str(d), EROSEG_SLURM_GPUS="2",
               EROSEG_SLURM_PORT=os.environ.get("EROSEG_SLURM_PORT", "6937"))
    res = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        pytest.skip((res.stderr or res.stdout).strip().splitlines()[-1])
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed")
    env["SLURM_CONF"] = env["EROSEG_SLURM_CONF"] = str(d / "etc" / "slurm.conf")
    env["PATH"] = f"{d / 'bin'}{os.pathsep}{env['PATH']}"  # the srun shim (see cluster.sh)
    yield env
    subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, text=True, env=env)


def _snakemake_cmd(workdir, env, *args, target=()):
    """The command and environment of a run through the slurm profile, scaled to the test node."""
    env = dict(env, MPLBACKEND="Agg", EROSEG_SLURM_ACCOUNT="", EROSEG_SLURM_PARTITION="debug",
               EROSEG_SLURM_GPU_PARTITION="debug")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    # Targets go before the options, several of which take a list of values.
    cmd = [sys.executable, str(FAST_POLL), *target, "--directory", str(workdir), "--snakefile", str(ROOT / "Snakefile"),
           "--profile", str(ROOT / "workflow" / "profiles" / "slurm"), "--slurm-no-account",
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
           "--seconds-between-status-checks", "1",
           # The test node has 2 CPUs and ~19 GB: scale the profile's requests down, keep the GPU request.
           "--set-resources", *[f"{r}:{k}={v}" for r in GPU_RULES for k, v in (("cpus_per_task", 1), ("mem_mb", 2000))],
           *args]
    return cmd, env


def _snakemake(workdir, env, *args, check=True):
    cmd, env = _snakemake_cmd(workdir, env, "--slurm-keep-successful-logs", "--slurm-logdir",
                              str(workdir / "slurm-logs"), *args)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{res.stdout[-4000:]}\n{res.stderr[-8000:]}")
    return res


def test_dry_run_requests_gpus_and_groups_evaluations(tmp_path, cluster):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    cfg = yaml.safe_load((tmp_path / "config" / "tests.yaml").read_text())
    cfg["resources"]["gpus_per_train"] = 2  # above the per-job gpu=1 limit of grouped jobs: still allowed
    (tmp_path / "config" / "two.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = _snakemake(tmp_path, cluster, "-n", "--configfile", "config/two.yaml")
    out = res.stdout + res.stderr
    models = len(cfg["methods"]) * len(cfg["seeds"])
    assert re.search(rf"train\s+{models}\b", out) and re.search(rf"evaluate\s+{models}\b", out), out[-3000:]
    assert "-m torch.distributed.run --standalone --nproc_per_node=2 -m eroseg train" in out  # torchrun


def test_pipeline_through_slurm_matches_local(tmp_path, cluster, request):
    slurm_dir = tmp_path / "slurm"
    local_dir = tmp_path / "local"
    # The tests config with one seed: one model per method proves the point.
    cfg = yaml.safe_load((ROOT / "config" / "tests.yaml").read_text())
    cfg["seeds"] = [0]
    models, families = len(cfg["methods"]), len(cfg["tuning"]["grids"])
    for d in (slurm_dir, local_dir):
        shutil.copytree(ROOT / "config", d / "config")
        (d / "config" / "one_seed.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # The local reference runs beside the SLURM run: the SLURM run mostly waits (submission, status checks,
    # Snakemake starting inside each job), so the two overlap well on a small machine.
    local = subprocess.Popen(snakemake_cmd(local_dir, "--cores", "2", "--configfile", "config/one_seed.yaml"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=snakemake_env(),
                             cwd=local_dir)
    request.addfinalizer(lambda: local.poll() is None and (local.kill(), local.wait()))
    t0 = time.time()
    # Groups: the data steps make one SLURM job, the tuning of every family one, and the evaluations (one
    # per model, plus the samples job and one minimal-norm job per model and attack on the first seed) two
    # per SLURM job, which run side by side on the node's two GPUs.
    res = _snakemake(slurm_dir, cluster, "--configfile", "config/one_seed.yaml", "--group-components",
                     "evaluation=2", f"tuning={families}")
    wall = time.time() - t0
    out = res.stdout + res.stderr
    submitted = re.findall(r"Job \S+ has been submitted with SLURM jobid (\d+)", out)
    logs = {p.stem: p.relative_to(slurm_dir / "slurm-logs") for p in (slurm_dir / "slurm-logs").rglob("*.log")}
    print(f"SLURM run: {wall:.0f} s, {len(submitted)} jobs submitted: {sorted(map(str, logs.values()))}")
    # One SLURM job id per submitted job, each with its own log; the groups are one job each.
    min_norm = models * len(cfg["evaluation"]["min_norm"]["attacks"])
    eval_jobs = -(-(models + 1 + min_norm) // 2)
    assert len(submitted) == len(set(submitted)) == len(logs) == 1 + 1 + eval_jobs + models, (submitted, logs)
    assert set(submitted) == set(logs)
    # Log folders: group_<group>_<its rules>, rule_<rule>.
    tops = sorted(str(p.parts[0]) for p in logs.values())
    assert tops.count("group_data_prepare_synthesize") == 1 and tops.count("group_tuning_tune") == 1, tops
    assert tops.count("rule_train") == models, tops
    assert sum(t.startswith("group_evaluation_") for t in tops) == eval_jobs, tops
    # SLURM ran exactly these jobs, to completion.
    done = re.findall(r"JobId=(\d+) .*?JobState=(\S+)", (Path(cluster["EROSEG_SLURM_DIR"]) / "log" / "jobcomp.txt")
                      .read_text())
    assert {j for j, state in done if j in logs and state == "COMPLETED"} == set(logs)
    # Each group's one SLURM job ran its members (its log is the job's Snakemake output).
    def ran(group):
        return [re.findall(r"^rule (\w+):", (slurm_dir / "slurm-logs" / p).read_text(), re.M)
                for p in logs.values() if p.parts[0].startswith(group)]
    assert sorted(sum(ran("group_evaluation"), [])) == sorted(["evaluate"] * models + ["min_norm"] * min_norm
                                                              + ["samples"]), ran("group_evaluation")
    assert all(len(r) <= 2 for r in ran("group_evaluation"))
    assert ran("group_tuning") == [["tune"] * families] and sorted(ran("group_data")[0]) == ["prepare", "synthesize"]
    # Local rules never went to SLURM.
    assert not any("aggregate" in str(p) or "figures" in str(p) for p in logs.values())
    local_out = local.communicate(timeout=900)[0]
    assert local.returncode == 0, local_out[-4000:]
    a = pd.read_csv(slurm_dir / "results/tests/tables/main_values.csv", index_col=0)
    b = pd.read_csv(local_dir / "results/tests/tables/main_values.csv", index_col=0)
    pd.testing.assert_frame_equal(a, b, atol=1e-6, rtol=0)
    # Every evaluation, image by image (each folder's manifest.json lists the files; it holds no counts).
    def records(root):
        return sorted(p.relative_to(root) for p in (root / "results/tests/eval").rglob("*.json")
                      if p.name != EVAL_MANIFEST)

    evals = records(slurm_dir)
    assert len(evals) > models * 5 and evals == records(local_dir)
    for rel in evals:
        ea, eb = (json.loads((d / rel).read_text()) for d in (slurm_dir, local_dir))
        assert ea["per_image"] == eb["per_image"], rel


def _squeue(env):
    # Job id, state and comment: the executor plugin puts the rule's name into the comment.
    res = subprocess.run(["squeue", "-h", "-o", "%i %T %k"], capture_output=True, text=True, env=env)
    rows = [line.split(maxsplit=2) for line in res.stdout.splitlines() if line.strip()]
    return [row + [""] * (3 - len(row)) for row in rows]


def test_cancelled_training_job_resumes_from_its_checkpoint(tmp_path, cluster):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    cfg = yaml.safe_load((tmp_path / "config" / "tests.yaml").read_text())
    cfg["train"].update(epochs=8, checkpoint_every=2)
    (tmp_path / "config" / "kill.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    partial = tmp_path / "results/tests/models/standard/seed0/model.pt.partial"
    # Only what training needs (the evaluations would add minutes, not evidence).
    cmd, env = _snakemake_cmd(tmp_path, cluster, "--configfile", "config/kill.yaml",
                              target=["results/tests/models/standard/seed0/model.pt"])
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
