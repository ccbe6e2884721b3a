"""Bring your own model: wrap_model on torchvision and transformers architectures, and --model-factory."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from eroseg.attacks import create_attack
from eroseg.cli import main
from eroseg.data import generate_synthetic
from eroseg.external import load_model_factory
from eroseg.models import IMAGENET_MEAN, IMAGENET_STD, SegmentationModel, wrap_model

EPS = 8 / 255
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


class Identity3(nn.Module):
    """Returns its input as 3-class logits: what the wrapper feeds the network is visible."""

    def forward(self, x):
        return x.clone()


class QuarterRes(nn.Module):
    """A model whose logits are at 1/4 of the input resolution, in a dict under a custom key."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 4, stride=4)

    def forward(self, x):
        return {"seg": self.conv(x), "features": x}


def check_attack(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """PGD runs on the wrapped model, stays in budget and in [0, 1], and leaves the model alone."""
    labels = torch.randint(0, num_classes, x.shape[:1] + x.shape[2:], generator=torch.Generator().manual_seed(0))
    model.train()  # the attack must run in eval mode and give the train mode back
    attack = create_attack("pgd", eps=EPS, step_size=2 / 255, steps=2)
    adv = attack(model, x, labels, generator=torch.Generator().manual_seed(1))
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert (adv - x).abs().max() > EPS / 2  # the attack did move the images
    assert adv.min() >= 0 and adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    model.eval()


# ------------------------------------------------------------------ plain modules
def test_normalisation_inside_matches_manual():
    x = torch.rand(2, 3, 5, 7)
    out = wrap_model(Identity3())(x)
    assert out.shape == (2, 3, 5, 7)
    torch.testing.assert_close(out, normalise(x))
    # hand-worked: a grey pixel 0.5 in the red channel -> (0.5 - 0.485) / 0.229
    assert out[0, 0, 0, 0].item() == pytest.approx((x[0, 0, 0, 0].item() - 0.485) / 0.229, rel=1e-5)


def test_no_normalisation_and_custom_stats():
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(wrap_model(Identity3(), mean=None, std=None)(x), x)
    torch.testing.assert_close(wrap_model(Identity3(), mean=(0.5,) * 3, std=(0.25,) * 3)(x), (x - 0.5) / 0.25)


def test_low_resolution_dict_output_upsampled_and_padded():
    net = QuarterRes().eval()
    x = torch.rand(2, 3, 30, 42)  # not a multiple of 4: pad, upsample, crop back
    model = wrap_model(net, output_key="seg", pad_multiple=4, num_classes=4)
    out = model(x)
    assert out.shape == (2, 4, 30, 42)
    padded = F.pad(normalise(x), (0, 2, 0, 2), mode="replicate")
    expected = F.interpolate(net(padded)["seg"], size=(32, 44), mode="bilinear", align_corners=False)[..., :30, :42]
    torch.testing.assert_close(out, expected)
    check_attack(model, x, 4)


def test_padding_default_is_the_same_for_the_class_and_wrap_model():
    """A wrapped network is not padded unless asked (create_model asks for 32: smp encoders need it)."""
    assert SegmentationModel(Identity3()).pad_multiple == wrap_model(Identity3()).pad_multiple == 1
    x = torch.rand(1, 3, 30, 42)
    assert SegmentationModel(Identity3())(x).shape == x.shape
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"pad_multiple must be an integer >= 1, got {bad!r}"):
            SegmentationModel(Identity3(), pad_multiple=bad)
        with pytest.raises(ValueError, match="pad_multiple must be an integer >= 1"):
            wrap_model(Identity3(), pad_multiple=bad)


def test_wrapper_errors_name_the_problem():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"keys \['seg', 'features'\].*output_key"):
        wrap_model(QuarterRes())(x)
    with pytest.raises(ValueError, match="output_key 'logits' not in"):
        wrap_model(QuarterRes(), output_key="logits")(x)
    with pytest.raises(ValueError, match="returned 4 channels but num_classes is 21"):
        wrap_model(QuarterRes(), output_key="seg", num_classes=21)(x)
    with pytest.raises(ValueError, match=r"0-255 scale.*\[0, 1\] scale.*0\.485"):
        wrap_model(Identity3(), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    with pytest.raises(ValueError, match="both mean and std"):
        wrap_model(Identity3(), mean=None)
    with pytest.raises(TypeError, match="nn.Module"):
        wrap_model(lambda x: x)


def test_wrapped_model_is_not_wrapped_twice():
    model = wrap_model(Identity3())
    assert wrap_model(model) is model and isinstance(model, SegmentationModel)


# -------------------------------------------------------------------- torchvision
def test_torchvision_lraspp_random_weights():
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5).eval()
    model = wrap_model(net, num_classes=5)
    x = torch.rand(2, 3, 40, 56)
    out = model(x)
    assert out.shape == (2, 5, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(out, net(normalise(x))["out"])
    check_attack(model, x, 5)


# ------------------------------------------------------------------- transformers
def tiny_segformer(num_labels: int = 4):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=num_labels,
    )
    torch.manual_seed(0)
    return transformers.SegformerForSemanticSegmentation(cfg).eval()


def test_transformers_segformer_random_weights():
    net = tiny_segformer(4)
    model = wrap_model(net, num_classes=4)
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        low = net(normalise(x)).logits
    assert low.shape[-2:] == (10, 14)  # SegFormer's logits are at 1/4 resolution
    out = model(x)
    assert out.shape == (2, 4, 40, 56)
    torch.testing.assert_close(out, F.interpolate(low, size=(40, 56), mode="bilinear", align_corners=False))
    check_attack(model, x, 4)


