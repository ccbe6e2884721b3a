"""The training-objective seam: a new objective is one registered TrainingTask subclass.

The route is written down in docs/extending.md.
"""

from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F

from eroseg.models import SegmentationModel, load_checkpoint
from eroseg.training import TASKS, TrainConfig, TrainingTask, create_task, train
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
