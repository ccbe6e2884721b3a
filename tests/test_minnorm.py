"""Minimal-norm attacks through adv-lib: closed-form optimum, silent failures, void counts, scaling to eps, records."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from eroseg.metrics import PerImageStats
from eroseg.minnorm import evaluate_min_norm, run_min_norm, scale_to_eps, stats_at_eps
from eroseg.minnorm.attacks import attack_arguments, constraint_groups
from eroseg.minnorm.records import norms_of

pytest.importorskip("adv_lib", reason="the minnorm extra (adv-lib) is part of the test extra")

K = 3  # alma_prox's loss takes the top 3 logits


def linear_model() -> torch.nn.Conv2d:
    """Per-pixel linear classifier: logits = 4 * pixel colour, so class = brightest channel."""
    model = torch.nn.Conv2d(3, K, 1)
    with torch.no_grad():
        model.weight.copy_(4 * torch.eye(3).view(3, 3, 1, 1))
        model.bias.zero_()
    return model


def linear_batch(n=4, size=8, seed=0):
    """Images in [0.4, 0.6] (every needed perturbation stays inside [0, 1]) labelled with the model's prediction."""
    gen = torch.Generator().manual_seed(seed)
    images = 0.4 + 0.2 * torch.rand(n, 3, size, size, generator=gen)
    with torch.no_grad():
        labels = linear_model()(images).argmax(1)
    return images, labels


def closed_form(model, images, labels, norm="linf", threshold=0.99, ignore_index=255):
    """Smallest perturbation fooling ceil(threshold * N) of an image's N valid pixels of a per-pixel linear model.

    A pixel with label y flips to class j at ``margin_j / ||w_y - w_j||_q`` (q the dual norm: 1 for Linf, 2 for
    L2). Pixels are independent, so the image's Linf optimum is the k-th smallest per-pixel distance and its L2
    optimum the root of the sum of the k smallest squared distances.
    """
    weight = model.weight.view(K, 3)
    dual = 1 if norm == "linf" else 2
    out = []
    with torch.no_grad():
        logits = model(images)
        weight = weight.detach()
    for b in range(len(images)):
        valid = labels[b] != ignore_index
        lab, pixel_logits = labels[b][valid], logits[b].permute(1, 2, 0)[valid]
        margin = pixel_logits.gather(1, lab[:, None]) - pixel_logits
        gap = (weight[lab][:, None, :] - weight[None]).norm(p=dual, dim=-1)
        dist = torch.where(torch.arange(K)[None] == lab[:, None], torch.inf, margin / gap.clamp_min(1e-12))
        per_pixel = dist.min(1).values.sort().values
        k = math.ceil(threshold * len(per_pixel))
        out.append(float(per_pixel[k - 1]) if norm == "linf" else float(per_pixel[:k].square().sum().sqrt()))
    return torch.tensor(out)


# (attack, norm, steps, parameters, factor over the optimum that the found norm must stay within)
CASES = [
    ("alma_prox", "linf", 100, {"lr_init": 0.1}, 1.05),
    ("pdpgd", "linf", 100, {}, 1.15),
    ("dag", "linf", 100, {"gamma": 0.003}, 1.15),
    ("dag", "l2", 100, {"gamma": 0.01}, 1.1),
    ("pdgd", "l2", 100, {}, 1.8),
    ("pdpgd", "l2", 100, {}, 1.8),
]


