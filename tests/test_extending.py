"""The two routes of docs/extending.md, each taken in a temporary registry.

A new attack is a function (with the check of its own parameters) and one ``register_attack`` line; a new dataset
is a reader and one ``register_dataset`` call (plus the schema's list of names, which only the workflow reads).
"""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import eroseg.attacks as attacks_module
import eroseg.data as data_module
from eroseg.attacks import attack_has_components, attack_parameters, create_attack, register_attack
from eroseg.attacks.core import run_attack
from eroseg.cli import main
from eroseg.conventions import DEFAULT_EPS, DEFAULT_STEPS, IGNORE_INDEX, IMAGE_SUFFIXES
from eroseg.data import DatasetInfo, dataset_info, get_dataset, register_dataset
from eroseg.data.reader import SegmentationReader
from eroseg.evaluate import EvalRecord, evaluate
from eroseg.models import model_from_config, save_checkpoint
from tests.conftest import TINY_UNET


# --------------------------------------------------------------------- a new attack
def fooled_weighted_pgd(model, images, labels, *, eps=DEFAULT_EPS, step_size=2 / 255, steps=DEFAULT_STEPS,
                        norm="linf", random_start=True, ignore_index=IGNORE_INDEX, targeted=False,
                        best_iterate=False, generator=None, amp=False, callback=None, fooled_weight=0.5):
    """PGD whose cross-entropy weighs pixels already fooled by ``fooled_weight`` (1 on the others)."""
    def weights(t, total, logits, labels, valid):
        fooled = logits.argmax(1) != labels
        return torch.where(fooled, fooled_weight, 1.0) * valid

    return run_attack(model, images, labels, eps=eps, step_size=step_size, steps=steps, norm=norm,
                      random_start=random_start, ignore_index=ignore_index, targeted=targeted,
                      best_iterate=best_iterate, generator=generator, amp=amp, callback=callback, weight_fn=weights)


def check_fooled_weighted_pgd_params(*, fooled_weight):
    if isinstance(fooled_weight, bool) or not isinstance(fooled_weight, (int, float)):
        raise TypeError(f"fooled_weight must be a real number in [0, 1], got {type(fooled_weight).__name__}")
    if not 0 <= fooled_weight <= 1:
        raise ValueError(f"fooled_weight must be in [0, 1], got {fooled_weight!r}")


class _SelfLabelled(torch.utils.data.Dataset):
    """Random images labelled with a random model's own prediction (clean mIoU 1), one void row."""

    def __init__(self, model, n=4, size=12):
        self.images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            self.labels = model(self.images).argmax(1)
        self.labels[:, 0] = IGNORE_INDEX

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


@pytest.fixture
def temporary_attack_registry(monkeypatch):
    monkeypatch.setattr(attacks_module, "REGISTRY", dict(attacks_module.REGISTRY))
    monkeypatch.setattr(attacks_module, "ATTACKS", dict(attacks_module.ATTACKS))


def test_a_new_attack_is_two_files(temporary_attack_registry):
    register_attack("fooled_weighted_pgd", fooled_weighted_pgd, check_fooled_weighted_pgd_params)
    assert attack_parameters("fooled_weighted_pgd")["fooled_weight"] == 0.5
    assert not attack_has_components("fooled_weighted_pgd")
    with pytest.raises(ValueError, match=r"fooled_weight must be in \[0, 1\], got 2"):
        create_attack("fooled_weighted_pgd", fooled_weight=2)
    with pytest.raises(ValueError, match=r"has no parameter\(s\) \['weight'\]"):
        create_attack("fooled_weighted_pgd", weight=0.2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()
    dataset = _SelfLabelled(model)
    attack = create_attack("fooled_weighted_pgd", eps=8 / 255, step_size=2 / 255, steps=5, fooled_weight=0.2)
    clean = evaluate(model, dataset, 3, num_workers=0)["metrics"]["miou"]
    attacked = evaluate(model, dataset, 3, attack=attack, num_workers=0, num_samples=4)
    assert clean == 1.0 and attacked["metrics"]["miou"] < 0.9
    assert np.abs(attacked["samples"]["adv"] - attacked["samples"]["image"]).max() <= 8 / 255 + 1e-6


def test_an_attack_with_an_unchecked_parameter_is_refused_at_registration(temporary_attack_registry):
    with pytest.raises(TypeError, match=r"parameter\(s\) \['fooled_weight'\] .* neither by the common check"):
        register_attack("unchecked", fooled_weighted_pgd)


# --------------------------------------------------------------------- a new dataset
class PairFolders(SegmentationReader):
    """``<root>/<split>/images/<id>.<suffix>`` with ``<root>/<split>/labels/<id>.png`` (class ids, 255 void)."""

    def __init__(self, root, split, **kwargs):
        super().__init__(root, split, **kwargs)
        folder = self.root / split
        for image in sorted((folder / "images").iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                self._add(image.stem, image, folder / "labels" / f"{image.stem}.png")


def _write_pair_folders(root, split="val", n=3, size=16):
    rng = np.random.default_rng(0)
    (root / split / "images").mkdir(parents=True)
    (root / split / "labels").mkdir(parents=True)
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / split / "images" / f"{i}.png")
        label = rng.integers(0, 3, (size, size), dtype=np.uint8)
        label[0] = IGNORE_INDEX
        Image.fromarray(label, mode="L").save(root / split / "labels" / f"{i}.png")


def test_a_new_dataset_is_a_reader_and_a_registration(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "DATASETS", dict(data_module.DATASETS))
    register_dataset(DatasetInfo("pairs", ("sky", "road", "car"), ((0, 0, 255), (128, 128, 128), (255, 0, 0)),
                                 PairFolders, "three classes in folder pairs"))
    root = tmp_path / "pairs"
    _write_pair_folders(root)
    reader = get_dataset("pairs", root, "val")
    image, label = reader[0]
    assert len(reader) == 3 and image.shape == (3, 16, 16) and int(label[0, 0]) == IGNORE_INDEX
    assert dataset_info("pairs").num_classes == 3
    model = model_from_config(TINY_UNET, 3)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, model, {"model": TINY_UNET, "num_classes": 3, "method": "standard", "seed": 0,
                                        "dataset": "pairs", "classes": ["sky", "road", "car"]})
    out = tmp_path / "fgsm.json"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "pairs", "--root", str(root),
                 "--split", "val", "--attack", "fgsm", "--attack-params", json.dumps({"eps": "4/255"}),
                 "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    record = EvalRecord.read(out)
    assert record.num_images == 3 and record.classes == ["sky", "road", "car"] and record.attack == "fgsm"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "voc", "--root", str(root),
                 "--out", str(tmp_path / "voc.json"), "--device", "cpu", "--quiet"]) == 1  # the model is for pairs
