"""Tests of the attack suite: the shared rules every attack obeys, hand-worked weights, and strength on a toy model."""

import functools
import math

import pytest
import torch
import torch.nn as nn

from eroseg.attacks import (
    ATTACKS,
    apgd,
    attack_parameters,
    create_attack,
    pixel_accuracy_per_image,
    run_attack,
    sea,
    segmentation_loss,
    worst_case_attack,
)
from eroseg.attacks.core import project, random_init, step
from eroseg.attacks.cospgd import cospgd_weights
from eroseg.attacks.eroseg import (
    dilate,
    eroseg_masks,
    erosion_front,
    masked_quantile,
    order_statistic,
    quantile_schedule,
    true_class_log_odds,
)
from eroseg.attacks.segpgd import segpgd_lambda, segpgd_weights
from tests.conftest import ATTACK_NAMES as NAMES
from tests.conftest import TOY_CLASSES as C
from tests.conftest import TOY_EPS as EPS
from tests.conftest import TOY_SIZE as SIZE
from tests.conftest import ToyNet as Tiny
from tests.conftest import attack_params as params
from tests.conftest import toy_batch

ITERATIVE = NAMES[1:]
CASES = [(a, n) for a in NAMES for n in ("linf", "l2")]


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = Tiny()
    images, labels = toy_batch(64, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(120):
        loss = nn.functional.cross_entropy(model(images), labels, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    x, y = toy_batch(8, seed=2)
    with torch.no_grad():
        acc = pixel_accuracy_per_image(model(x), y).mean()
    assert acc > 0.9, f"toy model did not learn (pixel accuracy {acc:.2f}); the strength tests would be meaningless"
    return model, x, y


def make(name, norm="linf", **kw):
    return create_attack(name, **params(name, norm, **kw))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def acc_of(model, images, labels):
    with torch.no_grad():
        return pixel_accuracy_per_image(model(images), labels)


def _logits(pred, margin=2.0):
    """Logits ``[1, C, H, W]`` whose argmax is ``pred`` (int ``[H, W]``)."""
    out = torch.zeros(1, C, *pred.shape)
    out.scatter_(1, pred.view(1, 1, *pred.shape), margin)
    return out


# ---------------------------------------------------------------- shared rules
@pytest.mark.parametrize("name,norm", CASES)
def test_budget_and_box(trained, name, norm):
    model, x, y = trained
    saturated = ((x - 0.42) * 20 + 0.5).clamp(0, 1)  # many pixels at 0 or 1: the [0, 1] clamp must act
    assert (saturated == 0).any() and (saturated == 1).any()
    for images in (x, saturated):
        adv = make(name, norm)(model, images, y, generator=gen())
        d = adv - images
        size = d.abs().amax(dim=(1, 2, 3)) if norm == "linf" else d.flatten(1).norm(dim=1)
        assert size.max() <= EPS[norm] + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert d.abs().max() > 0, "the attack did not move"
        assert adv.shape == images.shape and adv.dtype == images.dtype and not adv.requires_grad
        if images is x:  # the budget is used, so the bound above is a real constraint
            assert size.max() > (0.99 if norm == "linf" else 0.9) * EPS[norm]


@pytest.mark.parametrize("name,norm", CASES)
def test_model_parameters_untouched(trained, name, norm):
    model, x, y = trained
    model.net[0].bias.requires_grad_(False)  # a partly frozen model must stay partly frozen
    try:
        flags = [p.requires_grad for p in model.parameters()]
        state = {k: v.clone() for k, v in model.state_dict().items()}
        make(name, norm)(model, x, y, generator=gen())
        assert all(p.grad is None for p in model.parameters())
        assert [p.requires_grad for p in model.parameters()] == flags
        # Weights and BatchNorm running statistics unchanged (the attack's passes ran in eval mode).
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    finally:
        model.net[0].bias.requires_grad_(True)


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_during_attack_and_each_module_restored(name):
    model = Tiny().train()
    model.net[1].eval()  # train mode with a frozen BatchNorm: must come back exactly like this
    before = [m.training for m in model.modules()]
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append([s.training for s in m.modules()]))
    x, y = toy_batch(2)
    make(name, best_iterate=True)(model, x, y)
    assert seen and all(not any(flags) for flags in seen), "some forward pass ran in train mode"
    assert [m.training for m in model.modules()] == before


@pytest.mark.parametrize("name", NAMES)
def test_mode_restored_when_model_raises(name):
    class Boom(Tiny):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("boom")
            return super().forward(x)

    model = Boom().train()
    model.net[1].eval()
    before = [m.training for m in model.modules()]
    x, y = toy_batch(2)
    with pytest.raises(RuntimeError, match="boom"):
        make(name, best_iterate=True)(model, x, y)  # fgsm's 2nd call is the best-iterate forward
    assert model.calls == 2
    assert [m.training for m in model.modules()] == before
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name,norm", CASES)
def test_works_under_no_grad(trained, name, norm):
    model, x, y = trained
    outside = make(name, norm)(model, x, y, generator=gen(3))
    with torch.no_grad():
        inside = make(name, norm)(model, x, y, generator=gen(3))
    assert torch.equal(inside, outside) and (inside - x).abs().max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_refuses_inference_mode_but_accepts_its_tensors(trained, name):
    model, x, y = trained
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"autograd.*inference_mode"):
            make(name)(model, x, y)
        xi, yi = x.clone(), y.clone()
    assert xi.is_inference()
    adv = make(name)(model, xi, yi, generator=gen())
    assert torch.equal(adv, make(name)(model, x, y, generator=gen()))