# ---------------------------------------------------------------- --model-factory
FACTORY = textwrap.dedent('''
    import torch.nn as nn
    from eroseg.models import wrap_model


    class Net(nn.Module):
        """8-class logits at half resolution, in a dict."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)

        def forward(self, x):
            return {"out": self.conv(x)}


    def build():
        return Net()


    def build_with_meta():
        return Net(), {"method": "mine", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


    def build_wrapped():
        return wrap_model(Net(), mean=None, std=None)


    def not_a_model():
        return "model"
''')


@pytest.fixture(scope="module")
def factory_env(tmp_path_factory):
    d = tmp_path_factory.mktemp("factory")
    (d / "my_seg_models.py").write_text(FACTORY)
    root = generate_synthetic(d / "syn", n_train=2, n_val=2, height=32, width=32, seed=0)
    sys.path.insert(0, str(d))
    yield d, root
    sys.path.remove(str(d))
    sys.modules.pop("my_seg_models", None)


def test_load_model_factory_wraps_and_reads_meta(factory_env):
    d, _ = factory_env
    x = torch.rand(1, 3, 16, 16)
    model, meta = load_model_factory("my_seg_models:build", dataset="synthetic")
    assert isinstance(model, SegmentationModel) and not model.training
    assert meta["num_classes"] == 8 and meta["method"] == "build" and meta["seed"] == 0 and len(meta["classes"]) == 8
    assert model(x).shape == (1, 8, 16, 16)
    model, meta = load_model_factory(f"{d / 'my_seg_models.py'}:build_with_meta")
    torch.testing.assert_close(model.mean.flatten(), torch.full((3,), 0.5))
    assert meta["method"] == "mine" and "mean" not in meta
    model, _ = load_model_factory("my_seg_models:build_wrapped")
    torch.testing.assert_close(model.std.flatten(), torch.ones(3))  # kept as the factory wrapped it
    for spec, message in [("my_seg_models", "expected MODULE:FUNCTION"), ("no_such_mod_xyz:build", "cannot import"),
                          ("my_seg_models:nope", "has no attribute 'nope'"),
                          ("my_seg_models:not_a_model", "returned str; expected an nn.Module")]:
        with pytest.raises(ValueError, match=message):
            load_model_factory(spec)


def test_cli_evaluate_and_attack_with_model_factory(factory_env, tmp_path):
    d, root = factory_env
    out = tmp_path / "e.json"
    params = json.dumps({"eps": "8/255", "step_size": "2/255", "steps": 2})
    assert main(["evaluate", "--model-factory", "my_seg_models:build", "--dataset", "synthetic", "--root", str(root),
                 "--attack", "pgd", "--attack-params", params, "--out", str(out), "--device", "cpu"]) == 0
    rec = json.loads(out.read_text())
    assert rec["num_images"] == 2 and rec["method"] == "build" and len(rec["per_class_iou"]) == 8
    assert rec["checkpoint"] == "factory:my_seg_models:build"
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.open(root / "JPEGImages" / "val_00000.png").save(folder / "a.png")
    assert main(["attack", "--model-factory", "my_seg_models:build", "--images", str(folder), "--attack", "pgd",
                 "--attack-params", params, "--out-dir", str(tmp_path / "adv"), "--device", "cpu"]) == 0
    orig = np.asarray(Image.open(folder / "a.png").convert("RGB"), dtype=np.int16)
    adv = np.asarray(Image.open(tmp_path / "adv" / "adv" / "a.png"), dtype=np.int16)
    assert 0 < np.abs(adv - orig).max() <= 8 + 1


def test_cli_needs_exactly_one_model_source(factory_env, tmp_path, capsys):
    _, root = factory_env
    base = ["evaluate", "--dataset", "synthetic", "--root", str(root), "--out", str(tmp_path / "e.json")]
    with pytest.raises(SystemExit) as exc:
        main(base)
    assert exc.value.code == 2
    assert "one of the arguments --checkpoint --model-factory is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(base + ["--checkpoint", "m.pt", "--model-factory", "a:b"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# ------------------------------------------------------------ docs/own_model.md
def doc_blocks(path) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of a Markdown file, in order."""
    blocks, lang, lines = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(lines)))
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def test_own_model_doc_runs_as_written(tmp_path, monkeypatch):
    """Every python block of docs/own_model.md runs in order, the factory file is used by the eroseg commands."""
    import shlex
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "own_model.md"
    blocks = doc_blocks(doc)
    assert [lang for lang, _ in blocks].count("python") >= 4 and any(lang == "bash" for lang, _ in blocks)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_model_factory may append the cwd
    ran = []
    try:
        for lang, code in blocks:
            if lang == "python" and code.startswith("# mymodels.py"):
                (tmp_path / "mymodels.py").write_text(code)
            elif lang == "python":
                if "from transformers" in code and not _has("transformers"):  # optional extra hf
                    continue
                exec(compile(code, f"{doc}:{lang}", "exec"), {"__name__": "__doc_example__"})
            elif lang == "bash":
                for command in code.replace("\\\n", " ").splitlines():
                    argv = shlex.split(command)
                    assert argv[0] == "eroseg", command
                    assert main(argv[1:] + ["--device", "cpu"]) == 0, command
                    ran.append(argv[1])
    finally:
        sys.modules.pop("mymodels", None)
    assert ran == ["evaluate", "attack"]
    rec = json.loads((tmp_path / "lraspp_pgd.json").read_text())
    assert rec["method"] == "lraspp" and rec["num_images"] == 4 and rec["attack_params"]["steps"] == 5
    assert len(list((tmp_path / "lraspp_adv" / "adv").glob("*.png"))) == 4


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
