"""Training checkpoints and the loop's guards (eroseg/training/checkpoint.py and loop.py): a partial checkpoint
is resumed only by the run it belongs to, non-finite weights are never checkpointed, an exploding loss stops the
run, one writer per output, stale temporary files are removed and a resumed epoch logs its whole loss."""

import csv
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import eroseg.training.loop as train_module
from eroseg.io import OutputLockedError
from eroseg.models import SegmentationModel, load_checkpoint
from eroseg.training import RUN_IDENTITY, LossExplosionError, NonFiniteWeightsError, TrainConfig, train

TINY = {"arch": "tiny"}
REPO = Path(__file__).resolve().parents[1]  # metadata only: these tests pass the model itself


class Halves(torch.utils.data.Dataset):
    """Left half class 0, right half class 1, noisy colours: learnable in a few steps."""

    def __init__(self, n=16, size=8):
        g = torch.Generator().manual_seed(0)
        self.labels = torch.zeros(n, size, size, dtype=torch.long)
        self.labels[:, :, size // 2:] = 1
        base = torch.where(self.labels.unsqueeze(1) == 1, 0.7, 0.3).expand(n, 3, size, size)
        self.images = (base + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def tiny(num_classes=2, net=None):
    torch.manual_seed(0)
    net = net if net is not None else torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, num_classes, 1))
    return SegmentationModel(net, pad_multiple=1)


BASE = dict(model_cfg=TINY, num_classes=2, seed=0, train=dict(epochs=2, batch_size=4, lr=0.05, amp=False),
            meta={"method": "pgd_at", "attack": "pgd", "attack_params": {"eps": "8/255"}, "dataset": "synthetic"})


def fit(tmp_path, model=None, name="m", max_steps=None, **over):
    s = {**BASE, **over}
    return train(model if model is not None else tiny(s["num_classes"]), train_set=Halves(), val_set=None,
                 num_classes=s["num_classes"], model_cfg=s["model_cfg"], cfg=TrainConfig.from_dict(s["train"]),
                 attack=None, out=tmp_path / f"{name}.pt", log_path=tmp_path / f"{name}.csv", seed=s["seed"],
                 meta=s["meta"], progress=False, max_steps=max_steps, objective=s.get("objective"))


# ---------------------------------------------------------------------------- resume only what matches
CHANGES = {
    "model": dict(model_cfg={"arch": "tiny", "width": 8}),
    "train": dict(train={**BASE["train"], "lr": 0.01}),
    "method": dict(meta={**BASE["meta"], "method": "segpgd_at"}),
    "objective": dict(objective={"name": "adversarial", "adv_fraction": 1.0}),
    "attack": dict(meta={**BASE["meta"], "attack": "segpgd"}),
    "attack_params": dict(meta={**BASE["meta"], "attack_params": {"eps": "4/255"}}),
    "seed": dict(seed=1),
    "dataset": dict(meta={**BASE["meta"], "dataset": "voc"}),
    "num_classes": dict(num_classes=3),
    "version": {},  # the package version is patched below
}


def test_every_identity_field_has_a_test():
    assert set(CHANGES) == set(RUN_IDENTITY)


@pytest.mark.parametrize("field", list(CHANGES))
def test_partial_checkpoint_of_another_run_is_set_aside(tmp_path, caplog, monkeypatch, field):
    fit(tmp_path, max_steps=2)
    if field == "version":
        monkeypatch.setattr(train_module, "__version__", "99.0")
    with caplog.at_level(logging.INFO, logger="eroseg.training"):
        fit(tmp_path, **CHANGES[field])
    aside = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert len(aside) == 1 and f" {field}" in aside[0] and "training starts over" in aside[0], aside
    assert not any("resuming" in r.getMessage() for r in caplog.records)
    assert len(list(tmp_path.glob("m.pt.partial.set-aside-*"))) == 1  # renamed, not deleted
    meta = load_checkpoint(tmp_path / "m.pt")["meta"]
    assert len(list(csv.DictReader(open(tmp_path / "m.csv")))) == 2  # both epochs trained from scratch
    assert meta["version"] == ("99.0" if field == "version" else meta["version"])


