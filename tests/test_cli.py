"""The eroseg command line: attack on a folder and a split, evaluate, errors without tracebacks."""

import csv
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from eroseg.cli import _eval_files, _json_arg, _spec_arg, default_method, main, parse_number
from eroseg.data import generate_synthetic
from eroseg.evaluate import parse_settings
from eroseg.models import create_model, load_checkpoint, save_checkpoint
from eroseg.training import TrainConfig
from tests.conftest import TINY_UNET as MODEL_CFG


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    root = generate_synthetic(d / "syn", n_train=4, n_val=3, height=32, width=32, seed=0)
    model = create_model("Unet", "resnet18", 8, encoder_depth=3, decoder_channels=(8, 8, 8))
    ckpt = d / "model.pt"
    save_checkpoint(ckpt, model, {"model": MODEL_CFG, "num_classes": 8, "method": "standard", "seed": 0,
                                  "dataset": "synthetic", "classes": ["c"] * 8})
    return d, root, ckpt


def test_parse_number():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number("eps/4", eps=0.04) == pytest.approx(0.01)
    assert parse_number(0.5) == 0.5
    with pytest.raises(ValueError, match="eps.*'8//255'"):
        parse_number("8//255", name="eps")


def test_spec_arguments_read_json_and_yaml_flow_style():
    """The workflow passes table/figure specs in YAML flow style (readable in the report); JSON still works."""
    flow = "{methods: [standard, pgd_at], headline: {eps: 0.03137254901960784, steps: 3}, sea: null}"
    expected = {"methods": ["standard", "pgd_at"], "headline": {"eps": 8 / 255, "steps": 3}, "sea": None}
    assert _json_arg(flow, "--spec") == expected
    assert _json_arg(json.dumps(expected), "--spec") == expected
    # Budgets as the workflow writes them (the report shows eps: 8/255) reach aggregate and figures as floats.
    assert _spec_arg("{headline: {eps: 8/255, steps: 3}, checks: {eps: [16/255, 255/255]}}") == {
        "headline": {"eps": 8 / 255, "steps": 3}, "checks": {"eps": [16 / 255, 1.0]}}
    with pytest.raises(SystemExit, match="--spec is not valid JSON"):
        _json_arg("{methods: [standard", "--spec")
    with pytest.raises(SystemExit, match="--spec must be a JSON object"):
        _json_arg("[1, 2]", "--spec")


def test_attack_folder_writes_lossless_pngs_within_budget(setup):
    d, root, ckpt = setup
    folder = d / "imgs"
    folder.mkdir()
    for name in ("a", "b"):
        Image.open(root / "JPEGImages" / "val_00000.png").save(folder / f"{name}.png")
    out = d / "attacked"
    rc = main(["attack", "--checkpoint", str(ckpt), "--images", str(folder), "--attack", "pgd",
               "--attack-params", json.dumps({"eps": "8/255", "steps": 2, "step_size": "eps/4"}),
               "--out-dir", str(out), "--device", "cpu"])
    assert rc == 0
    for name in ("a", "b"):
        orig = np.asarray(Image.open(folder / f"{name}.png").convert("RGB"), dtype=np.int16)
        adv = np.asarray(Image.open(out / "adv" / f"{name}.png"), dtype=np.int16)
        assert np.abs(adv - orig).max() <= 8 + 1  # eps plus 8-bit rounding
        assert np.abs(adv - orig).max() > 0
        assert Image.open(out / "pred_adv" / f"{name}.png").mode == "P"
        assert (out / "side_by_side" / f"{name}.png").stat().st_size > 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["id"] for r in rows] == ["a", "b"] and all(float(r["linf"]) <= 8 / 255 + 1e-6 for r in rows)


def test_attack_split_and_evaluate(setup, tmp_path):
    d, root, ckpt = setup
    assert main(["attack", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(root), "--split", "val",
                 "--attack", "fgsm", "--attack-params", '{"eps": "4/255"}', "--max-images", "2",
                 "--out-dir", str(tmp_path / "s"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "s" / "adv").iterdir()) == ["val_00000.png", "val_00001.png"]
    out = tmp_path / "e.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(root),
                 "--attack", "eroseg", "--attack-params", '{"eps": "8/255", "steps": 2, "step_size": "eps/4"}',
                 "--samples", str(tmp_path / "s.npz"), "--record-steps", "--out", str(out), "--device", "cpu"]) == 0
    rec = json.loads(out.read_text())
    assert rec["num_images"] == 3 and len(rec["per_image"]["pixel_acc"]) == 3
    assert rec["attack_params"]["eps"] == pytest.approx(8 / 255)
    z = np.load(tmp_path / "s.npz")
    assert z["step_attacked"].shape == (2, 32, 32) and z["image"].shape[1:] == (3, 32, 32)


