"""Training loop: checkpoints, logs, adversarial fraction, BN statistics, resume, NaN guard."""

import csv

import pytest
import torch

from eroseg.models import load_checkpoint, load_model, model_from_config
from eroseg.training import AdversarialTraining, NonFiniteLossError, TrainConfig, train
from tests.conftest import TINY_UNET as MODEL
from tests.conftest import HalfSplit as Toy


def unet(num_classes=2, seed=0):
    """The tiny U-Net of MODEL, initialised from ``seed``."""
    torch.manual_seed(seed)
    return model_from_config(MODEL, num_classes)


def noise_attack(model, images, labels, generator=None):
    """A stand-in attack that calls the model like a real one (eval mode, restored)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        model.train(was)
    noise = torch.rand(images.shape, generator=generator, device=images.device) * 2 - 1
    return (images + 8 / 255 * noise).clamp(0, 1)


def cfg(**kw):
    base = dict(epochs=2, batch_size=4, lr=0.01, hflip=0.5, val_robust_images=4, val_robust_steps=1, amp=False)
    base.update(kw)
    return TrainConfig.from_dict(base)


def run(tmp_path, name="m", attack=None, **kw):
    out = tmp_path / f"{name}.pt"
    extra = {k: kw.pop(k) for k in ("max_steps", "robust_attack") if k in kw}
    train(unet(), train_set=Toy(), val_set=Toy(8, seed=1), num_classes=2, model_cfg=MODEL, cfg=cfg(**kw),
          attack=attack, out=out, log_path=tmp_path / f"{name}.csv", seed=0, progress=False, **extra)
    return out


def test_standard_training_writes_checkpoint_and_log(tmp_path):
    out = run(tmp_path, epochs=2)
    model, meta = load_model(out)
    assert meta["num_classes"] == 2 and meta["train"]["epochs"] == 2
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["images_per_s"]) > 0 and 0 <= float(r["val_miou"]) <= 1 for r in rows)
    assert not (tmp_path / "m.pt.partial").exists()


def test_robust_val_column_filled(tmp_path):
    run(tmp_path, attack=noise_attack, robust_attack=noise_attack, epochs=1)
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert 0 <= float(rows[0]["robust_val_miou"]) <= 1


def test_val_every_validates_every_nth_and_the_last_epoch(tmp_path):
    run(tmp_path, attack=noise_attack, robust_attack=noise_attack, epochs=5, val_every=2)
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    validated = [int(r["epoch"]) for r in rows if r["val_miou"] != ""]
    assert validated == [2, 4, 5]
    assert [int(r["epoch"]) for r in rows if r["robust_val_miou"] != ""] == validated
    assert all(float(r["loss"]) > 0 for r in rows)  # every epoch still logs its training loss


def test_channels_last_applies_on_the_cpu_and_changes_only_the_layout(tmp_path):
    """``channels_last`` (once CUDA-only) puts the model and the batches in that layout on the CPU too, and ends
    near the contiguous run's weights."""
    layouts = []

    def spy(model, images, labels, generator=None):
        conv = next(p for p in model.parameters() if p.dim() == 4)
        layouts.append((conv.is_contiguous(memory_format=torch.channels_last),
                        images.is_contiguous(memory_format=torch.channels_last)))
        return images

    a = load_checkpoint(run(tmp_path, "a", attack=spy, epochs=1, channels_last=False))["state_dict"]
    assert layouts and not any(conv for conv, _ in layouts)
    layouts.clear()
    b = load_checkpoint(run(tmp_path, "b", attack=spy, epochs=1, channels_last=True))["state_dict"]
    assert layouts and all(conv and batch for conv, batch in layouts)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst < 1e-3, worst


def test_val_every_below_one_is_refused():
    with pytest.raises(ValueError, match="val_every must be >= 1"):
        cfg(val_every=0)


@pytest.mark.parametrize("fraction,expected", [(0.5, 2), (1.0, 4), (0.25, 1), (0.0, 0)])
def test_adversarial_fraction_holds(fraction, expected):
    model = torch.nn.Conv2d(3, 2, 1)
    calls = []

    def attack(m, images, labels, generator=None):
        calls.append(images.shape[0])
        return images + 0.01

    task = AdversarialTraining(model, attack, adv_fraction=fraction)
    images, labels = torch.rand(4, 3, 8, 8), torch.zeros(4, 8, 8, dtype=torch.long)
    res = task(images, labels)
    assert int(res["adv_mask"].sum()) == expected
    assert calls == ([expected] if expected else [])


def test_attack_passes_do_not_update_batchnorm_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    bn = model[1]
    modes = []
    bn.register_forward_hook(lambda m, a, o: modes.append(m.training))
    from eroseg.attacks import create_attack

    attack = create_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=3)
    task = AdversarialTraining(model, attack, adv_fraction=0.5)
    images, labels = torch.rand(4, 3, 8, 8), torch.randint(0, 2, (4, 8, 8))
    before = bn.num_batches_tracked.item()
    task(images, labels)
    # Every attack pass ran in eval mode; exactly one train-mode pass (the update) touched the statistics.
    assert modes.count(True) == 1 and modes.count(False) >= 3
    assert bn.num_batches_tracked.item() == before + 1