@pytest.mark.parametrize("name,norm,steps,params,factor", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_attack_close_to_closed_form_optimum(name, norm, steps, params, factor):
    torch.set_num_threads(1)
    model = linear_model()
    images, labels = linear_batch()
    optimum = closed_form(model, images, labels, norm)
    result = run_min_norm(name, model, images, labels, norm=norm, steps=steps, **params)
    assert result.success.all(), f"{name} failed on {(~result.success).sum()} images"
    assert (result.norm >= optimum * (1 - 1e-3)).all(), "below the optimum: the closed form or the norm is wrong"
    assert (result.norm <= optimum * factor).all(), f"{name}: {result.norm} vs optimum {optimum}"
    assert (result.adv >= 0).all() and (result.adv <= 1).all()
    assert torch.equal(result.norm, result.perturbation_norm)


def test_silent_failure_is_infinite_norm():
    """DAG with a tiny step returns the clean image: norm 0 from adv-lib, inf and failure from the wrapper."""
    model = linear_model()
    images, labels = linear_batch(n=2)
    result = run_min_norm("dag", model, images, labels, steps=3, gamma=1e-4)
    assert torch.isinf(result.norm).all() and not result.success.any()
    assert (result.fooled_share < 0.99).all()


def test_constant_model_cannot_be_fooled():
    model = linear_model()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    images, _ = linear_batch(n=2)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    for name in ("alma_prox", "pdpgd"):
        result = run_min_norm(name, model, images, labels, steps=5)
        assert torch.isinf(result.norm).all() and not result.success.any(), name
        assert torch.equal(result.fooled_share, torch.zeros(2))


def test_alma_prox_batch_with_different_void_counts():
    """adv-lib's alma_prox raises on this batch (k = 0 beside k > 0); the wrapper groups by valid-pixel count."""
    torch.set_num_threads(1)
    model = linear_model()
    images, labels = linear_batch(n=4, size=16)
    labels[0, :8] = 255  # 128 valid pixels: k reaches 1 late; 256 valid pixels: k reaches 2
    labels[2] = 255  # no valid pixel at all
    result = run_min_norm("alma_prox", model, images, labels, steps=100, adv_threshold=0.99, lr_init=0.1)
    assert result.success[[0, 1, 3]].all()
    assert math.isnan(result.norm[2]) and math.isnan(result.fooled_share[2]) and not result.success[2]
    assert torch.equal(result.adv[2], images[2])
    optimum = closed_form(model, images[[0, 1, 3]], labels[[0, 1, 3]])
    assert (result.norm[[0, 1, 3]] <= optimum * 1.3).all()


def test_adv_lib_alma_prox_raises_on_different_void_counts():
    """The upstream bug the wrapper works around (reproducer of docs/adv_lib.md)."""
    from adv_lib.attacks.segmentation import alma_prox

    model = linear_model()
    images, labels = linear_batch(n=2, size=16)
    labels[0, :8] = 255
    with torch.compiler.set_stance("force_eager"), pytest.raises(RuntimeError, match="out of bounds"):
        alma_prox(model, images, labels, masks=labels != 255, num_steps=60)


def test_constraint_groups():
    """Grouped by the first step at which k = floor(0.01 * m * t / 9) > 0: m = 900 -> t = 1, 150 -> 6, 120 -> 8."""
    counts = torch.tensor([900, 0, 150, 120, 950, 10])
    groups = constraint_groups(counts, masking=True, decay=True, adv_threshold=0.99, steps=10)
    assert sorted(g.tolist() for g in groups) == [[0, 4], [2], [3], [5]]
    no_decay = constraint_groups(counts, masking=True, decay=False, adv_threshold=0.99, steps=10)
    assert sorted(g.tolist() for g in no_decay) == [[0, 2, 3, 4], [5]]
    assert [g.tolist() for g in constraint_groups(counts, masking=False, decay=True, adv_threshold=0.99,
                                                  steps=10)] == [[0, 2, 3, 4, 5]]


@pytest.mark.parametrize("call,message", [
    (dict(name="nope"), "expected one of"),
    (dict(name="asma", norm="l2"), "not wrapped"),
    (dict(name="alma_prox", norm="l2"), "norm 'l2' is not supported"),
    (dict(name="dag", adv_threshold=1.5), "adv_threshold"),
    (dict(name="dag", steps=0), "steps"),
    (dict(name="dag", params={"γ": 0.1}), "unknown parameter"),
])
def test_bad_arguments(call, message):
    args = {"norm": "linf", "adv_threshold": 0.99, "steps": None, "params": {}, **call}
    with pytest.raises(ValueError, match=message):
        attack_arguments(args["name"], args["norm"], args["adv_threshold"], args["steps"], args["params"])


def test_ascii_names_reach_adv_lib():
    _, kwargs = attack_arguments("alma_prox", "linf", 0.5, 7, {"mu_init": 0.5, "scale_gamma": 0.1})
    assert kwargs == {"μ_init": 0.5, "scale_γ": 0.1, "adv_threshold": 0.5, "num_steps": 7}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_scaled_perturbation_never_exceeds_eps(norm):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(6, 3, 8, 8, generator=gen)
    adv = (images + 0.5 * torch.randn(6, 3, 8, 8, generator=gen)).clamp(0, 1)
    adv[0] = images[0]  # no perturbation: stays clean
    for eps in (1 / 255, 8 / 255, 0.3, 4.0):
        scaled = scale_to_eps(images, adv, eps, norm)
        size = (scaled - images).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
        assert (size <= eps + 1e-6).all()
        assert (scaled >= 0).all() and (scaled <= 1).all()
        assert torch.equal(scaled[0], images[0])
    small = images + 1e-3 * (adv - images).sign()
    assert torch.allclose(scale_to_eps(images, small.clamp(0, 1), 0.5, norm), small.clamp(0, 1))


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def test_evaluate_min_norm_record():
    torch.set_num_threads(1)
    model = linear_model()
    images, labels = linear_batch(n=5)
    optimum = closed_form(model, images, labels)
    grid = [0.01, float(optimum.max()) * 1.2, 0.5]
    record = evaluate_min_norm(model, _Pairs(images, labels), K, attack="alma_prox", eps_grid=grid, steps=100,
                               params={"lr_init": 0.1}, batch_size=2)
    norms = norms_of(record)
    assert record["num_images"] == 5 and np.all(np.isfinite(norms))
    assert np.allclose(norms, optimum.numpy(), rtol=0.05)
    assert record["clean"]["miou"] == 1.0
    at_small, at_large = stats_at_eps(record, 0.01), stats_at_eps(record, grid[1])
    assert isinstance(at_small, PerImageStats) and at_small.tp.shape == (5, K)
    assert at_small.scores()["pixel_acc"] > 0.5 > at_large.scores()["pixel_acc"]
    assert np.all(at_large.pixel_acc <= 0.01 + 1e-9)  # every image fooled at >= 99 % beyond its norm
    with pytest.raises(ValueError, match="not on the minimal-norm record's grid"):
        stats_at_eps(record, 0.2)


def test_min_norm_record_keeps_object_summaries_at_one_eps():
    torch.set_num_threads(1)
    images, labels = linear_batch(n=3)
    labels[1, :2] = 255  # another void count: the summaries skip void pixels
    grid = [0.01, 0.05]
    record = evaluate_min_norm(linear_model(), _Pairs(images, labels), K, attack="alma_prox", eps_grid=grid,
                               steps=20, params={"lr_init": 0.1}, batch_size=2, objects_eps=0.05, connectivity=8)
    objects = record["objects"]
    assert objects["eps"] == 0.05 and objects["connectivity"] == 8 and len(objects["adv"]) == 3
    at_eps = stats_at_eps(record, 0.05)
    assert [sum(row["correct"]) for row in objects["adv"]] == list(at_eps.tp.sum(1))
    assert [sum(row["area"]) for row in objects["clean"]] == list(at_eps.label.sum(1))
    assert [sum(row["correct"]) for row in objects["clean"]] == [int((labels[i] != 255).sum()) for i in range(3)]
    with pytest.raises(ValueError, match="objects_eps 0.02 is not on the eps grid"):
        evaluate_min_norm(linear_model(), _Pairs(images, labels), K, attack="alma_prox", eps_grid=grid, steps=2,
                          objects_eps=0.02)


def _hand_record(method, seed, norms, success, at_eps_tp):
    """A record with 4 images of 10 valid pixels of one class, norms in pixel units (None: failed)."""
    counts = lambda tp: {"tp": [[t] for t in tp], "pred": [[t] for t in tp], "label": [[10]] * 4}  # noqa: E731
    return {"method": method, "seed": seed, "attack": "alma_prox", "eps_grid": [4 / 255, 8 / 255],
            "per_image": {"norm": norms, "fooled_share": [0.5] * 4, "success": success, "seconds": [0.5] * 4},
            "clean": {"miou": 1.0}, "at_eps": [{"eps": e, "per_image": counts(tp)} for e, tp in at_eps_tp]}


def test_min_norm_table_statistics():
    from eroseg.minnorm import min_norm_frame, min_norm_table, robustness_curve_figure

    record = _hand_record("standard", 0, [2 / 255, 6 / 255, 10 / 255, None], [True, True, True, False],
                          [(4 / 255, [0, 10, 10, 10]), (8 / 255, [0, 0, 10, 10])])
    table = min_norm_table([record]).set_index("method")
    row = table.loc["standard"]
    assert row["success %"] == pytest.approx(75.0)
    assert row["norm median (x/255)"] == pytest.approx(8.0)  # median of 2, 6, 10, inf
    assert row["norm q3 (x/255)"] == np.inf
    assert row["robust % @ 4/255"] == pytest.approx(75.0) and row["robust % @ 8/255"] == pytest.approx(50.0)
    assert row["mIoU % @ 8/255"] == pytest.approx(100 * 20 / 40)  # one class: IoU = tp / (pred + label - tp)
    assert row["s/image"] == pytest.approx(0.5)
    sea = pd.DataFrame({"method": ["standard"], "eps": [8 / 255], "miou": [0.3]})
    fig = robustness_curve_figure(min_norm_frame([record]), sea_points=sea)
    assert len(fig.axes[1].collections) == 1  # the SEA point