def test_errors_are_one_line_with_the_file(tmp_path):
    res = subprocess.run([sys.executable, "-m", "eroseg", "prepare", "--dataset", "voc", "--root",
                          str(tmp_path / "nowhere"), "--manifest", str(tmp_path / "m.csv"), "--frequencies",
                          str(tmp_path / "f.csv")], capture_output=True, text=True)
    assert res.returncode == 1
    assert "nowhere" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "m.csv").exists()
    res = subprocess.run([sys.executable, "-m", "eroseg", "evaluate", "--checkpoint", str(tmp_path / "x.pt"),
                          "--dataset", "synthetic", "--root", ".", "--out", str(tmp_path / "o.json")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "x.pt" in res.stderr and "Traceback" not in res.stderr


def _errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _evaluate_folder(setup, folder):
    """Clean and FGSM evaluations of the tiny model into ``folder``, listed in its manifest."""
    d, root, ckpt = setup
    settings = [{"setting": "clean", "attack": "none", "out": str(folder / "clean.json")},
                {"setting": "fgsm", "attack": "fgsm", "params": {"eps": "4/255"},
                 "out": str(folder / "fgsm" / "e.json")}]
    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(root), "--split", "val",
                 "--settings", json.dumps(settings), "--manifest", str(folder / "manifest.json"),
                 "--device", "cpu", "--quiet"]) == 0


def test_evaluation_folder_missing_a_listed_file_is_refused_naming_it(setup, tmp_path, caplog):
    folder = tmp_path / "eval" / "standard" / "seed0"
    _evaluate_folder(setup, folder)
    assert json.loads((folder / "manifest.json").read_text())["files"] == ["clean.json", "fgsm/e.json"]
    assert _eval_files([str(folder)]) == [str(folder / "clean.json"), str(folder / "fgsm" / "e.json")]
    (folder / "clean.json").unlink()
    assert main(["aggregate", "--evals", str(folder), "--out-dir", str(tmp_path / "tables"), "--quiet"]) == 1
    (msg,) = _errors(caplog)
    assert f"{folder / 'clean.json'}: missing from its evaluation folder" in msg and "\n" not in msg
    assert not (tmp_path / "tables").exists()
    # A folder Snakemake made whose manifest is gone is refused too.
    (folder / "manifest.json").unlink()
    (folder / ".snakemake_timestamp").touch()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        _eval_files([str(folder)])


def test_hidden_temp_files_are_never_aggregated_and_evaluate_removes_stale_ones(setup, tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    stale = folder / ".clean.abcd1234.tmp.json"  # what a killed writer of clean.json leaves (eroseg.io.atomic_path)
    stale.write_text('{"half": ')
    (folder / "by_hand.json").write_text("{}")
    assert _eval_files([str(folder)]) == [str(folder / "by_hand.json")]  # no manifest: non-hidden JSON only
    _evaluate_folder(setup, folder)
    assert not stale.exists()


@pytest.mark.parametrize("attack, params, expected", [
    ("pgd", {"steps": 2.5}, "steps must be an integer >= 1, got float 2.5"),
    ("pgd", {"steps": 1e9}, "steps must be an integer >= 1, got float 1000000000.0"),
    ("eroseg", {"q0": "0.5"}, "q0 must be a real number in [0, 1], got str '0.5'"),
    ("pgd", {"random_start": "yes"}, "random_start must be a bool (True/False), got str 'yes'"),
])
def test_a_value_of_the_wrong_type_is_one_line(setup, tmp_path, caplog, attack, params, expected):
    d, root, ckpt = setup
    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(root),
                 "--attack", attack, "--attack-params", json.dumps({"eps": "8/255", **params}),
                 "--out", str(tmp_path / "o.json"), "--device", "cpu", "--quiet"]) == 1
    assert _errors(caplog) == [expected]


@pytest.mark.parametrize("flag", ["--restarts", "--max-images", "--batch-size"])
def test_counts_below_one_are_refused_not_replaced(setup, tmp_path, capsys, flag):
    d, root, ckpt = setup
    with pytest.raises(SystemExit) as err:
        main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(root),
              "--attack", "fgsm", "--attack-params", '{"eps": "4/255"}', flag, "0",
              "--out", str(tmp_path / "o.json"), "--device", "cpu"])
    assert err.value.code == 2 and f"argument {flag}: expected an integer >= 1, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
    settings = [{"attack": "fgsm", "params": {"eps": "4/255"}, "restarts": 0, "out": str(tmp_path / "o.json")}]
    with pytest.raises(ValueError, match=r"--settings\[0\].restarts must be an integer >= 1, got 0"):
        parse_settings(json.dumps(settings), {})


def test_evaluate_and_prepare_refuse_an_image_above_the_pixel_budget_naming_it(setup, tmp_path, caplog):
    d, root, ckpt = setup
    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(root),
                 "--split", "val", "--max-pixels", "1000", "--out", str(tmp_path / "o.json"), "--device", "cpu"]) == 1
    assert main(["prepare", "--dataset", "synthetic", "--root", str(root), "--splits", "val", "--max-pixels", "1000",
                 "--manifest", str(tmp_path / "m.csv"), "--frequencies", str(tmp_path / "f.csv")]) == 1
    for msg in _errors(caplog):
        assert "val_00000.png: 32x32 image (1,024 pixels) is above the pixel budget of 1,000 (--max-pixels)" in msg
    assert len(_errors(caplog)) == 2 and not (tmp_path / "o.json").exists() and not (tmp_path / "m.csv").exists()