@pytest.mark.parametrize("aug", [{}, {"crop_size": [12, 12], "scale_range": [0.5, 1.5]}])
def test_resume_after_interruption_gives_identical_weights(tmp_path, aug):
    full = run(tmp_path, "full", attack=noise_attack, epochs=2, checkpoint_every=2, **aug)
    # 4 steps per epoch: stop after 3 steps (mid-epoch, after a step checkpoint at 2), then resume.
    res = train(unet(), train_set=Toy(), val_set=Toy(8, seed=1), num_classes=2, model_cfg=MODEL,
                cfg=cfg(epochs=2, checkpoint_every=2, **aug), attack=noise_attack, out=tmp_path / "part.pt",
                log_path=tmp_path / "part.csv", seed=0, progress=False, max_steps=3)
    assert res["interrupted"] and (tmp_path / "part.pt.partial").exists() and not (tmp_path / "part.pt").exists()
    train(unet(), train_set=Toy(), val_set=Toy(8, seed=1), num_classes=2, model_cfg=MODEL,
          cfg=cfg(epochs=2, checkpoint_every=2, **aug), attack=noise_attack, out=tmp_path / "part.pt",
          log_path=tmp_path / "part.csv", seed=0, progress=False)
    a, b = load_checkpoint(full)["state_dict"], load_checkpoint(tmp_path / "part.pt")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len(list(csv.DictReader(open(tmp_path / "part.csv")))) == 2


def test_non_finite_loss_stops_with_epoch_and_step(tmp_path):
    # Epoch 1 is clean; the NaN image is put in place for epoch 2.
    train(unet(), train_set=Toy(), val_set=None, num_classes=2, model_cfg=MODEL, cfg=cfg(epochs=2, hflip=0.0),
          attack=None, out=tmp_path / "n.pt", log_path=tmp_path / "n.csv", progress=False, max_steps=4)
    good = load_checkpoint(tmp_path / "n.pt.partial")
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step \d+"):
        train(unet(), train_set=Toy(nan_at=list(range(16))), val_set=None, num_classes=2, model_cfg=MODEL,
              cfg=cfg(epochs=2, hflip=0.0), attack=None, out=tmp_path / "n.pt", log_path=tmp_path / "n.csv",
              progress=False)
    kept = load_checkpoint(tmp_path / "n.pt.partial")
    assert kept["train_state"]["epoch"] == good["train_state"]["epoch"] == 1
    for k, v in good["state_dict"].items():
        assert torch.equal(kept["state_dict"][k], v)
    assert not (tmp_path / "n.pt").exists()


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown training parameter.*epoch"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="adv_fraction"):
        TrainConfig.from_dict({"adv_fraction": 1.5})


def test_keyed_augmentation_is_a_function_of_the_key():
    from eroseg.training import KeyedAugment

    aug = KeyedAugment(Toy(4), [10, 10], [0.5, 1.5], seed=1)
    a, b = aug[5], aug[5]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 10, 10) and a[1].shape == (10, 10)
    assert any(not torch.equal(aug[5][0], aug[5 + 4 * k][0]) for k in range(1, 4)), "epochs must differ"


@pytest.mark.parametrize("method", ["pgd", "segpgd", "cospgd", "eroseg"])
def test_each_method_trains_one_short_epoch(tmp_path, method):
    from eroseg.attacks import create_attack

    attack = create_attack(method, eps=8 / 255, step_size=2 / 255, steps=1)
    out = run(tmp_path, method, attack=attack, epochs=1)
    model, meta = load_model(out)
    rows = list(csv.DictReader(open(tmp_path / f"{method}.csv")))
    assert len(rows) == 1 and float(rows[0]["loss"]) > 0


