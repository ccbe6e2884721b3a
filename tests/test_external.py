"""Pretrained models of one's own in the workflow (``methods.<name>.external``, ``eroseg import-model``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn
import yaml

from eroseg.external import EXTERNAL_KEYS, TRUST_ENV, build_external, check_methods
from eroseg.models import load_model, save_checkpoint, wrap_model
from tests.conftest import ROOT, copy_configs, run_snakemake

SYN_CLASSES = 8  # the synthetic dataset's
# A factory module as a user writes one: the architecture only; the weights come from the entry's file.
FACTORY_SOURCE = '''
import torch
import torch.nn as nn


def build(width=8, num_classes=8):
    torch.manual_seed(12345)  # another init than the weights file's: loading it must change the model
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, num_classes, 1))
'''


def _factory_module(folder: Path, name: str = "extmodels") -> Path:
    path = folder / f"{name}.py"
    path.write_text(FACTORY_SOURCE)
    return path


def _tiny_net(width=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, SYN_CLASSES, 1))


@pytest.fixture
def factory_dir(tmp_path, monkeypatch):
    """A folder holding ``extmodels.py`` and ``weights.pt`` (the net of seed 0), as the working folder."""
    _factory_module(tmp_path)
    torch.save(_tiny_net().state_dict(), tmp_path / "weights.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("extmodels", None)
    yield tmp_path
    sys.modules.pop("extmodels", None)


# ------------------------------------------------------------------ the config entry
@pytest.mark.parametrize("entry, message", [
    ({"weights": "w.pt"}, "methods.m.external.factory: expected MODULE:FUNCTION"),
    ({"factory": "mymodels"}, "methods.m.external.factory: expected MODULE:FUNCTION"),
    ({"factory": "$(touch pwned):build"}, "methods.m.external.factory: expected MODULE:FUNCTION"),
    ({"factory": "m:build; rm -rf x"}, "methods.m.external.factory: expected MODULE:FUNCTION"),
    ({"factory": "m:build", "weight": "w.pt"}, "methods.m.external.weight: unknown key; did you mean "
                                                "methods.m.external.weights?"),
    ({"factory": "m:build", "mean": [0.5, 0.5, 0.5]}, "methods.m.external: give both mean and std or neither"),
    ({"factory": "m:build", "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]},
     "methods.m.external.mean: [123.7, 116.3, 103.5] is on the 0-255 scale"),
    ({"factory": "m:build", "mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}, "methods.m.external.mean: expected 3 numbers"),
    ({"factory": "m:build", "mean": [0, 0, 0], "std": [1, 0, 1]}, "methods.m.external.std: every channel must be > 0"),
    ({"factory": "m:build", "num_classes": 0}, "methods.m.external.num_classes: expected an integer >= 1, got 0"),
    ({"factory": "m:build", "pad_multiple": "32"}, "methods.m.external.pad_multiple: expected an integer >= 1"),
    ({"factory": "m:build", "kwargs": [1]}, "methods.m.external.kwargs: expected a mapping"),
    ({"factory": "torchvision:lraspp_mobilenet_v3"}, "methods.m.external.factory: 'lraspp_mobilenet_v3' is not a "
                                                     "torchvision segmentation model; did you mean "
                                                     "torchvision:lraspp_mobilenet_v3_large?"),
])
def test_bad_external_entry_is_one_line_naming_the_key(entry, message):
    with pytest.raises(ValueError) as err:
        check_methods({"m": {"external": entry}})
    assert message in str(err.value).replace("config key ", "")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("entry, message", [
    ({"attack": None, "external": {"factory": "m:b"}}, "config key methods.m: has both 'attack'"),
    ({"external": {"factory": "m:b"}, "tuned": True}, "config key methods.m.tuned: a training setting"),
    ({"external": {"factory": "m:b"}, "params": {"q0": 0.2}}, "config key methods.m.params: a training setting"),
    ({"params": {}}, "config key methods.m: give 'attack'"),
])
def test_method_is_either_trained_or_external(entry, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        check_methods({"m": entry})


def test_good_entries_are_returned_checked_and_trained_methods_left_out():
    methods = {"standard": {"attack": None}, "at": {"attack": "pgd", "params": {}},
               "mine": {"external": {"factory": "path/to/my_models.py:build", "weights": "w.pth",
                                     "mean": [0, 0, 0], "std": [1, 1, 1], "num_classes": 8, "kwargs": {"width": 4}}},
               "tv": {"external": {"factory": "torchvision:lraspp_mobilenet_v3_large"}, "params": {}, "tuned": False}}
    out = check_methods(methods)
    assert list(out) == ["mine", "tv"]
    assert out["mine"] == {"factory": "path/to/my_models.py:build", "weights": "w.pth", "mean": [0.0, 0.0, 0.0],
                           "std": [1.0, 1.0, 1.0], "num_classes": 8, "kwargs": {"width": 4}}
    assert out["tv"] == {"factory": "torchvision:lraspp_mobilenet_v3_large"}
    assert set(out["mine"]) <= set(EXTERNAL_KEYS)


def test_schema_and_package_agree_on_the_entry():
    """The schema documents the same keys and factory pattern as eroseg.external checks."""
    from eroseg.external import FACTORY_PATTERN

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    ext = schema["properties"]["methods"]["additionalProperties"]["properties"]["external"]
    assert sorted(ext["properties"]) == sorted(EXTERNAL_KEYS)
    assert ext["properties"]["factory"]["pattern"] == FACTORY_PATTERN.pattern
    assert ext["required"] == ["factory"]


# ------------------------------------------------------------------ building the model
def test_module_factory_gets_its_kwargs_and_the_weights_file(factory_dir):
    images = torch.rand(2, 3, 16, 16)
    model, info = build_external({"factory": "extmodels:build", "weights": "weights.pt", "kwargs": {"width": 8},
                                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, num_classes=SYN_CLASSES)
    expected = _tiny_net()((images - 0.5) / 0.25)
    torch.testing.assert_close(model(images), expected)
    assert info["num_classes"] == SYN_CLASSES and info["external"]["mean"] == [0.5, 0.5, 0.5]
    # Without the weights file the factory's own init gives another model: the file was loaded.
    unloaded, _ = build_external({"factory": "extmodels:build"}, num_classes=SYN_CLASSES)
    assert not torch.allclose(unloaded(images), model(images))


def test_weights_file_nested_or_from_ddp_is_unpacked(factory_dir):
    state = {f"module.{k}": v for k, v in _tiny_net().state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state}, factory_dir / "nested.pth")
    model, _ = build_external({"factory": "extmodels:build", "weights": "nested.pth"})
    torch.testing.assert_close(model.net[0].weight, _tiny_net()[0].weight)


def test_weights_that_do_not_fit_name_the_file_and_keys(factory_dir):
    with pytest.raises(ValueError, match=r"methods.x.external.weights: weights.pt does not fit the model the "
                                         r"factory built: 3 of another shape \(0.weight \(8, 3, 3, 3\) vs the "
                                         r"model's \(4, 3, 3, 3\)"):
        build_external({"factory": "extmodels:build", "weights": "weights.pt", "kwargs": {"width": 4}},
                       where="methods.x.external")
    with pytest.raises(FileNotFoundError, match="weights file missing.pt not found"):
        build_external({"factory": "extmodels:build", "weights": "missing.pt"})


def test_torchvision_builder_with_a_local_weights_file(tmp_path):
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=SYN_CLASSES).eval()
    torch.save(net.state_dict(), tmp_path / "lraspp.pth")
    model, info = build_external({"factory": "torchvision:lraspp_mobilenet_v3_large",
                                  "weights": str(tmp_path / "lraspp.pth")}, num_classes=SYN_CLASSES)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images), wrap_model(net)(images))
    assert info["external"]["factory"] == "torchvision:lraspp_mobilenet_v3_large"


def test_hugging_face_segformer_through_a_factory(tmp_path, monkeypatch):
    """The docs' SegFormer route: a factory loading a local model folder with from_pretrained (no download)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=SYN_CLASSES)
    torch.manual_seed(0)
    net = transformers.SegformerForSemanticSegmentation(config).eval()
    net.save_pretrained(tmp_path / "segformer")  # config.json + model.safetensors, as a downloaded model folder
    (tmp_path / "hf_models.py").write_text(
        "from transformers import SegformerForSemanticSegmentation\n\n\n"
        "def segformer(folder):\n"
        "    return SegformerForSemanticSegmentation.from_pretrained(folder)\n")
    monkeypatch.chdir(tmp_path)
    model, _ = build_external({"factory": "hf_models.py:segformer", "kwargs": {"folder": "segformer"},
                               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, num_classes=SYN_CLASSES)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        assert out.shape == (1, SYN_CLASSES, 64, 64)  # 1/4-resolution logits upsampled
        torch.testing.assert_close(out, wrap_model(net)(images))


# ------------------------------------------------------------------ import-model and the checkpoint
def _import(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eroseg", "import-model", "--dataset", "synthetic", "--method", "mine",
                           "--out", "mine.pt", *extra], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_imported_checkpoint_rebuilds_only_trusted_factories(factory_dir, monkeypatch):
    res = _import(factory_dir, "--factory", "extmodels:build", "--weights", "weights.pt",
                  "--options", '{"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}')
    assert res.returncode == 0, res.stderr
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(ValueError, match=r"mine.pt: the checkpoint's model is built by the factory 'extmodels:build', "
                                         r"code eroseg would run; it runs only factories listed in "
                                         r"\$EROSEG_TRUSTED_FACTORIES"):
        load_model(factory_dir / "mine.pt")
    monkeypatch.setenv(TRUST_ENV, json.dumps(["extmodels:build"]))
    model, meta = load_model(factory_dir / "mine.pt")
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(model(images), _tiny_net()((images - 0.5) / 0.25))
    assert (meta["method"], meta["dataset"], meta["num_classes"]) == ("mine", "synthetic", SYN_CLASSES)
    assert meta["external"]["factory"] == "extmodels:build" and meta["weights_file"] == "weights.pt"


def test_a_checkpoint_cannot_name_code_to_run(tmp_path, monkeypatch):
    """A checkpoint from elsewhere that names a factory (here one that would write a file) is refused unrun."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    target = tmp_path / "pwned"
    save_checkpoint(tmp_path / "evil.pt", wrap_model(_tiny_net()),
                    {"external": {"factory": "pathlib:Path.touch", "kwargs": {"self": str(target)}}, "num_classes": 8})
    with pytest.raises(ValueError, match="runs only factories listed in"):
        load_model(tmp_path / "evil.pt")
    assert not target.exists()


def test_import_refuses_a_model_for_other_classes(factory_dir):
    res = _import(factory_dir, "--factory", "extmodels:build", "--options", '{"kwargs": {"num_classes": 21}}',
                  "--config-key", "methods.mine.external")
    assert res.returncode == 1
    assert "methods.mine.external: the model returns 21 channels; the data has 8 classes" in res.stderr
    assert "Traceback" not in res.stderr


# ------------------------------------------------------------------ the workflow
def _config_with_external(workdir: Path, entry: dict, name: str = "mine") -> str:
    cfg = yaml.safe_load((workdir / "config" / "tests.yaml").read_text())
    cfg["methods"][name] = {"external": entry}
    (workdir / "config" / "external.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return "config/external.yaml"


@pytest.mark.workflow
@pytest.mark.parametrize("entry, message", [
    ({"factory": "extmodels:build", "weights": "nowhere.pt"},
     "config key methods.mine.external.weights: file 'nowhere.pt' not found"),
    ({"factory": "extmodels:build", "mean": [0.5, 0.5, 0.5]}, "config key methods.mine.external: give both mean and "
                                                              "std or neither"),
])
def test_workflow_names_the_bad_external_key(tmp_path, entry, message):
    copy_configs(tmp_path)
    res = run_snakemake(tmp_path, "-n", "--configfile", _config_with_external(tmp_path, entry), check=False)
    assert res.returncode != 0
    assert message in res.stdout + res.stderr


@pytest.mark.workflow
def test_external_model_through_the_whole_pipeline(tiny_run, tmp_path):
    """The finished tests run plus one external model: it is imported (not trained), evaluated under every
    setting once, and its row reaches the tables; the trained models' jobs do not run again."""
    wd = tmp_path / "wd"
    shutil.copytree(tiny_run, wd, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete", "report.html"))
    _factory_module(wd)
    torch.save(_tiny_net().state_dict(), wd / "weights.pt")
    entry = {"factory": "extmodels:build", "weights": "weights.pt", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    config = _config_with_external(wd, entry)
    res = run_snakemake(wd, "-n", "--quiet", "rules", "--configfile", config)
    plan = {p[0]: int(p[1]) for p in (ln.split() for ln in (res.stdout + res.stderr).splitlines())
            if len(p) == 2 and p[1].isdigit() and p[0] not in ("total", "job")}
    # min_norm: tests.yaml attacks every method's first model with a minimal-norm attack, this one too
    assert plan == {"import_model": 1, "evaluate": 1, "min_norm": 1, "aggregate": 1, "figures": 1, "all": 1}
    run_snakemake(wd, "--configfile", config)

    out = wd / "results" / "tests"
    cfg = yaml.safe_load((wd / config).read_text())
    values = pd.read_csv(out / "tables" / "main_values.csv")
    mine = values[values.method == "mine"]
    assert list(mine.seed) == [cfg["seeds"][0]]  # one model: evaluated once
    assert sorted(values.method.unique()) == sorted(cfg["methods"])
    assert not (out / "models" / "mine" / "seed0" / "log.csv").exists()
    # The table's clean cell is the model of the weights file, evaluated here directly.
    from eroseg.data import get_dataset
    from eroseg.evaluate import evaluate

    direct = wrap_model(_tiny_net(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    test = get_dataset("synthetic", str(out / "data" / "synthetic"), cfg["dataset"].get("test_split", "test"))
    clean = evaluate(direct, test, SYN_CLASSES, batch_size=16)["metrics"]["miou"]
    assert mine.clean.iloc[0] == pytest.approx(clean, abs=1e-6)
    attacks = cfg["evaluation"]["main_attacks"]
    assert (mine[attacks].max(axis=1) <= mine.clean + 1e-9).all()
    assert (mine.worst_case <= mine[attacks].min(axis=1) + 1e-9).all()
    main_md = (out / "tables" / "main.md").read_text()
    assert any(line.startswith("| mine ") for line in main_md.splitlines())
    checks = pd.read_csv(out / "tables" / "checks.csv")
    assert "mine" in set(checks.method)
    record = json.loads((out / "eval" / "mine" / "seed0" / "clean.json").read_text())
    assert record["method"] == "mine" and record["checkpoint"].endswith("models/mine/seed0/model.pt")


def test_docs_config_snippets_pass_the_check():
    """The ``methods:`` blocks of docs/own_model.md are entries eroseg.external accepts, with an external model."""
    import re

    text = (ROOT / "docs" / "own_model.md").read_text()
    snippets = [yaml.safe_load(code) for code in re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M)
                if "methods:" in code]
    assert len(snippets) >= 2
    for cfg in snippets:
        assert check_methods(cfg["methods"]), cfg
