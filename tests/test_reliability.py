"""Never a silent wrong result (issue 15): resume only what matches, checkpoints that fit the data,
finite weights kept, one writer per output, one-line errors for bad input. One section per item."""

import csv
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eroseg.training.loop as train_module
from eroseg.cli import main
from eroseg.data import DatasetError, generate_synthetic, get_dataset
from eroseg.io import OutputLockedError, exclusive_lock
from eroseg.models import (
    SegmentationModel,
    check_checkpoint_matches,
    create_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from eroseg.training import (
    RUN_IDENTITY,
    AdversarialTraining,
    LossExplosionError,
    NonFiniteWeightsError,
    TrainConfig,
    adversarial_counts,
    train,
)
from tests.conftest import TINY_UNET as UNET

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


# ---------------------------------------------------------------- 1. resume only what matches
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


# ------------------------------------------------------- 2. checkpoints checked against the data
def test_malformed_checkpoint_metadata_is_one_line_naming_the_file(tmp_path):
    model = create_model("Unet", "resnet18", 2, encoder_depth=3, decoder_channels=(8, 8, 8))
    save_checkpoint(tmp_path / "nomodel.pt", model, {"num_classes": 2})
    with pytest.raises(ValueError, match=r"nomodel\.pt: checkpoint metadata lacks 'model'") as err:
        load_model(tmp_path / "nomodel.pt")
    assert "\n" not in str(err.value)
    other = {**UNET, "kwargs": {"encoder_depth": 3, "decoder_channels": [16, 16, 16]}}
    save_checkpoint(tmp_path / "mismatch.pt", model, {"model": other, "num_classes": 2})
    with pytest.raises(ValueError, match=r"mismatch\.pt: weights do not match") as err:
        load_model(tmp_path / "mismatch.pt")
    assert "\n" not in str(err.value)


def test_checkpoint_for_other_classes_or_dataset_is_refused():
    meta = {"num_classes": 21, "dataset": "voc"}
    with pytest.raises(ValueError, match=r"m\.pt: .*voc with 21 classes.*synthetic with 8 classes"):
        check_checkpoint_matches(meta, "synthetic", 8, "m.pt")
    with pytest.raises(ValueError, match="trained on voc"):
        check_checkpoint_matches(meta, "cityscapes", 21, "m.pt")
    check_checkpoint_matches(meta, "voc", 21, "m.pt")  # matches: no error


# ------------------------------------------------------------ 3. finite weights, exploding loss
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


# ------------------------------------------------------------------- 4. one writer per output
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


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with exclusive_lock(tmp_path / "e.json"):
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            with exclusive_lock(tmp_path / "e.json"):
                pass
    with exclusive_lock(tmp_path / "e.json"):  # released
        pass


# ------------------------------------------------------------ 5. adversarial share of the global batch
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("global_batch,world", [(1, 1), (4, 1), (8, 2), (6, 2), (16, 16), (32, 16)])
def test_adversarial_count_is_defined_on_the_global_batch(fraction, global_batch, world):
    counts = adversarial_counts(fraction, global_batch, world)
    expected = int(np.floor(fraction * global_batch + 0.5))
    expected = max(expected, 1) if fraction > 0 else 0
    assert len(counts) == world and sum(counts) == expected
    assert all(0 <= c <= global_batch // world for c in counts)
    assert max(counts) - min(counts) <= 1  # spread evenly
    assert counts == adversarial_counts(fraction, global_batch, world)  # deterministic


def test_batch_of_one_per_process_still_trains_on_adversarial_images():
    # 16 processes with one image each (global batch 16): half of them attack their image.
    assert sum(adversarial_counts(0.5, 16, 16)) == 8
    calls = []
    task = AdversarialTraining(torch.nn.Conv2d(3, 2, 1), lambda m, x, y, generator=None: calls.append(1) or x,
                        adv_fraction=0.5)
    res = task(torch.rand(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    assert int(res["adv_mask"].sum()) == 1 and calls == [1]


# ------------------------------------------------------------------------ 6. one-line errors
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    root = generate_synthetic(d / "syn", n_train=4, n_val=2, height=32, width=32, seed=0)
    model = create_model("Unet", "resnet18", 8, encoder_depth=3, decoder_channels=(8, 8, 8))
    save_checkpoint(d / "model.pt", model, {"model": UNET, "num_classes": 8, "dataset": "synthetic"})
    save_checkpoint(d / "three.pt", create_model("Unet", "resnet18", 3, encoder_depth=3, decoder_channels=(8, 8, 8)),
                    {"model": UNET, "num_classes": 3, "dataset": "synthetic"})
    return d, root


def _errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _train_args(root, tmp_path, train_cfg='{"epochs": 1, "batch_size": 4, "amp": false}'):
    return ["train", "--dataset", "synthetic", "--root", str(root), "--model", json.dumps(UNET),
            "--train", train_cfg, "--out", str(tmp_path / "m" / "m.pt"), "--log", str(tmp_path / "m" / "m.csv"),
            "--device", "cpu", "--quiet"]


def test_train_config_of_wrong_type_is_one_line(tmp_path, caplog):
    assert main(_train_args(tmp_path / "nodata", tmp_path, '{"epochs": "ten"}')) == 1
    (msg,) = _errors(caplog)
    assert "'epochs'" in msg and "integer" in msg and "'ten'" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="'crop_size': expected a list of integers"):
        TrainConfig.from_dict({"crop_size": ["a", 8]})


def test_unwritable_output_folder_fails_before_any_work(tmp_path, caplog):
    (tmp_path / "file").write_text("not a folder")
    args = _train_args(tmp_path / "nodata", tmp_path)  # the data does not even exist: no work was started
    args[args.index("--out") + 1] = str(tmp_path / "file" / "m.pt")
    assert main(args) == 1
    (msg,) = _errors(caplog)
    assert "file: cannot write the checkpoint (--out) m.pt" in msg
    caplog.clear()
    assert main(["attack", "--checkpoint", str(tmp_path / "missing.pt"), "--images", str(tmp_path),
                 "--attack", "fgsm", "--out-dir", str(tmp_path / "file" / "out"), "--quiet"]) == 1
    (msg,) = _errors(caplog)
    assert "cannot write the attack outputs (--out-dir)" in msg


def test_full_disk_is_one_line(synthetic, tmp_path, caplog, monkeypatch):
    _, root = synthetic

    def full(*args, **kwargs):  # what torch raises when the disk is full
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr("eroseg.models._low_on_space", lambda path: True)
    assert main(_train_args(root, tmp_path)) == 1
    (msg,) = _errors(caplog)
    assert msg.startswith("no space left on device while writing ") and "m.pt.partial" in msg and "\n" not in msg


def _png(path, size=(32, 32)):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def test_attack_skips_a_non_image_png_and_lists_it(synthetic, tmp_path, caplog):
    d, _ = synthetic
    folder = tmp_path / "imgs"
    folder.mkdir()
    _png(folder / "a.png")
    (folder / "b.png").write_text("not an image")
    _png(folder / "c.png")
    assert main(["attack", "--checkpoint", str(d / "model.pt"), "--images", str(folder), "--attack", "fgsm",
                 "--attack-params", '{"eps": "4/255"}', "--out-dir", str(tmp_path / "out"), "--device", "cpu"]) == 0
    rows = {r["id"]: r for r in csv.DictReader(open(tmp_path / "out" / "summary.csv"))}
    assert list(rows) == ["a", "b", "c"]
    assert rows["b"]["skipped"].startswith("not readable") and not rows["a"]["skipped"] and not rows["c"]["skipped"]
    assert sorted(p.name for p in (tmp_path / "out" / "adv").iterdir()) == ["a.png", "c.png"]
    assert any("b: skipped" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_attack_refuses_a_checkpoint_of_other_classes(synthetic, tmp_path, caplog):
    d, root = synthetic
    assert main(["attack", "--checkpoint", str(d / "three.pt"), "--dataset", "synthetic", "--root", str(root),
                 "--attack", "fgsm", "--attack-params", '{"eps": "4/255"}', "--out-dir", str(tmp_path / "o"),
                 "--device", "cpu"]) == 1
    (msg,) = _errors(caplog)
    assert "three.pt" in msg and "3 classes" in msg and "8 classes" in msg


# ---------------------------------------------------------------------- 7. validation gaps
def test_model_kwargs_typo_names_the_closest_valid_name():
    with pytest.raises(ValueError, match=r"unknown parameter 'decoder_chanels' for Unet; did you mean "
                                         r"'decoder_channels'\?"):
        create_model("Unet", "resnet18", 2, encoder_depth=3, decoder_chanels=(8, 8, 8))
    with pytest.raises(ValueError, match="'classes' is set by eroseg"):
        create_model("Unet", "resnet18", 2, classes=3)


def test_duplicate_ids_in_a_split_list_are_refused(synthetic):
    _, root = synthetic
    lst = root / "ImageSets" / "Segmentation" / "val.txt"
    text = lst.read_text()
    first = text.split()[0]
    lst.write_text(text + first + "\n")
    try:
        with pytest.raises(DatasetError, match=rf"val\.txt: sample id '{first}' is listed twice"):
            get_dataset("synthetic", root, "val")
    finally:
        lst.write_text(text)


# --------------------------------------------------------------- 8. leftovers and small lies
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


# ------------------------------------------------------------------------ 9. size and pictures
def test_attack_refuses_images_above_the_pixel_budget(synthetic, tmp_path, caplog):
    d, _ = synthetic
    folder = tmp_path / "imgs"
    folder.mkdir()
    _png(folder / "big.png", (64, 64))
    _png(folder / "small.png", (16, 16))
    args = ["attack", "--checkpoint", str(d / "model.pt"), "--images", str(folder), "--attack", "fgsm",
            "--attack-params", '{"eps": "4/255"}', "--out-dir", str(tmp_path / "out"), "--device", "cpu",
            "--max-pixels", "1000"]
    assert main(args) == 0
    rows = {r["id"]: r for r in csv.DictReader(open(tmp_path / "out" / "summary.csv"))}
    assert "above the budget" in rows["big"]["skipped"] and not rows["small"]["skipped"]
    assert not (tmp_path / "out" / "adv" / "big.png").exists()
    (folder / "small.png").unlink()
    assert main(args) == 1  # nothing left to attack: an error, not an empty success
    assert "no image attacked" in _errors(caplog)[-1]


def test_side_by_side_panels_have_titles():
    from eroseg.export import _title_font, side_by_side

    x = torch.full((3, 20, 20), 0.5)
    adv = x + 4 / 255
    pred = np.zeros((20, 20), dtype=np.int64)
    pic = side_by_side(x, adv, pred, pred, None, [(255, 0, 0)] * 256)
    strip = pic.shape[0] - 20
    titles = ["image", "adversarial", "perturbation x64", "prediction (clean)", "prediction (adv)"]
    left = 0
    for title in titles:  # every panel has dark text in the strip above it
        width = max(20, int(_title_font().getlength(title)) + 4)
        assert (pic[:strip, left:left + width].max(-1) < 100).sum() > 10, title
        left += width + 4
    assert left - 4 == pic.shape[1]
    assert (pic[strip:, :20] == 128).all()  # the image under its title
