"""TRADES for segmentation: the loss on hand-made logits, the inner maximisation, the objective's checks."""

import math

import pytest
import torch

from eroseg.models import SegmentationModel, load_checkpoint
from eroseg.training import (
    TASKS,
    TradesTraining,
    TrainConfig,
    check_objective,
    identity_difference,
    trades_adversarial,
    trades_loss,
    train,
)
from eroseg.training.tasks import mean_valid_kl
from tests.conftest import HalfSplit, ToyNet, toy_batch

# One valid pixel, one void pixel (label 255) with wild logits that must count in neither term.
LABELS = torch.tensor([[[0, 255]]])  # [B=1, H=1, W=2]
CLEAN = torch.tensor([[[[0.0, 9.0]], [[0.0, -9.0]]]])  # [B, C=2, H, W]: pixel 0 p = (1/2, 1/2)
ADV = torch.tensor([[[[math.log(3.0), -7.0]], [[0.0, 7.0]]]])  # pixel 0 q = (3/4, 1/4)
KL_BY_HAND = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # = ln(4/3) / 2
CE_BY_HAND = math.log(2.0)  # -ln p_0 with p_0 = 1/2


def test_trades_loss_matches_the_hand_computed_kl_and_ce():
    terms = trades_loss(CLEAN, ADV, LABELS, beta=6.0)
    assert float(terms["kl"]) == pytest.approx(KL_BY_HAND, rel=1e-6)
    assert float(terms["ce"]) == pytest.approx(CE_BY_HAND, rel=1e-6)
    assert float(terms["loss"]) == pytest.approx(CE_BY_HAND + 6.0 * KL_BY_HAND, rel=1e-6)


def test_trades_kl_is_zero_when_the_adversarial_logits_are_the_clean_ones():
    terms = trades_loss(CLEAN, CLEAN.clone(), LABELS, beta=6.0)
    assert float(terms["kl"]) == pytest.approx(0.0, abs=1e-7)
    assert float(terms["loss"]) == pytest.approx(CE_BY_HAND, rel=1e-6)


def test_trades_loss_ignores_void_pixels():
    other = CLEAN.clone(), ADV.clone()
    other[0][0, :, 0, 1] = torch.tensor([-50.0, 50.0])
    other[1][0, :, 0, 1] = torch.tensor([50.0, -50.0])  # a huge KL and CE, but on the void pixel
    assert float(trades_loss(*other, LABELS, beta=6.0)["loss"]) == pytest.approx(
        float(trades_loss(CLEAN, ADV, LABELS, beta=6.0)["loss"]), rel=1e-6)
    all_void = torch.full_like(LABELS, 255)
    assert float(trades_loss(CLEAN, ADV, all_void, beta=6.0)["loss"]) == 0.0


def test_beta_scales_the_kl_term_only():
    losses = {beta: float(trades_loss(CLEAN, ADV, LABELS, beta=beta)["loss"]) for beta in (0.0, 1.0, 6.0)}
    assert losses[0.0] == pytest.approx(CE_BY_HAND, rel=1e-6)
    assert losses[6.0] - losses[0.0] == pytest.approx(6 * (losses[1.0] - losses[0.0]), rel=1e-5)


def _toy_model():
    torch.manual_seed(0)
    return SegmentationModel(ToyNet(), pad_multiple=1)


