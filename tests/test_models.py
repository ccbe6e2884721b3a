"""Model wrapper, encoder weights, model parameters and checkpoints (and their fit to the data)."""

import pytest
import torch

from eroseg.models import check_checkpoint_matches, create_model, load_checkpoint, load_model, save_checkpoint
from tests.conftest import TINY_UNET as UNET

SMALL = dict(encoder_depth=3, decoder_channels=(16, 8, 8))


def test_wrapper_normalises_inside_and_handles_any_size():
    model = create_model("Unet", "resnet18", 5, **SMALL).eval()
    x = torch.rand(2, 3, 37, 45)
    out = model(x)
    assert out.shape == (2, 5, 37, 45)
    # Normalisation happens inside: the net sees (x - mean) / std.
    seen = {}
    model.net.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    model(torch.full((1, 3, 32, 32), 0.485))
    assert seen["x"][0, 0].abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(3, 32, 32))


def test_unknown_arch_and_encoder_list_valid_names():
    with pytest.raises(ValueError, match="Unet"):
        create_model("Unetz", "resnet18", 3)
    with pytest.raises(ValueError, match="resnet18"):
        create_model("Unet", "resnet_nope", 3)


def test_encoder_weights_local_file(tmp_path):
    src = create_model("Unet", "resnet18", 3, **SMALL)
    path = tmp_path / "enc.pth"
    torch.save(src.net.encoder.state_dict(), path)
    model = create_model("Unet", "resnet18", 3, encoder_weights=str(path), **SMALL)
    for k, v in src.net.encoder.state_dict().items():
        assert torch.equal(model.net.encoder.state_dict()[k], v)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_model("Unet", "resnet18", 3, encoder_weights=str(tmp_path / "missing.pth"))


def test_pretrained_download_failure_is_one_clear_message(monkeypatch):
    import segmentation_models_pytorch as smp

    def offline(*args, **kwargs):
        if kwargs.get("encoder_weights"):
            raise OSError("Name or service not known")
        return orig(*args, **kwargs)

    orig = smp.create_model
    monkeypatch.setattr(smp, "create_model", offline)
    with pytest.raises(RuntimeError, match="offline.*local file path"):
        create_model("Unet", "resnet18", 3, encoder_weights="imagenet")


def test_checkpoint_roundtrip_weights_only(tmp_path):
    cfg = {"arch": "Unet", "encoder": "resnet18", "kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}}
    model = create_model("Unet", "resnet18", 4, **SMALL).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, {"model": cfg, "num_classes": 4, "method": "standard"}, epoch=3)
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["meta"]["method"] == "standard"
    loaded, meta = load_model(path)
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert not loaded.training
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pt.*not an eroseg checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


# ------------------------------------------------------- checkpoints checked against the data
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


def test_model_kwargs_typo_names_the_closest_valid_name():
    with pytest.raises(ValueError, match=r"unknown parameter 'decoder_chanels' for Unet; did you mean "
                                         r"'decoder_channels'\?"):
        create_model("Unet", "resnet18", 2, encoder_depth=3, decoder_chanels=(8, 8, 8))
    with pytest.raises(ValueError, match="'classes' is set by eroseg"):
        create_model("Unet", "resnet18", 2, classes=3)