class Scrambled(nn.Module):
    """Adds input-dependent garbage to the logits inside ``region``: it matters iff those pixels count."""

    def __init__(self, model, region):
        super().__init__()
        self.model, self.region = model, region

    def forward(self, inp):
        out = self.model(inp)
        garbage = 5 * torch.arange(C, dtype=out.dtype).view(1, C, 1, 1) * (inp[:, :1] - 0.3) * 10
        return out + garbage * self.region.unsqueeze(1).to(out.dtype)


@pytest.mark.parametrize("name,norm", CASES)
def test_ignored_pixels_change_nothing(trained, name, norm):
    model, x, y = trained
    void = y == 255
    scrambled = Scrambled(model, void).eval()
    a = make(name, norm)(model, x, y, generator=gen(1))
    b = make(name, norm)(scrambled, x, y, generator=gen(1))
    assert torch.equal(a, b), "what the model predicts at void pixels changed the attack"
    # Another void value: the same pixels marked -1 with ignore_index=-1 give the same result.
    c = make(name, norm, ignore_index=-1)(model, x, torch.where(void, -1, y), generator=gen(1))
    assert torch.equal(a, c)
    # Control (the test can fail): once those pixels are labelled, the garbage there does matter.
    labelled = torch.where(void, torch.zeros_like(y), y)
    d = make(name, norm)(model, x, labelled, generator=gen(1))
    e = make(name, norm)(scrambled, x, labelled, generator=gen(1))
    assert not torch.equal(d, e)


@pytest.mark.parametrize("name,norm", CASES)
def test_dtype_and_device_follow_inputs(trained, name, norm):
    model, x, y = trained
    m64 = Tiny().double().eval()
    m64.load_state_dict(model.state_dict())
    seen = []
    adv = make(name, norm)(m64, x.double(), y, generator=gen(), callback=seen.append)
    assert adv.dtype == torch.float64 and adv.device == x.device
    assert seen[0]["logits"].dtype == torch.float64, "float64 logits were cast down"
    assert (adv - x.double()).abs().max() > 0


@pytest.mark.parametrize("name,norm", CASES)
def test_generator_seed_reproducible(trained, name, norm):
    model, x, y = trained
    rng = torch.get_rng_state()
    a = make(name, norm)(model, x, y, generator=gen(5))
    b = make(name, norm)(model, x, y, generator=gen(5))
    c = make(name, norm)(model, x, y, generator=gen(6))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), rng), "the global RNG was used instead of the generator"
    if name == "fgsm":
        assert torch.equal(a, c)  # no random start: the seed cannot matter
    else:
        assert not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_amp_is_a_noop_on_cpu(trained, name):
    model, x, y = trained
    assert torch.equal(make(name, amp=True)(model, x, y, generator=gen()), make(name)(model, x, y, generator=gen()))


@pytest.mark.parametrize("name", NAMES)
def test_callback_info(trained, name):
    model, x, y = trained
    seen = []
    steps = 1 if name == "fgsm" else 4
    kw = {} if name == "fgsm" else {"steps": steps}
    make(name, **kw)(model, x, y, generator=gen(), callback=seen.append)
    assert [s["step"] for s in seen] == list(range(steps))
    valid = y != 255
    for s in seen:
        assert s["logits"].shape == (x.shape[0], C, SIZE, SIZE) and not s["logits"].requires_grad
        assert torch.equal(s["fooled"], valid & (s["logits"].argmax(1) != y))
        assert (s["images"] - x).abs().max() <= EPS["linf"] + 1e-6
        if name in ("fgsm", "pgd"):
            assert s["weights"] is None
        else:
            assert s["weights"].shape == y.shape and not s["weights"].requires_grad
            assert (s["weights"][~valid] == 0).all()
    if name == "eroseg":
        for s in seen:
            for key in ("sensitive", "front", "attacked"):
                assert s[key].dtype == torch.bool and s[key].shape == y.shape
                assert not (s[key] & s["fooled"]).any() and not (s[key] & ~valid).any()