def test_full_disk_names_the_file_being_written(setup, tmp_path, caplog, monkeypatch):
    import errno
    import pathlib

    d, root, ckpt = setup

    def full(self, *args, **kwargs):  # what the OS raises: no file name
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    out = tmp_path / "o.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(root),
                 "--split", "val", "--out", str(out), "--device", "cpu", "--quiet"]) == 1
    (msg,) = _errors(caplog)
    assert msg.startswith(f"no space left on device while writing {out}:"), msg


def test_second_tune_on_the_same_output_fails_at_once(setup, tmp_path, caplog):
    from eroseg.io import exclusive_lock

    d, root, ckpt = setup
    out = tmp_path / "tuning" / "pgd.json"
    with exclusive_lock(out):
        assert main(["tune", "--checkpoints", str(ckpt), "--dataset", "synthetic", "--root", str(root),
                     "--family", "pgd", "--attack", "pgd", "--attack-params", '{"eps": "8/255", "steps": 1}',
                     "--grid", '{"step_size": ["eps/4"]}', "--out", str(out), "--device", "cpu"]) == 1
    (msg,) = _errors(caplog)
    assert f"{out}: another eroseg process (pid " in msg and not out.exists()


def test_tune_with_inference_wraps_every_model_and_one_window_equals_whole(setup, tmp_path, monkeypatch):
    import eroseg.inference

    d, root, ckpt = setup
    wrapped = []
    real_wrap = eroseg.inference.wrap_for_inference
    monkeypatch.setattr(eroseg.inference, "wrap_for_inference",
                        lambda model, spec: wrapped.append(spec) or real_wrap(model, spec))
    args = ["tune", "--checkpoints", str(ckpt), "--dataset", "synthetic", "--root", str(root), "--family", "pgd",
            "--attack", "pgd", "--attack-params", '{"eps": "8/255", "steps": 1}', "--grid",
            '{"step_size": ["eps/4", "eps/2"]}', "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "whole.json")]) == 0 and not wrapped
    one_window = '{"mode": "slide", "crop": [512, 512], "stride": [512, 512]}'  # cut to the image: one window
    assert main([*args, "--inference", one_window, "--out", str(tmp_path / "slide.json")]) == 0
    assert len(wrapped) == 1 and wrapped[0].mode == "slide"
    whole, slide = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "slide"))
    assert slide["candidates"] == whole["candidates"] and slide["chosen"] == whole["chosen"]


def test_training_without_method_stores_a_method_name(setup, tmp_path):
    """`eroseg train` without --method records `<attack>_at` (or `standard`), never null, in the checkpoint."""
    _, root, _ = setup
    out = tmp_path / "m.pt"
    assert main(["train", "--dataset", "synthetic", "--root", str(root), "--model", json.dumps(MODEL_CFG),
                 "--train", '{"epochs": 1, "batch_size": 4, "amp": false, "val_robust_steps": 0}',
                 "--attack", "fgsm", "--attack-params", '{"eps": "8/255"}', "--out", str(out),
                 "--log", str(tmp_path / "log.csv"), "--device", "cpu", "--quiet"]) == 0
    assert load_checkpoint(out)["meta"]["method"] == "fgsm_at"
    assert default_method(None) == default_method("none") == "standard"


# ------------------------------------------------------ one-line errors of train and attack, skipped images
@pytest.fixture(scope="module")
def three_classes(setup):
    """A checkpoint of the tiny U-Net for 3 classes, beside ``setup``'s 8-class one."""
    d, _, _ = setup
    save_checkpoint(d / "three.pt", create_model("Unet", "resnet18", 3, encoder_depth=3, decoder_channels=(8, 8, 8)),
                    {"model": MODEL_CFG, "num_classes": 3, "dataset": "synthetic"})
    return d / "three.pt"


def _train_args(root, tmp_path, train_cfg='{"epochs": 1, "batch_size": 4, "amp": false}'):
    return ["train", "--dataset", "synthetic", "--root", str(root), "--model", json.dumps(MODEL_CFG),
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


def test_full_disk_is_one_line(setup, tmp_path, caplog, monkeypatch):
    _, root, _ = setup

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


def test_attack_skips_a_non_image_png_and_lists_it(setup, tmp_path, caplog):
    d, _, _ = setup
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


def test_attack_refuses_a_checkpoint_of_other_classes(setup, three_classes, tmp_path, caplog):
    _, root, _ = setup
    assert main(["attack", "--checkpoint", str(three_classes), "--dataset", "synthetic", "--root", str(root),
                 "--attack", "fgsm", "--attack-params", '{"eps": "4/255"}', "--out-dir", str(tmp_path / "o"),
                 "--device", "cpu"]) == 1
    (msg,) = _errors(caplog)
    assert "three.pt" in msg and "3 classes" in msg and "8 classes" in msg



def test_attack_refuses_images_above_the_pixel_budget(setup, tmp_path, caplog):
    d, _, _ = setup
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
