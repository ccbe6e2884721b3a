"""Attack suite: shared rules for every attack, hand-worked weights, and strength on a trained model."""

import math

import pytest
import torch
import torch.nn as nn

from eroseg.attacks import ATTACKS, attack_parameters, create_attack, pixel_accuracy_per_image, worst_case_attack
from eroseg.attacks.cospgd import cospgd_weights
from eroseg.attacks.eroseg import eroseg_masks, quantile_schedule
from eroseg.attacks.segpgd import segpgd_lambda, segpgd_weights
from eroseg.metrics import ConfusionMatrix

C = 4
EPS = 8 / 255
ITERATIVE = ["pgd", "segpgd", "cospgd", "eroseg"]
CASES = [(a, n) for a in ["fgsm", *ITERATIVE] for n in ("linf", "l2")]


def make_attack(name, norm="linf", **kw):
    eps = EPS if norm == "linf" else 0.5
    params = dict(eps=eps, norm=norm)
    steps = kw.pop("steps", 5)
    if name != "fgsm":
        params.update(step_size=eps / 4, steps=steps)
    params.update(kw)
    return create_attack(name, **params)


def toy_batch(n=8, size=16, seed=0):
    """Four quadrant classes; each class has its own colour, plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    base = ((yy >= size // 2).long() * 2 + (xx >= size // 2).long())
    labels = base.expand(n, size, size).clone()
    shift = torch.randint(-3, 4, (n,), generator=g)
    for i in range(n):
        labels[i] = torch.roll(labels[i], int(shift[i]), dims=1)
    colours = torch.tensor([[0.2, 0.3, 0.4], [0.5, 0.3, 0.3], [0.35, 0.45, 0.3], [0.4, 0.4, 0.5]])
    images = colours[labels].permute(0, 3, 1, 2) + 0.05 * torch.randn(n, 3, size, size, generator=g)
    labels[:, 0, :] = 255  # void row
    return images.clamp(0, 1), labels


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                 nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, C, 1))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = Tiny()
    images, labels = toy_batch(64, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(images), labels, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    x, y = toy_batch(16, seed=2)
    with torch.no_grad():
        acc = pixel_accuracy_per_image(model(x), y).mean()
    assert acc > 0.9, f"toy model did not learn ({acc:.2f})"
    return model, x, y


def miou(model, x, y):
    cm = ConfusionMatrix(C)
    with torch.no_grad():
        cm.update(model(x).argmax(1), y)
    return cm.compute()["miou"]


# ---------------------------------------------------------------- shared rules
@pytest.mark.parametrize("name,norm", CASES)
def test_budget_range_and_no_param_grads(trained, name, norm):
    model, x, y = trained
    adv = make_attack(name, norm)(model, x, y, generator=torch.Generator().manual_seed(0))
    d = adv - x
    if norm == "linf":
        assert d.abs().max() <= EPS + 1e-6
    else:
        assert d.flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert adv.min() >= 0 and adv.max() <= 1
    assert d.abs().max() > 0, "the attack did not move"
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert not adv.requires_grad


@pytest.mark.parametrize("name", ["fgsm", *ITERATIVE])
def test_each_attack_lowers_miou(trained, name):
    model, x, y = trained
    clean = miou(model, x, y)
    adv = make_attack(name, steps=10)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert miou(model, adv, y) < clean - 0.1


@pytest.mark.parametrize("name", ["fgsm", *ITERATIVE])
def test_mode_restored_even_when_model_raises(name):
    class Boom(Tiny):
        calls = 0

        def forward(self, x):
            Boom.calls += 1
            if Boom.calls == 2:
                raise RuntimeError("boom")
            return super().forward(x)

    model = Boom().train()
    x, y = toy_batch(2)
    with pytest.raises(RuntimeError, match="boom"):
        make_attack(name, best_iterate=True)(model, x, y)
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    model.eval()
    Boom.calls = -1000
    make_attack(name)(model, x, y)
    assert not model.training


@pytest.mark.parametrize("name", ["fgsm", *ITERATIVE])
def test_works_under_no_grad_and_refuses_inference_mode(trained, name):
    model, x, y = trained
    with torch.no_grad():
        adv = make_attack(name)(model, x[:2], y[:2])
    assert (adv - x[:2]).abs().max() > 0
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        make_attack(name)(model, x[:2], y[:2])


@pytest.mark.parametrize("name", ["fgsm", *ITERATIVE])
def test_ignored_pixels_change_nothing(trained, name):
    """Whatever the (ignored) label under a void pixel says, the result is the same."""
    model, x, y = trained
    y2 = y.clone()
    y2[:, 0, :] = 255
    y3 = y.clone()
    y3[:, 0, :] = 255
    y3[:, 1, :4] = 255
    a = make_attack(name)(model, x, y2, generator=torch.Generator().manual_seed(1))
    # Same void set but the model's prediction there is irrelevant: compare with a model whose
    # void-row logits are scrambled.

    class Scrambled(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, inp):
            out = self.m(inp)
            noise = torch.zeros_like(out)
            noise[:, :, 0, :] = 5 * torch.arange(C, dtype=out.dtype).view(1, C, 1) * inp[:, :1, 0, :]
            return out + noise

    b = make_attack(name)(Scrambled(model).eval(), x, y2, generator=torch.Generator().manual_seed(1))
    # Row 0 influences neighbours' receptive fields, so compare the gradient's sign on rows >= 3.
    assert torch.equal(a[..., 3:, :], b[..., 3:, :])
    c = make_attack(name)(model, x, y3, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, c), "voiding more pixels must matter (the test could not fail otherwise)"


@pytest.mark.parametrize("name", ["fgsm", *ITERATIVE])
def test_dtype_device_and_seed(trained, name):
    model, x, y = trained
    m64 = Tiny().double().eval()
    m64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    adv = make_attack(name)(m64, x[:2].double(), y[:2])
    assert adv.dtype == torch.float64 and adv.device == x.device
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = make_attack(name)(model, x, y, generator=g())
    b = make_attack(name)(model, x, y, generator=g())
    assert torch.equal(a, b)


def test_parameter_validation_names_the_parameter():
    with pytest.raises(ValueError, match="unknown attack 'pgdd'.*fgsm, pgd, segpgd, cospgd, eroseg"):
        create_attack("pgdd")
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['n_iter'\].*steps"):
        create_attack("pgd", n_iter=3)
    model, (x, y) = Tiny(), toy_batch(1)
    for bad, match in [(dict(eps=-1), "eps"), (dict(steps=0), "steps"), (dict(norm="l1"), "norm"),
                       (dict(step_size=0), "step_size")]:
        with pytest.raises(ValueError, match=match):
            create_attack("pgd", **bad)(model, x, y)
    with pytest.raises(ValueError, match="kernel_size"):
        create_attack("eroseg", kernel_size=2)(model, x, y)
    with pytest.raises(ValueError, match="single-step"):
        create_attack("fgsm", steps=3)(model, x, y)
    assert attack_parameters("eroseg")["q0"] == 0.2
    assert set(ATTACKS) == {"fgsm", "pgd", "segpgd", "cospgd", "eroseg"}


# ------------------------------------------------------------ hand-worked weights
def _logits(pred, conf=None):
    """Logits [1, C, H, W] whose argmax is ``pred`` (int [H, W])."""
    out = torch.zeros(1, C, *pred.shape)
    out.scatter_(1, pred.view(1, 1, *pred.shape), 1.0 if conf is None else conf.view(1, 1, *pred.shape))
    return out


def test_segpgd_lambda_and_weights():
    assert [segpgd_lambda(t, 4) for t in range(4)] == [0, 0.125, 0.25, 0.375]
    labels = torch.tensor([[[0, 1], [2, 255]]])
    pred = torch.tensor([[0, 0], [2, 1]])
    valid = labels != 255
    w, _ = segpgd_weights(2, 4, _logits(pred), labels, valid)
    # correct (0,0) and (1,0): 1 - 0.25; wrong (0,1): 0.25; void: 0.
    assert torch.allclose(w, torch.tensor([[[0.75, 0.25], [0.75, 0.0]]]))


def test_cospgd_weights_hand_worked():
    logits = torch.tensor([[math.log(3), 0.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2)  # pixel0 p=(.75,.25), pixel1 p=(.5,.5)
    labels = torch.tensor([[[0, 1]]])
    w, _ = cospgd_weights(0, 1, logits, labels, labels != 255)
    expected = torch.tensor([[[0.75 / math.hypot(0.75, 0.25), 0.5 / math.hypot(0.5, 0.5)]]])
    assert torch.allclose(w, expected, atol=1e-6)


def test_quantile_schedule():
    assert quantile_schedule(0, 5, 0.2) == pytest.approx(0.2)
    assert quantile_schedule(4, 5, 0.2) == pytest.approx(1.0)
    assert quantile_schedule(2, 5, 0.2) == pytest.approx(0.6)
    assert quantile_schedule(3, 5, 0.2, "constant") == pytest.approx(0.2)
    assert quantile_schedule(2, 5, 0.0, "cosine") == pytest.approx(0.5)


def test_eroseg_sensitive_set_is_the_lower_quantile_of_correct_pixels():
    # 1 x 5 image, all labelled 0; pixels 0..3 correct with rising confidence, pixel 4 wrong.
    labels = torch.zeros(1, 1, 5, dtype=torch.long)
    logits = torch.zeros(1, C, 1, 5)
    logits[0, 0, 0, :4] = torch.tensor([0.5, 1.0, 2.0, 3.0])
    logits[0, 1, 0, 4] = 2.0
    valid = labels != 255
    sizes = []
    for q, expected in [(0.0, [1, 0, 0, 0, 0]), (1 / 3, [1, 1, 0, 0, 0]), (0.5, [1, 1, 1, 0, 0]),
                        (1.0, [1, 1, 1, 1, 0])]:
        # nearest order statistic: index round(q * (4 - 1)) of the sorted confidences
        _, m = eroseg_masks(logits, labels, valid, q=q, front=False)
        assert m["sensitive"][0, 0].int().tolist() == expected, q
        sizes.append(int(m["sensitive"].sum()))
        assert not (m["sensitive"] & m["fooled"]).any()
    assert sizes == sorted(sizes)


def test_eroseg_front_is_correct_pixels_next_to_fooled_ones():
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    labels[0, 4, 4] = 255
    pred = torch.zeros(5, 5, dtype=torch.long)
    pred[2, 2] = 1  # one fooled pixel in the middle
    w, m = eroseg_masks(_logits(pred), labels, labels != 255, q=0.0, kernel_size=3, selection=False, gamma=0.5)
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[1:4, 1:4] = True
    expected[2, 2] = False
    assert torch.equal(m["front"][0], expected)
    assert torch.equal(m["attacked"][0], expected)
    assert w[0, 2, 2] == 0.5 and w[0, 1, 1] == 1.0 and w[0, 0, 0] == 0.0
    _, m5 = eroseg_masks(_logits(pred), labels, labels != 255, q=0.0, kernel_size=5, selection=False)
    assert int(m5["front"].sum()) == 23  # the whole 5x5 minus the fooled and the void pixel


def test_eroseg_fallback_when_nothing_is_attacked():
    labels = torch.zeros(2, 3, 3, dtype=torch.long)
    pred = torch.zeros(3, 3, dtype=torch.long)
    logits = torch.cat([_logits(pred), _logits(pred)])
    w, m = eroseg_masks(logits, labels, labels != 255, q=0.0, selection=False)
    assert m["attacked"].all() and torch.equal(w, torch.ones(2, 3, 3))


def test_eroseg_callback_records_masks(trained):
    model, x, y = trained
    seen = []
    make_attack("eroseg", steps=4)(model, x[:2], y[:2], callback=seen.append)
    assert [s["step"] for s in seen] == [0, 1, 2, 3]
    for s in seen:
        assert s["attacked"].shape == y[:2].shape and s["attacked"].dtype == torch.bool
        assert not (s["attacked"] & s["fooled"]).any()
    # The attacked share of correct pixels grows with q_t.
    share = [float(s["sensitive"].sum() / s["correct"].sum().clamp_min(1)) for s in seen]
    assert share[-1] > share[0]


# ----------------------------------------------------------- strength properties
def test_best_iterate_more_steps_never_worse(trained):
    model, x, y = trained
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a10 = create_attack("pgd", eps=EPS, step_size=EPS / 4, steps=10, best_iterate=True)(model, x, y, generator=g())
    a20 = create_attack("pgd", eps=EPS, step_size=EPS / 4, steps=20, best_iterate=True)(model, x, y, generator=g())
    with torch.no_grad():
        acc10 = pixel_accuracy_per_image(model(a10), y)
        acc20 = pixel_accuracy_per_image(model(a20), y)
    assert torch.all(acc20 <= acc10 + 1e-9)


def test_worst_case_never_better_than_any_attack(trained):
    model, x, y = trained
    attacks = {n: make_attack(n, steps=3) for n in ["fgsm", "pgd", "eroseg"]}
    adv, chosen, accs = worst_case_attack(model, x, y, attacks)
    with torch.no_grad():
        acc = pixel_accuracy_per_image(model(adv), y)
    best_single = torch.stack(list(accs.values())).min(0).values
    assert torch.allclose(acc, best_single)
    for a in accs.values():
        assert torch.all(acc <= a + 1e-9)
    assert chosen.shape == (x.shape[0],)


def test_order_statistic_matches_sort():
    from eroseg.attacks.eroseg import order_statistic

    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, 50, generator=g)
    v[2, 10:] = math.inf  # a row with only 10 finite values
    v[3] = 1.0  # ties
    idx = torch.tensor([0, 49, 9, 25, 7, 13])
    expected = v.sort(1).values[torch.arange(6), idx]
    assert torch.equal(order_statistic(v, idx), expected)
    assert torch.equal(order_statistic(v, torch.zeros(6, dtype=torch.long)), v.min(1).values)
