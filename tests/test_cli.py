"""The eroseg command line: attack on a folder and a split, evaluate, errors without tracebacks."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from eroseg.cli import _json_arg, _spec_arg, default_method, main, parse_number
from eroseg.data import generate_synthetic
from eroseg.models import create_model, load_checkpoint, save_checkpoint
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
