"""What reaches the console: the profile's printed commands, and `eroseg status` reading the job logs."""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from pathlib import Path

import pytest

from eroseg.cli import main
from eroseg.status import format_status, job_progress, run_status
from tests.conftest import ROOT, TINY_UNET

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the CLI's log format (cli._setup)


# ------------------------------------------------------------------ profile
def _local_run_commands() -> list[tuple[str, list[str]]]:
    """The commands the docs give for a local pipeline run: `make run`'s recipe and README's snakemake lines."""
    commands = []
    make = (ROOT / "Makefile").read_text()
    recipe = make[make.index("\nrun:"):].split("\n\n")[0]
    for line in (x for x in recipe.splitlines() if "/snakemake " in x):
        argv = shlex.split(line.split("/snakemake", 1)[1])
        if "--report" not in argv:
            commands.append((f"Makefile run: {line.strip()}", argv))
    readme = (ROOT / "README.md").read_text()
    for line in re.findall(r"^snakemake [^\n#]*", readme, flags=re.M):
        argv = shlex.split(line)[1:]
        if not {"--report", "--unlock"} & set(argv):
            commands.append((f"README: {line.strip()}", argv))
    return commands


@pytest.mark.parametrize(("where", "argv"), _local_run_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_documented_run_prints_its_commands_and_failed_logs(where, argv, monkeypatch):
    # Snakemake loads profiles/default by itself only next to the Snakefile or the current folder;
    # this workflow keeps its profiles in workflow/profiles, so a command must name one.
    from snakemake.cli import parse_args

    monkeypatch.chdir(ROOT)
    argv = [a.replace("$(CORES)", "2") for a in argv]
    _, args = parse_args(argv)
    assert args.printshellcmds and args.show_failed_logs, where


def test_the_default_profile_is_not_loaded_implicitly(monkeypatch):
    """Why the commands must name it (if this starts failing, Snakemake found it by itself: simplify the docs)."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(ROOT)
    assert not parse_args(["--cores", "2"])[1].printshellcmds


# ------------------------------------------------------------------- status
def _write_log(path: Path, lines: list[tuple[float, str, str]], mtime: float) -> Path:
    """A job log as the CLI writes it: ``lines`` of (unix time, level, message)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))},000 {level} eroseg.train: {msg}\n"
                   for t, level, msg in lines)
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


def test_status_reads_progress_and_eta_from_the_logs(tmp_path):
    now = 1_800_000_000.0
    logs = tmp_path / "results" / "voc" / "logs"
    # 3 of 10 epochs, one every 100 s, the last 30 s ago: 7 left, ETA 700 - 30 s
    _write_log(logs / "train" / "pgd_at_seed0.log",
               [(now - 230 - 100 * (2 - k), "INFO", f"epoch {k + 1}/10: loss 0.5, 1.0 s") for k in range(3)],
               now - 30)
    _write_log(logs / "eval" / "standard_seed0.log",
               [(now - 900, "INFO", "evaluating 2 settings: clean, pgd"),
                (now - 800, "INFO", "setting 1/2 clean: mIoU 0.6"), (now - 700, "INFO", "setting 2/2 pgd: mIoU 0.2")],
               now - 700)
    _write_log(logs / "tune" / "pgd.log", [(now - 5000, "INFO", "candidate 1/4 {'step_size': 'eps/4'}: mean 0.3")],
               now - 5000)
    _write_log(logs / "train" / "standard_seed1.log",
               [(now - 60, "INFO", "epoch 1/10: loss 1.0"), (now - 50, "ERROR", "training diverged at step 3")],
               now - 50)
    jobs = {j.name: j for j in run_status(logs.parent, now=now, stale_after=600)}
    train = jobs["train/pgd_at_seed0"]
    assert (train.state, train.unit, train.done, train.total) == ("running", "epoch", 3, 10)
    assert train.seconds_per_unit == pytest.approx(100) and train.eta_s == pytest.approx(700)
    assert (jobs["eval/standard_seed0"].state, jobs["eval/standard_seed0"].unit) == ("finished", "setting")
    assert (jobs["tune/pgd"].state, jobs["tune/pgd"].done, jobs["tune/pgd"].total) == ("stopped", 1, 4)
    assert jobs["train/standard_seed1"].state == "failed"
    text = format_status(logs.parent, list(jobs.values()))
    assert text.splitlines()[0].endswith("4 job logs, 1 running, 1 stopped, 1 failed, 1 finished")
    (line,) = [x for x in text.splitlines() if "pgd_at_seed0" in x]
    assert "epoch 3/10" in line and "ETA 11 min 10 s" in line and "last line 30 s ago" in line
    assert "eval/standard_seed0" not in text  # finished jobs only with --all
    assert "training diverged at step 3" in text


def test_status_command_names_a_folder_without_logs(tmp_path, monkeypatch, caplog):
    (tmp_path / "results" / "synthetic" / "logs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert main(["status", "results/voc"]) == 1
    assert any("results/voc/logs" in r.getMessage() and "synthetic" in r.getMessage() for r in caplog.records)
    assert main(["status"]) == 0


def test_tune_and_evaluate_log_the_units_status_counts(tmp_path, caplog):
    from eroseg.data import generate_synthetic
    from eroseg.models import create_model, save_checkpoint
    from eroseg.tune import tune

    caplog.set_level(logging.INFO)
    tune({"m": None}, lambda model, params: params["q0"], {}, {"q0": [0.1, 0.4]})
    root = generate_synthetic(tmp_path / "syn", n_train=2, n_val=2, height=32, width=32, seed=0)
    model = create_model("Unet", "resnet18", 8, encoder_depth=3, decoder_channels=(8, 8, 8))
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, model, {"model": TINY_UNET, "num_classes": 8, "method": "standard", "seed": 0,
                                  "dataset": "synthetic", "classes": ["c"] * 8})
    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(root), "--split",
                 "val", "--attack", "fgsm", "--attack-params", '{"eps": "4/255"}', "--out", str(tmp_path / "e.json"),
                 "--device", "cpu"]) == 0
    formatter = logging.Formatter(FORMAT)
    log = tmp_path / "logs" / "job.log"
    log.parent.mkdir()
    log.write_text("".join(formatter.format(r) + "\n" for r in caplog.records))
    job = job_progress(log)
    assert (job.unit, job.done, job.total, job.state) == ("setting", 1, 1, "finished")
    candidates = [r.getMessage() for r in caplog.records if r.getMessage().startswith("candidate ")]
    assert [c.split(" {")[0] for c in candidates] == ["candidate 1/2", "candidate 2/2"]
