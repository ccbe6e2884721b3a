"""The training-objective seam: a new objective is one registered TrainingTask subclass; the adversarial share
of the global batch.

The route is written down in docs/extending.md.
"""

from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eroseg.models import SegmentationModel, load_checkpoint
from eroseg.training import (
    TASKS,
    AdversarialTraining,
    TrainConfig,
    TrainingTask,
    adversarial_counts,
    create_task,
    train,
)
from tests.conftest import HalfSplit


class LabelSmoothingTraining(TrainingTask):
    """An objective of the kind the route adds: cross-entropy with label smoothing, no attack."""

    PARAMS: ClassVar[dict[str, Any]] = {"smoothing": 0.1}
    calls: ClassVar[list[int]] = []

    def __init__(self, model, smoothing: float):
        self.model, self.smoothing = model, smoothing

    @classmethod
    def build(cls, model, *, attack, cfg, attack_model, smoothing=0.1):
        return cls(model, smoothing)

    def __call__(self, images, labels, generator=None, n_adv=None):
        self.calls.append(images.shape[0])
        self.model.train()
        output = self.model(images)
        loss = F.cross_entropy(output, labels, ignore_index=255, label_smoothing=self.smoothing)
        return {"loss": loss, "output": output, "adv_mask": torch.zeros(images.shape[0], dtype=torch.bool)}


def test_a_registered_objective_trains_through_the_loop(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "label_smoothing", LabelSmoothingTraining)  # a temporary registration
    LabelSmoothingTraining.calls.clear()
    torch.manual_seed(0)
    model = SegmentationModel(torch.nn.Conv2d(3, 2, 3, padding=1), pad_multiple=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig.from_dict(dict(epochs=1, batch_size=4, lr=0.05, amp=False, val_robust_steps=0))
    objective = {"name": "label_smoothing", "smoothing": 0.2}
    train(model, train_set=HalfSplit(8, size=8), val_set=None, num_classes=2, model_cfg={"arch": "tiny"}, cfg=cfg,
          attack=None, out=tmp_path / "m.pt", log_path=tmp_path / "m.csv", progress=False, objective=objective)
    assert LabelSmoothingTraining.calls == [4, 4]  # two steps of the new objective
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["meta"]["objective"] == objective
    assert any(not torch.equal(before[k], v) for k, v in ckpt["state_dict"].items())


def test_an_unregistered_objective_is_refused_with_the_valid_names():
    cfg = TrainConfig.from_dict({})
    with pytest.raises(ValueError, match=r"methods.m.objective.name: unknown training objective 'label_smoothing'; "
                                         r"valid: adversarial, trades"):
        create_task({"name": "label_smoothing"}, torch.nn.Conv2d(3, 2, 1), attack=None, cfg=cfg,
                    where="methods.m.objective")


# ------------------------------------------------------------ adversarial share of the global batch
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