def test_trades_task_gradient_reaches_every_parameter():
    model = _toy_model()
    images, labels = toy_batch(2, size=16)
    task = TradesTraining(model, eps=8 / 255, step_size=2 / 255, steps=2, beta=6.0)
    res = task(images, labels, generator=torch.Generator().manual_seed(0))
    assert res["adv_mask"].all() and res["output"].shape == (2, 4, 16, 16)
    kl, ce = float(res["kl"].detach()), float(res["ce"].detach())
    assert kl > 0 and float(res["loss"].detach()) == pytest.approx(ce + 6.0 * kl, rel=1e-5)
    res["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, missing


def test_inner_maximisation_raises_the_kl_and_stays_in_the_ball():
    model = _toy_model().eval()
    images, labels = toy_batch(4, size=16)
    eps = 8 / 255
    with torch.no_grad():
        clean = model(images)

    def kl(x):
        with torch.no_grad():
            return float(mean_valid_kl(clean, model(x), labels))

    g = torch.Generator().manual_seed(0)
    start = (images + 0.001 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    random_corner = (images + eps * torch.randn(images.shape, generator=g).sign()).clamp(0, 1)
    model.train()  # the inner maximisation must run in eval mode and give the mode back
    adv = trades_adversarial(model, images, labels, eps=eps, step_size=eps / 4, steps=5,
                             generator=torch.Generator().manual_seed(0))
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    assert kl(adv) >= kl(start) and kl(adv) > 2 * kl(random_corner), (kl(start), kl(random_corner), kl(adv))
    assert float((adv - images).abs().max()) <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_objective_checks_name_the_key_and_the_valid_names():
    with pytest.raises(ValueError, match=r"methods.x.objective.name: unknown training objective 'trade'; "
                                         r"valid: adversarial, trades"):
        check_objective({"name": "trade"}, "methods.x.objective")
    with pytest.raises(ValueError, match=r"objective 'trades' has no parameter\(s\) \['bta'\]"):
        check_objective({"name": "trades", "bta": 6, "eps": 0.03, "step_size": 0.01, "steps": 1})
    with pytest.raises(ValueError, match=r"objective 'trades' needs \['eps', 'step_size', 'steps'\]"):
        check_objective({"name": "trades"})
    assert check_objective(None) == check_objective({}) == {"name": "adversarial"}
    assert check_objective({"name": "trades", "eps": "8/255", "step_size": "eps/4", "steps": 3})["beta"] == 6.0


def test_schema_objective_names_are_the_registry():
    from pathlib import Path

    import yaml

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    objective = schema["properties"]["methods"]["additionalProperties"]["properties"]["objective"]
    assert objective["properties"]["name"]["enum"] == sorted(TASKS)
    params = {k for task in TASKS.values() for k in task.PARAMS}
    assert set(objective["properties"]) - {"name"} == params


def test_a_changed_beta_is_another_run():
    objective = {"name": "trades", "eps": 0.03, "step_size": 0.01, "steps": 1}
    old = {"objective": check_objective({**objective, "beta": 6})}
    new = {"objective": check_objective({**objective, "beta": 3})}
    assert identity_difference(old, new) == "objective.beta differs (6 in the checkpoint, 3 now)"
    assert identity_difference(old, {"objective": check_objective(objective)}) is None  # beta 6 is the default


def test_trades_trains_and_records_its_objective(tmp_path):
    cfg = TrainConfig.from_dict(dict(epochs=1, batch_size=4, lr=0.01, amp=False, val_robust_steps=0))
    objective = {"name": "trades", "beta": 6, "eps": "8/255", "step_size": "eps/4", "steps": 1}
    torch.manual_seed(0)
    model = SegmentationModel(torch.nn.Conv2d(3, 2, 3, padding=1), pad_multiple=1)
    row = train(model, train_set=HalfSplit(8, size=8), val_set=HalfSplit(4, size=8, seed=1), num_classes=2,
                model_cfg={"arch": "tiny"}, cfg=cfg, attack=None, out=tmp_path / "m.pt", log_path=tmp_path / "m.csv",
                progress=False, objective=objective)
    assert math.isfinite(row["loss"]) and 0 <= row["val_miou"] <= 1
    assert load_checkpoint(tmp_path / "m.pt")["meta"]["objective"] == {**objective, "name": "trades"}
    with pytest.raises(ValueError, match="objective 'trades'.*makes its own adversarial examples"):
        train(model, train_set=HalfSplit(8, size=8), val_set=None, num_classes=2, model_cfg={"arch": "tiny"},
              cfg=cfg, attack=lambda m, x, y, generator=None: x, out=tmp_path / "n.pt", log_path=tmp_path / "n.csv",
              progress=False, objective=objective)