# -------------------------------------------------------- core building blocks
def test_segmentation_loss_divides_by_valid_pixels_of_the_batch():
    logits = torch.zeros(2, 2, 1, 2)
    logits[0, 0, 0, 0] = math.log(3)  # p = (3/4, 1/4)
    labels = torch.tensor([[[0, 255]], [[1, 1]]])
    weights = torch.tensor([[[2.0, 7.0]], [[1.0, 0.5]]])
    ce0, ce_half = -math.log(0.75), math.log(2)
    expected = (2 * ce0 + 1 * ce_half + 0.5 * ce_half) / 3  # 3 valid pixels in the batch; void adds nothing
    assert segmentation_loss(logits, labels, weights) == pytest.approx(expected, rel=1e-6)
    assert segmentation_loss(logits, labels, None) == pytest.approx((ce0 + 2 * ce_half) / 3, rel=1e-6)
    # Tiling every image 2 x 2 (4x the pixels) leaves the loss unchanged: the step does not depend on size.
    tile = lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    assert segmentation_loss(tile(logits), tile(labels), tile(weights)) == pytest.approx(expected, rel=1e-6)


def test_random_start_is_uniform():
    x = torch.zeros(20000, 1, 1, 2)
    lin = random_init(x, 0.5, "linf", gen())
    assert lin.abs().max() <= 0.5 and lin.min() < -0.49 and lin.max() > 0.49
    assert abs(float(lin.mean())) < 0.01 and float((lin > 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    l2 = random_init(x, 0.5, "l2", gen())
    r = l2.flatten(1).norm(dim=1) / 0.5
    assert r.max() <= 1 + 1e-6
    # Uniform in a disc (d = 2): r^2 is uniform on [0, 1], so its mean is 1/2 and its median 1/2.
    assert float((r ** 2).mean()) == pytest.approx(0.5, abs=0.01)
    assert float((r ** 2).median()) == pytest.approx(0.5, abs=0.02)
    angle = torch.atan2(l2[:, 0, 0, 1], l2[:, 0, 0, 0])
    assert float((angle > 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    big = random_init(torch.zeros(4, 3, 8, 8), 0.5, "l2", gen())  # d = 192: the radius concentrates at eps
    assert big.flatten(1).norm(dim=1).min() > 0.45


def test_steps_and_projections():
    delta = torch.zeros(2, 1, 2, 2)
    grad = torch.tensor([[[[3.0, -0.1], [0.0, 2.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    assert torch.equal(step(delta, grad, 0.1, "linf")[0], torch.tensor([[[0.1, -0.1], [0.0, 0.1]]]))
    l2 = step(delta, grad, 0.1, "l2")
    assert l2[0].norm() == pytest.approx(0.1, rel=1e-6)
    assert torch.allclose(l2[0], 0.1 * grad[0] / grad[0].norm())
    assert torch.equal(l2[1], torch.zeros(1, 2, 2)), "a zero gradient must give a zero step, not NaN"
    x = torch.full((2, 1, 2, 2), 0.5)
    far = torch.tensor([[[[0.3, 0.4], [0.0, 0.0]]], [[[0.1, 0.0], [0.0, 0.0]]]])
    p = project(x, far, 0.25, "l2")
    assert p[0].norm() == pytest.approx(0.25, rel=1e-6) and torch.allclose(p[0], far[0] * 0.5)
    assert torch.allclose(p[1], far[1], rtol=0, atol=1e-7), "a point inside the ball must not move"
    assert torch.allclose(project(x, far, 0.2, "linf")[0], torch.tensor([[[0.2, 0.2], [0.0, 0.0]]]), rtol=0, atol=1e-7)
    box = project(torch.full((1, 1, 1, 2), 0.9), torch.tensor([[[[0.3, -0.3]]]]), 0.5, "linf")
    assert torch.allclose(box, torch.tensor([[[[0.1, -0.3]]]]))


def test_weight_fn_contract(trained):
    model, x, y = trained
    kw = dict(eps=EPS["linf"], step_size=EPS["linf"] / 4, steps=3)
    ones = lambda t, T, logits, labels, valid: torch.ones_like(labels, dtype=logits.dtype)  # noqa: E731
    seen = []
    with_masks = lambda t, T, logits, labels, valid: (ones(t, T, logits, labels, valid), {"mine": t})  # noqa: E731
    ref = run_attack(model, x, y, generator=gen(), **kw)
    assert torch.equal(run_attack(model, x, y, generator=gen(), weight_fn=ones, **kw), ref)
    assert torch.equal(run_attack(model, x, y, generator=gen(), weight_fn=lambda *a: None, **kw), ref)
    assert torch.equal(run_attack(model, x, y, generator=gen(), weight_fn=with_masks, callback=seen.append, **kw), ref)
    assert [s["mine"] for s in seen] == [0, 1, 2]
    # Weight 0 everywhere: no gradient, no step; the result is the (clamped) random start.
    zero = lambda t, T, logits, labels, valid: torch.zeros_like(labels, dtype=logits.dtype)  # noqa: E731
    start = (x + random_init(x, EPS["linf"], "linf", gen())).clamp(0, 1)
    assert torch.allclose(run_attack(model, x, y, generator=gen(), weight_fn=zero, **kw), start, atol=1e-7)
    with pytest.raises(ValueError, match="weight_fn must return weights shaped like labels"):
        run_attack(model, x, y, weight_fn=lambda *a: torch.ones(3), **kw)


def test_pixel_accuracy_per_image():
    labels = torch.tensor([[[0, 1], [2, 255]], [[255, 255], [255, 255]]])
    pred = torch.tensor([[[0, 0], [2, 1]], [[0, 0], [0, 0]]])
    acc = pixel_accuracy_per_image(pred, labels)
    assert torch.allclose(acc, torch.tensor([2 / 3, 1.0]))  # void left out; an all-void image counts as 1
    logits = torch.nn.functional.one_hot(pred, C).permute(0, 3, 1, 2).float()
    assert torch.equal(pixel_accuracy_per_image(logits, labels), acc)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("name,bad,exc,match", [
    ("pgd", dict(eps=0), ValueError, "eps must be a finite number > 0"),
    ("pgd", dict(eps=-8 / 255), ValueError, "eps"),
    ("pgd", dict(eps=math.nan), ValueError, "eps"),
    ("pgd", dict(eps="8/255"), TypeError, "eps must be a real number"),
    ("pgd", dict(steps=0), ValueError, "steps must be an integer >= 1, got 0"),
    ("pgd", dict(steps=2.5), TypeError, "steps"),
    ("pgd", dict(step_size=0), ValueError, "step_size"),
    ("pgd", dict(norm="l1"), ValueError, r"norm must be one of \('linf', 'l2'\), got 'l1'"),
    ("pgd", dict(random_start="false"), TypeError, "random_start must be a bool"),
    ("pgd", dict(generator=0), TypeError, "generator"),
    ("pgd", dict(callback=3), TypeError, "callback"),
    ("fgsm", dict(steps=3), ValueError, "single-step"),
    ("eroseg", dict(q0=1.5), ValueError, "q0 must be in"),
    ("eroseg", dict(schedule="exp"), ValueError, "schedule must be one of"),
    ("eroseg", dict(kernel_size=2), ValueError, "kernel_size must be an odd integer"),
    ("eroseg", dict(kernel_size=3.0), TypeError, "kernel_size"),
    ("eroseg", dict(gamma=-1.0), ValueError, "gamma"),
    ("eroseg", dict(front="false"), TypeError, "front must be a bool"),
    ("eroseg", dict(front=False, selection=False), ValueError, "front and selection"),
])
def test_bad_parameters_are_named(name, bad, exc, match):
    model, (x, y) = Tiny().eval(), toy_batch(1)
    with pytest.raises(exc, match=match):  # at creation time ...
        create_attack(name, **bad)
    with pytest.raises(exc, match=match):  # ... and when the function is called directly
        ATTACKS[name](model, x, y, **bad)


def test_bad_inputs_are_named():
    model, (x, y) = Tiny().eval(), toy_batch(2)
    atk = make("pgd")
    with pytest.raises(TypeError, match="images must be a floating-point"):
        atk(model, (x * 255).to(torch.uint8), y)
    with pytest.raises(TypeError, match="labels must be an integer"):
        atk(model, x, y.float())
    with pytest.raises(ValueError, match=r"labels \[B, H, W\]"):
        atk(model, x, y[:, :-1])
    with pytest.raises(ValueError, match="model must return logits"):
        atk(lambda inp: model(inp)[..., :-1], x, y)


@pytest.mark.parametrize("attack,own", [
    (functools.partial(run_attack, step_size=1 / 255), dict(weight_fn=3)),
    (apgd, dict(momentum=2.0)),
    (sea, dict(losses=[])),
], ids=["run_attack", "apgd", "sea"])
def test_argument_checks_run_in_order(attack, own):
    """check_attack_arguments: grad mode, then the common parameters, the attack's own ones, the inputs."""
    model, (x, y) = Tiny().eval(), toy_batch(1)
    bad_labels = y.float()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        attack(model, x, bad_labels, eps=0, steps=1, **own)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        attack(model, x, bad_labels, eps=0, steps=1, **own)
    with pytest.raises((TypeError, ValueError), match=f"^{next(iter(own))} must"):
        attack(model, x, bad_labels, eps=0.1, steps=1, **own)
    with pytest.raises(TypeError, match="labels must be an integer"):
        attack(model, x, bad_labels, eps=0.1, steps=1)


# -------------------------------------------------------------------- registry
def test_registry():
    assert list(ATTACKS) == NAMES + ["apgd", "sea"]
    with pytest.raises(ValueError, match="unknown attack 'pgdd'; valid: fgsm, pgd, segpgd, cospgd, eroseg"):
        create_attack("pgdd")
    with pytest.raises(ValueError, match="unknown attack 'x'; valid: fgsm, pgd"):
        attack_parameters("x")
    with pytest.raises(ValueError, match=r"unknown attack 'erosg'; valid: .*, sea; did you mean 'eroseg'\?$"):
        create_attack("erosg")
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['n_iter'\]; valid: eps, step_size, steps, norm"):
        create_attack("pgd", n_iter=3)
    with pytest.raises(ValueError, match=r"'fgsm' has no parameter\(s\) \['step_size'\]"):
        create_attack("fgsm", step_size=0.1)
    defaults = attack_parameters("eroseg")
    assert defaults["q0"] == 0.2 and defaults["schedule"] == "linear" and defaults["kernel_size"] == 3
    assert defaults["gamma"] == 0.0 and defaults["front"] is True and defaults["selection"] is True
    assert attack_parameters("pgd")["norm"] == "linf" and "model" not in attack_parameters("pgd")
    atk = create_attack("pgd", eps=0.5, norm="l2", step_size=0.1, steps=2)
    assert atk.__name__ == "pgd" and atk.keywords["norm"] == "l2"
    model, (x, y) = Tiny().eval(), toy_batch(1)
    adv = atk(model, x, y, steps=1, generator=gen())  # call-time override
    assert (adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-6


# --------------------------------------------------------- hand-worked weights
def test_segpgd_lambda_and_weights():
    assert [segpgd_lambda(t, 4) for t in range(4)] == [0, 0.125, 0.25, 0.375]
    labels = torch.tensor([[[0, 1], [2, 255]]])
    pred = torch.tensor([[0, 0], [2, 1]])
    w, _ = segpgd_weights(2, 4, _logits(pred), labels, labels != 255)
    # correct (0,0) and (1,0): 1 - 0.25; wrong (0,1): 0.25; void: 0.
    assert torch.equal(w, torch.tensor([[[0.75, 0.25], [0.75, 0.0]]]))
    w0, _ = segpgd_weights(0, 4, _logits(pred), labels, labels != 255)
    assert torch.equal(w0, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))
    wt, _ = segpgd_weights(2, 4, _logits(pred), labels, labels != 255, targeted=True)
    assert torch.equal(wt, torch.tensor([[[0.25, 0.75], [0.25, 0.0]]]))  # targeted: the roles swap


def test_cospgd_weights_hand_worked():
    # pixel 0: p = (3/4, 1/4); pixel 1: p = (1/2, 1/2); pixel 2 void.
    logits = torch.tensor([[math.log(3), 0.0, 5.0], [0.0, 0.0, 0.0]]).reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 255]]])
    w, _ = cospgd_weights(0, 1, logits, labels, labels != 255)
    expected = torch.tensor([[[0.75 / math.hypot(0.75, 0.25), 0.5 / math.hypot(0.5, 0.5), 0.0]]])
    assert torch.allclose(w, expected, atol=1e-6)
    wt, _ = cospgd_weights(0, 1, logits, labels, labels != 255, targeted=True)
    assert torch.allclose(wt, (1 - expected) * torch.tensor([1.0, 1.0, 0.0]), atol=1e-6)


def test_quantile_schedule():
    assert [quantile_schedule(t, 5, 0.2) for t in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert quantile_schedule(0, 1, 0.2) == 0.2  # T = 1: max(T - 1, 1) avoids 0 / 0
    assert quantile_schedule(3, 5, 0.2, "constant") == 0.2
    assert quantile_schedule(2, 5, 0.0, "cosine") == pytest.approx(0.5)
    assert quantile_schedule(1, 5, 0.0, "cosine") == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert quantile_schedule(4, 5, 0.2, "cosine") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="schedule"):
        quantile_schedule(0, 5, 0.2, "exp")


def test_masked_quantile_is_the_nearest_order_statistic():
    values = torch.tensor([[0.9, 0.2, 0.6, 0.4, 0.1], [0.5, 0.5, 0.3, 0.5, 0.7], [1.0, 2.0, 3.0, 4.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    # Image 0: sorted over the mask [0.2, 0.4, 0.6, 0.9] (0.1 is outside); index round(q * 3).
    # Image 1: sorted [0.3, 0.5, 0.5, 0.5, 0.7]; index round(q * 4). Image 2: empty -> NaN.
    for q, e0, e1 in [(0.0, 0.2, 0.3), (0.2, 0.4, 0.5), (1 / 3, 0.4, 0.5), (0.5, 0.6, 0.5),  # 1.5 -> 2 (half to even)
                      (0.8, 0.6, 0.5), (0.9, 0.9, 0.7), (1.0, 0.9, 0.7)]:
        got = masked_quantile(values, mask, q)
        assert got[:2].tolist() == pytest.approx([e0, e1]), q
        assert math.isnan(got[2])
    g = gen(3)
    v, m = torch.rand(6, 40, generator=g), torch.rand(6, 40, generator=g) < 0.6
    for q in (0.0, 0.13, 0.5, 0.77, 1.0):
        ref = torch.stack([torch.quantile(v[i][m[i]], q, interpolation="nearest") for i in range(6)])
        assert torch.equal(masked_quantile(v, m, q), ref)


def test_order_statistic_matches_sort():
    v = torch.randn(6, 50, generator=gen())
    v[2, 10:] = math.inf
    v[3] = 1.0
    idx = torch.tensor([0, 49, 9, 25, 7, 13])
    assert torch.equal(order_statistic(v, idx), v.sort(1).values[torch.arange(6), idx])


def test_dilation_matches_max_pool():
    g = gen(4)
    mask = torch.rand(3, 9, 14, generator=g) < 0.15
    for k in (1, 3, 5, 7):
        ref = torch.nn.functional.max_pool2d(mask.unsqueeze(1).float(), k, stride=1, padding=k // 2).squeeze(1) > 0
        assert torch.equal(dilate(mask, k), ref), k


def test_log_odds_keep_confident_pixels_apart():
    logits = torch.zeros(1, C, 1, 5)
    logits[0, 0, 0] = torch.tensor([0.0, 2.0, 20.0, 21.0, 60.0])
    labels = torch.zeros(1, 1, 5, dtype=torch.long)
    expected = torch.tensor([0.0, 2.0, 20.0, 21.0, 60.0]) - math.log(C - 1)  # log(p_0 / (1 - p_0)) here
    assert torch.allclose(true_class_log_odds(logits, labels)[0, 0], expected, rtol=1e-5, atol=1e-5)
    assert (logits.softmax(1)[0, 0, 0, 2:] == 1).all()  # where p_y itself has saturated


def test_eroseg_sensitive_pixels_hand_worked():
    # One 1 x 6 image labelled 0. Pixels 0-3 correct with p_0 rising; pixel 4 fooled; pixel 5 void.
    labels = torch.tensor([[[0, 0, 0, 0, 0, 255]]])
    logits = torch.zeros(1, C, 1, 6)
    logits[0, 0, 0, :4] = torch.tensor([0.5, 1.0, 2.0, 3.0])
    logits[0, 1, 0, 4] = 2.0
    logits[0, 0, 0, 5] = -9.0  # least confident of all, but void
    p0 = logits.softmax(1)[0, 0, 0]
    valid = labels != 255
    sizes = []
    for q, expected in [(0.0, [1, 0, 0, 0]), (0.2, [1, 1, 0, 0]), (0.5, [1, 1, 1, 0]), (1.0, [1, 1, 1, 1])]:
        _, m = eroseg_masks(logits, labels, valid, q=q, front=False)
        assert m["sensitive"][0, 0].int().tolist() == expected + [0, 0], q  # never the fooled or void pixel
        k = round(q * 3)  # nearest order statistic of the 4 correct confidences
        assert float(m["threshold"][0]) == pytest.approx(float(p0[:4].sort().values[k]), rel=1e-5)
        assert torch.equal(m["attacked"], m["sensitive"])
        sizes.append(int(m["sensitive"].sum()))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_eroseg_selection_survives_saturated_softmax():
    # Margins 20..23: p_y is exactly 1.0 in float32 for all four, yet they still rank apart.
    labels = torch.zeros(1, 1, 4, dtype=torch.long)
    logits = torch.zeros(1, C, 1, 4)
    logits[0, 0, 0] = torch.tensor([23.0, 20.0, 22.0, 21.0])
    assert (logits.softmax(1)[0, 0] == 1).all()
    _, m = eroseg_masks(logits, labels, labels != 255, q=0.0, front=False)
    assert m["sensitive"][0, 0].tolist() == [False, True, False, False]


def test_eroseg_erosion_front_hand_drawn():
    fooled = torch.tensor([[
        [0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1],
    ]], dtype=torch.bool)
    void = torch.zeros_like(fooled)
    void[0, 2, 2] = True
    correct = ~fooled & ~void
    front3 = torch.tensor([[
        [1, 1, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],  # (2, 2) is void, not correct
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 1, 0],  # the corner pixel's neighbourhood is cut by the border
    ]], dtype=torch.bool)
    assert torch.equal(erosion_front(fooled, correct, 3), front3)
    front5 = erosion_front(fooled, correct, 5)
    assert int(front5[0, :4, :4].sum()) == 16 - 2 and int(front5[0, 3:, 4:].sum()) == 9 - 1
    assert int(front5.sum()) == 14 + 8
    # Through eroseg_masks: labels 0 everywhere, fooled pixels predicted 1; erosion only, gamma on F.
    labels = torch.where(void, 255, 0).long()
    w, m = eroseg_masks(_logits(fooled[0].long()), labels, ~void, q=0.0, selection=False, gamma=0.25)
    assert torch.equal(m["front"], front3) and torch.equal(m["attacked"], front3)
    assert torch.equal(m["fooled"], fooled)
    expected_w = front3.float() + 0.25 * fooled.float()
    assert torch.equal(w, expected_w)  # 1 on the front, gamma on fooled, 0 elsewhere and at the void pixel


def test_eroseg_fallback_per_image():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    pred[0, 0, 0] = 1  # image 0 has a fooled pixel, image 1 none
    logits = torch.cat([_logits(pred[0]), _logits(pred[1])])
    w, m = eroseg_masks(logits, labels, labels != 255, q=0.0, selection=False)
    assert int(m["front"][0].sum()) == 3 and not m["front"][1].any()
    assert torch.equal(m["attacked"][0], m["front"][0]), "image 0 has a front: no fallback"
    assert m["attacked"][1].all() and (w[1] == 1).all(), "image 1 has nothing attacked: weight 1 on all of K"
    # An image with no correct pixel left is fully fooled: only gamma remains.
    w2, m2 = eroseg_masks(_logits(torch.ones(4, 4, dtype=torch.long)), labels[:1], labels[:1] != 255, q=0.5,
                          gamma=0.3)
    assert not m2["attacked"].any() and torch.allclose(w2, torch.full((1, 4, 4), 0.3))


def test_eroseg_masks_are_batched_like_single_images():
    g = gen(7)
    logits = torch.randn(5, C, 9, 11, generator=g) * 3
    labels = torch.randint(0, C, (5, 9, 11), generator=g)
    labels[1, :3] = 255
    valid = labels != 255
    w, m = eroseg_masks(logits, labels, valid, q=0.4, gamma=0.1)
    for i in range(5):
        wi, mi = eroseg_masks(logits[i:i + 1], labels[i:i + 1], valid[i:i + 1], q=0.4, gamma=0.1)
        assert torch.equal(w[i:i + 1], wi)
        assert all(torch.equal(m[k][i:i + 1], mi[k]) for k in ("sensitive", "front", "attacked"))


def test_eroseg_targeted_roles():
    labels = torch.zeros(1, 1, 4, dtype=torch.long)  # targets: class 0
    logits = torch.zeros(1, C, 1, 4)
    logits[0, 0, 0] = torch.tensor([5.0, 0.0, 0.0, 0.0])  # pixel 0 already at the target
    logits[0, 1, 0] = torch.tensor([0.0, 1.0, 3.0, 0.5])  # pixel 3 is the closest to the target
    _, m = eroseg_masks(logits, labels, labels != 255, q=0.0, front=False, targeted=True)
    assert m["fooled"][0, 0].tolist() == [True, False, False, False]
    assert m["sensitive"][0, 0].tolist() == [False, False, False, True]


def test_eroseg_sensitive_share_grows_during_the_attack(trained):
    model, x, y = trained
    seen = []
    make("eroseg", steps=5, front=False)(model, x, y, generator=gen(), callback=seen.append)
    share = [float(s["sensitive"].sum() / s["correct"].sum()) for s in seen]
    assert share[0] < 0.35 and share[-1] == 1.0 and share == sorted(share)


# ----------------------------------------------------------- strength on the toy model
STRONG = [("fgsm", "linf", {}), ("pgd", "linf", {}), ("pgd", "l2", {}), ("segpgd", "linf", {}),
          ("cospgd", "linf", {}), ("eroseg", "linf", {}), ("eroseg", "l2", {}),
          ("eroseg", "linf", {"front": False}), ("eroseg", "linf", {"selection": False}),
          ("eroseg", "linf", {"schedule": "cosine"}), ("eroseg", "linf", {"schedule": "constant", "gamma": 0.1})]


def miou_of(model, images, labels):
    from eroseg.metrics import ConfusionMatrix

    cm = ConfusionMatrix(C)
    with torch.no_grad():
        cm.update(model(images).argmax(1), labels)
    return cm.compute()["miou"]


@pytest.mark.parametrize("name,norm,kw", STRONG)
def test_attack_lowers_pixel_accuracy_and_miou(trained, name, norm, kw):
    model, x, y = trained
    clean = float(acc_of(model, x, y).mean())
    extra = {} if name == "fgsm" else {"steps": 10}
    adv = make(name, norm, **extra, **kw)(model, x, y, generator=gen())
    assert float(acc_of(model, adv, y).mean()) < clean - 0.3
    assert miou_of(model, adv, y) < miou_of(model, x, y) - 0.2


@pytest.mark.parametrize("name", ITERATIVE)
def test_targeted_attack_reaches_targets(trained, name):
    model, x, y = trained
    target = torch.where(y == 255, y, (y + 1) % C)
    before = float(acc_of(model, x, target).mean())
    adv = make(name, targeted=True, steps=10)(model, x, target, generator=gen())
    assert float(acc_of(model, adv, target).mean()) > before + 0.3


def test_best_iterate_more_steps_never_worse(trained):
    model, x, y = trained
    eps = EPS["linf"]
    a10 = create_attack("pgd", eps=eps, step_size=eps / 4, steps=10, best_iterate=True)(model, x, y, generator=gen(3))
    a20 = create_attack("pgd", eps=eps, step_size=eps / 4, steps=20, best_iterate=True)(model, x, y, generator=gen(3))
    acc10, acc20 = acc_of(model, a10, y), acc_of(model, a20, y)
    assert torch.all(acc20 <= acc10)


@pytest.mark.parametrize("name", ["pgd", "segpgd", "eroseg"])
def test_best_iterate_returns_the_first_best_iterate(trained, name):
    model, x, y = trained
    seen = []
    # A large step makes the accuracy go up and down between iterates.
    adv = make(name, step_size=EPS["linf"], steps=6, best_iterate=True)(model, x, y, generator=gen(),
                                                                          callback=seen.append)
    last = make(name, step_size=EPS["linf"], steps=6)(model, x, y, generator=gen())
    iterates = [s["images"] for s in seen] + [last]
    accs = torch.stack([acc_of(model, it, y) for it in iterates])  # [T + 1, B]
    first_best = accs.argmin(0)  # argmin returns the first minimum: ties keep the earlier iterate
    expected = torch.stack([iterates[int(k)][i] for i, k in enumerate(first_best)])
    assert torch.equal(adv, expected)
    assert torch.equal(acc_of(model, adv, y), accs.min(0).values)


def test_best_iterate_ties_keep_the_earlier_iterate(trained):
    model, x, y = trained

    class Stubborn(nn.Module):  # predicts class 0 whatever the input, yet has an input gradient
        def forward(self, inp):
            out = 1e-3 * model(inp)
            return out + torch.tensor([10.0, 0, 0, 0]).view(1, C, 1, 1)

    seen = []
    adv = make("pgd", best_iterate=True)(Stubborn(), x, y, generator=gen(), callback=seen.append)
    assert not torch.equal(seen[0]["images"], seen[-1]["images"]), "the iterates must differ for this test"
    assert torch.equal(adv, seen[0]["images"])


def test_worst_case_attack(trained):
    model, x, y = trained
    attacks = {n: make(n, **({} if n == "fgsm" else {"steps": 3})) for n in ["fgsm", "pgd", "eroseg"]}
    g = lambda: gen(0)  # noqa: E731
    attacks = {n: (lambda m, x, y, a=a: a(m, x, y, generator=g())) for n, a in attacks.items()}
    model.train()
    adv, chosen, accs = worst_case_attack(model, x, y, attacks)
    assert model.training, "worst_case_attack must restore the model's mode"
    model.eval()
    acc = acc_of(model, adv, y)
    stacked = torch.stack(list(accs.values()))
    for a in accs.values():
        assert a.shape == (x.shape[0],) and torch.all(acc <= a)
    assert torch.equal(acc, stacked.min(0).values)
    assert torch.equal(chosen, stacked.argmin(0))
    # Ties go to the attack listed first.
    same = {"a": attacks["pgd"], "b": attacks["pgd"]}
    _, chosen2, _ = worst_case_attack(model, x, y, same)
    assert (chosen2 == 0).all()
    with pytest.raises(ValueError, match="at least one attack"):
        worst_case_attack(model, x, y, {})
    with pytest.raises(TypeError, match=r"attacks\['x'\] must be callable"):
        worst_case_attack(model, x, y, {"x": 3})