def test_partial_checkpoint_of_the_same_run_is_resumed(tmp_path, caplog):
    fit(tmp_path, max_steps=2)
    with caplog.at_level(logging.INFO, logger="eroseg.training"):
        fit(tmp_path)
    # 1-based: 2 of the 4 steps of the first epoch were done, so step 3 runs next.
    assert any("resuming" in r.getMessage() and "epoch 1/2, step 3/4" in r.getMessage() for r in caplog.records)
    assert not list(tmp_path.glob("*set-aside*"))


# ---------------------------------------------------------------------- finite weights, exploding loss
class PoisonedBuffer(torch.nn.Module):
    """A finite output, but a buffer that turns NaN from the 3rd training pass on (as a BN statistic can)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.register_buffer("stat", torch.zeros(1))
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls >= 3:
                self.stat.fill_(float("nan"))
        return self.conv(x)


def test_non_finite_buffer_is_never_checkpointed(tmp_path):
    with pytest.raises(NonFiniteWeightsError, match=r"at the end of epoch 1 \(net\.stat\).*m\.pt\.partial"):
        fit(tmp_path, model=tiny(net=PoisonedBuffer()), train={**BASE["train"], "checkpoint_every": 2})
    kept = load_checkpoint(tmp_path / "m.pt.partial")
    assert kept["train_state"]["step"] == 2 and torch.isfinite(kept["state_dict"]["net.stat"]).all()
    assert not (tmp_path / "m.pt").exists()


class Exploding(torch.nn.Module):
    """Logits multiplied by 1e5 from the 6th training pass on: a finite loss that explodes."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls += int(self.training)
        return self.conv(x) * (1e5 if self.calls >= 6 else 1.0)


def test_exploding_loss_stops_with_epoch_step_and_last_checkpoint(tmp_path):
    # 4 steps per epoch: the 6th pass is epoch 2, step 2 (1-based); epoch 1's checkpoint is the last good one.
    with pytest.raises(LossExplosionError, match=r"at epoch 2, step 2 .*kept at .*m\.pt\.partial"):
        fit(tmp_path, model=tiny(net=Exploding()))
    assert load_checkpoint(tmp_path / "m.pt.partial")["train_state"]["epoch"] == 1
    fit(tmp_path, model=tiny(net=Exploding()), name="off", train={**BASE["train"], "loss_explosion_factor": 0})
    assert (tmp_path / "off.pt").exists()  # 0 disables the check


# ------------------------------------------------------------------------------- one writer per output
HOLD = ("import sys, time; from eroseg.io import exclusive_lock\n"
        "with exclusive_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")


def _holder(out):
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": path})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    proc = _holder(tmp_path / "m.pt")
    try:
        t0 = time.perf_counter()
        with pytest.raises(OutputLockedError, match=rf"m\.pt: another eroseg process \(pid {proc.pid}\)"):
            fit(tmp_path)
        assert time.perf_counter() - t0 < 5 and not (tmp_path / "m.pt.partial").exists()
    finally:
        proc.kill()
        proc.wait()
    # Killed with SIGKILL, the holder left its lock file behind; it must not block.
    assert (tmp_path / "m.pt.lock").exists()
    fit(tmp_path)
    assert (tmp_path / "m.pt").exists() and not (tmp_path / "m.pt.lock").exists()


# ------------------------------------------------------------ leftover temporary files, resumed epochs
def test_stale_temp_files_are_removed_on_the_next_start(tmp_path):
    stale = [tmp_path / ".m.abcd1234.tmp.pt", tmp_path / ".m.pt.abcd1234.tmp.partial", tmp_path / ".m.abcd1234.tmp.csv"]
    other = tmp_path / ".other.abcd1234.tmp.pt"
    for p in [*stale, other]:
        p.write_bytes(b"x" * 100)
    fit(tmp_path, train={**BASE["train"], "epochs": 1})
    assert not any(p.exists() for p in stale) and other.exists()


def test_resumed_epoch_logs_the_loss_of_the_whole_epoch(tmp_path):
    fit(tmp_path, name="full")
    fit(tmp_path, name="part", max_steps=3)  # stopped after 3 of the 4 steps of epoch 1
    fit(tmp_path, name="part")
    full = list(csv.DictReader(open(tmp_path / "full.csv")))
    part = list(csv.DictReader(open(tmp_path / "part.csv")))
    assert [r["loss"] for r in part] == [r["loss"] for r in full]