class MixedSizes(torch.utils.data.Dataset):
    """Whole images of different sizes, as in PASCAL VOC or ADE20K val."""

    SIZES = [(16, 16), (16, 16), (16, 24), (24, 16), (24, 16), (24, 16), (16, 16)]

    def __len__(self):
        return len(self.SIZES)

    def __getitem__(self, i):
        h, w = self.SIZES[i]
        label = torch.zeros(h, w, dtype=torch.long)
        label[:, w // 2:] = 1
        image = torch.where(label == 1, 0.7, 0.3).float().expand(3, h, w).clone()
        image[0, 0, 0] = i / 10  # identifies the image
        return image, label


def test_validation_and_evaluation_on_whole_images_of_mixed_sizes(tmp_path):
    from eroseg.attacks import create_attack
    from eroseg.evaluate import evaluate

    out = tmp_path / "m.pt"
    pgd = create_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=1)
    train(unet(), train_set=Toy(), val_set=MixedSizes(), num_classes=2, model_cfg=MODEL,
          cfg=cfg(epochs=1, crop_size=[16, 16], val_batch_size=3), attack=None, robust_attack=pgd,
          out=out, log_path=tmp_path / "m.csv", seed=0, progress=False)
    row = list(csv.DictReader(open(tmp_path / "m.csv")))[0]
    assert 0 <= float(row["val_miou"]) <= 1 and 0 <= float(row["robust_val_miou"]) <= 1
    model, _ = load_model(out)
    res = evaluate(model, MixedSizes(), 2, attack=pgd, batch_size=4, num_samples=4)
    assert res["per_image"].tp.shape == (7, 2)
    # The qualitative samples of different sizes are padded to the largest, labels with void.
    assert res["samples"]["image"].shape == (4, 3, 24, 24)
    labels = res["samples"]["label"]
    assert (labels[0, 16:, :] == 255).all() and (labels[2, 16:, :] == 255).all() and (labels[3, :, 16:] == 255).all()
    assert (labels[2, :16, :] != 255).all() and (labels[3, :, :16] != 255).all()


def test_no_two_seed_rank_pairs_share_a_random_stream():
    from eroseg.seeds import PURPOSES, stream_seed

    keys = [(seed, purpose, epoch, step, rank) for seed in range(32) for purpose in PURPOSES
            for epoch in range(2) for step in range(3) for rank in range(16)]
    seeds = {stream_seed(s, p, epoch=e, step=t, rank=r) for s, p, e, t, r in keys}
    assert len(seeds) == len(keys)
    # The old formula seed + 7 * rank made these two equal.
    assert stream_seed(7, "attack", rank=0) != stream_seed(0, "attack", rank=1)
    assert stream_seed(3, "flip", epoch=1, step=2) == stream_seed(3, "flip", epoch=1, step=2)
    with pytest.raises(ValueError, match="seed must be an integer"):
        stream_seed(-1, "attack")
    with pytest.raises(ValueError, match="unknown random-stream purpose"):
        stream_seed(0, "atack")


def test_schema_train_keys_are_the_train_config_fields():
    """TrainConfig owns the training defaults; the schema checks the same keys (and has no defaults of its own)."""
    import dataclasses
    from pathlib import Path

    import yaml


    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    train = schema["properties"]["train"]["properties"]
    assert set(train) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert not [k for k, v in train.items() if "default" in v]
    words = ("minimum", "exclusiveMinimum", "maximum", "enum")
    for f in dataclasses.fields(TrainConfig):  # one set of ranges: the schema states TrainConfig's
        assert {w: train[f.name][w] for w in words if w in train[f.name]} == dict(f.metadata), f.name


def test_config_ranges_name_the_parameter_and_the_bound():
    for bad, message in (({"lr": 0}, "lr must be > 0, got 0"), ({"hflip": 1.5}, "hflip must be <= 1, got 1.5"),
                         ({"optimizer": "adam"}, "optimizer must be one of 'sgd', 'adamw', got 'adam'"),
                         ({"num_workers": -1}, "num_workers must be >= 0, got -1")):
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_dict(bad)


def _consecutive_batch_miou(model, dataset, batch_size, attack=None, seed=0):
    """The per-epoch validation as a plain loop: consecutive images in batches, one confusion matrix."""
    from eroseg.metrics import ConfusionMatrix
    from eroseg.seeds import generator

    confusion = ConfusionMatrix(2)
    model.eval()
    for i in range(0, len(dataset), batch_size):
        images, labels = map(torch.stack, zip(*[dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]))
        if attack is not None:
            images = attack(model, images, labels, generator=generator(seed, "val_robust", step=i // batch_size))
        with torch.no_grad():
            confusion.update(model(images).argmax(1), labels)
    return confusion.compute()["miou"]


def test_validation_row_gives_the_numbers_of_a_plain_validation_loop():
    """Clean val mIoU equals a plain loop; so does the robust one for an attack without a random start (with
    one, the start is drawn from evaluate's per-batch stream instead of the training's own `val_robust` one)."""
    from types import SimpleNamespace

    from eroseg.attacks import create_attack
    from eroseg.training.loop import validation_row

    model, val_set = unet(seed=3), Toy(10, seed=1)
    pgd = create_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=2, random_start=False)
    run = SimpleNamespace(model=model, cfg=cfg(val_batch_size=4, val_robust_images=6, val_robust_steps=2),
                          device=torch.device("cpu"), seed=0, local_bs=4)
    row = validation_row(run, val_set, 2, pgd)
    assert row["val_miou"] == _consecutive_batch_miou(model, val_set, 4)
    robust = _consecutive_batch_miou(model, torch.utils.data.Subset(val_set, range(6)), 4, attack=pgd)
    assert row["robust_val_miou"] == robust < row["val_miou"]
