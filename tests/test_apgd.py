"""Tests of APGD, its losses, SEA and the registry entries that carry their own checks."""

import math

import pytest
import torch
import torch.nn as nn

from eroseg.attacks import (
    ATTACKS,
    REGISTRY,
    AttackSpec,
    apgd,
    attack_has_components,
    attack_parameters,
    attack_uses_steps,
    create_attack,
    pixel_accuracy_per_image,
    register_attack,
    sea,
)
from eroseg.attacks.apgd import (
    ApgdRules,
    apgd_checkpoint_fractions,
    apgd_checkpoints,
    halving_rule,
    radius_parts,
)
from eroseg.attacks.losses import (
    LOSSES,
    balanced_ce_loss,
    ce_loss,
    eroseg_loss,
    image_loss,
    js_loss,
    masked_ce_loss,
    masked_spherical_loss,
    resolve_loss_params,
)
from eroseg.attacks.sea import SEA_LOSSES

K = 3  # classes
SIZE = 12
EPS = {"linf": 8 / 255, "l2": 0.5}
ALL_LOSSES = list(LOSSES)


# --------------------------------------------------------------------- helpers
class Net(nn.Module):
    """A small random conv net (BatchNorm included, so eval/train mode matters)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, K, 3, padding=1))

    def forward(self, x):
        return self.net((x - 0.5) * 8)


def setup(batch=3, size=SIZE, seed=0):
    """A random model and images labelled with its own clean prediction (clean accuracy 1), a few void pixels."""
    model = Net(seed).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:, 0, :3] = 255
    return model, x, y


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def acc(model, images, labels):
    with torch.no_grad():
        return pixel_accuracy_per_image(model(images), labels)


def size_of(d, norm):
    return d.abs().amax(dim=(1, 2, 3)) if norm == "linf" else d.flatten(1).norm(dim=1)


def logits_of(*pixels):
    """Logits ``[1, C, 1, P]`` from per-pixel logit vectors."""
    return torch.tensor(pixels, dtype=torch.float32).t().reshape(1, len(pixels[0]), 1, len(pixels))


def lab(*values):
    return torch.tensor(values).view(1, 1, -1)


def ce_ref(u, y):
    u = torch.tensor(u, dtype=torch.float64)
    return float(torch.logsumexp(u, 0) - u[y])


# ------------------------------------------------------- losses, hand-worked
def test_ce_and_image_mean_over_valid_pixels():
    u = logits_of([2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0])
    y = lab(0, 0, 255)
    valid = y != 255
    pix = ce_loss(u, y, valid)
    assert pix[0, 0].tolist() == pytest.approx([ce_ref([2, 0, 0], 0), ce_ref([0, 1, 0], 0), 0.0], abs=1e-6)
    # mean over the 2 valid pixels, not the 3 pixels
    assert image_loss(pix, valid).item() == pytest.approx((ce_ref([2, 0, 0], 0) + ce_ref([0, 1, 0], 0)) / 2, abs=1e-6)


def test_masked_ce_counts_correct_pixels_only():
    u = logits_of([2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.0])
    y = lab(0, 0, 0)  # pixel 1 is misclassified
    valid = y != 255
    pix = masked_ce_loss(u, y, valid)
    assert pix[0, 0].tolist() == pytest.approx([ce_ref([2, 0, 0], 0), 0.0, ce_ref([0.5, 0, 0], 0)], abs=1e-6)
    assert image_loss(pix, valid).item() == pytest.approx((ce_ref([2, 0, 0], 0) + ce_ref([0.5, 0, 0], 0)) / 3,
                                                          abs=1e-6)
    # no correct pixel: the image's loss is 0
    assert image_loss(masked_ce_loss(u, lab(2, 2, 1), valid), valid).item() == 0.0
    # targeted: the pixels not yet at their target count
    t = masked_ce_loss(u, lab(0, 0, 0), valid, targeted=True)
    assert t[0, 0].tolist() == pytest.approx([0.0, ce_ref([0, 1, 0], 0), 0.0], abs=1e-6)


def test_balanced_ce_weights_by_lambda_t():
    u = logits_of([2.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    y = lab(0, 0)  # pixel 0 correct, pixel 1 wrong
    valid = y != 255
    lam = 3 / (2 * 10)
    pix = balanced_ce_loss(u, y, valid, t=3, steps=10)
    assert pix[0, 0].tolist() == pytest.approx([(1 - lam) * ce_ref([2, 0, 0], 0), lam * ce_ref([0, 1, 0], 0)],
                                               abs=1e-6)
    # t = 0: only the correct pixel; t = T: an even split
    assert balanced_ce_loss(u, y, valid, t=0, steps=10)[0, 0, 1].item() == 0.0
    end = balanced_ce_loss(u, y, valid, t=10, steps=10)[0, 0]
    assert end.tolist() == pytest.approx([0.5 * ce_ref([2, 0, 0], 0), 0.5 * ce_ref([0, 1, 0], 0)], abs=1e-6)


def _js_by_definition(u, y):
    """JS(p, onehot(y)) summed over classes, straight from the KL definition (float64)."""
    p = torch.softmax(torch.tensor(u, dtype=torch.float64), 0)
    q = torch.zeros_like(p)
    q[y] = 1
    m = (p + q) / 2
    kl = lambda a, b: sum(float(ai * math.log(ai / bi)) for ai, bi in zip(a, b) if ai > 0)  # noqa: E731
    return (kl(p, m) + kl(q, m)) / 2


def test_js_known_values_and_definition():
    big = 60.0
    u = logits_of([0.0, 0.0, 0.0, 0.0], [big, 0.0, 0.0, 0.0], [0.0, big, 0.0, 0.0], [1.0, -2.0, 0.5, 3.0])
    y = lab(0, 0, 0, 2)
    pix = js_loss(u, y, y != 255)[0, 0]
    # uniform over 4 classes: p_y = 1/4 -> log 2 + (p log p - (1 + p) log(1 + p)) / 2
    assert pix[0].item() == pytest.approx(math.log(2) + 0.5 * (0.25 * math.log(0.25) - 1.25 * math.log(1.25)),
                                          abs=1e-6)
    assert pix[1].item() == pytest.approx(0.0, abs=1e-6)  # p = q
    assert pix[2].item() == pytest.approx(math.log(2), abs=1e-6)  # p_y = 0: disjoint supports
    assert pix[3].item() == pytest.approx(_js_by_definition([1.0, -2.0, 0.5, 3.0], 2), abs=1e-6)
    assert pix[0].item() == pytest.approx(_js_by_definition([0.0] * 4, 0), abs=1e-6)
    assert js_loss(u, lab(0, 0, 255, 2), lab(0, 0, 255, 2) != 255)[0, 0, 2].item() == 0.0  # void


def test_masked_spherical_sign_and_mask():
    u = logits_of([3.0, 4.0, 0.0], [0.0, 4.0, 3.0], [4.0, 3.0, 0.0])
    y = lab(1, 1, 1)  # pixels 0 and 1 correct (class 1), pixel 2 wrong
    pix = masked_spherical_loss(u, y, y != 255)[0, 0]
    assert pix.tolist() == pytest.approx([-0.8, -0.8, 0.0], abs=1e-6)
    # Raising the loss means lowering the true class's normalised logit: the gradient on u_y is negative.
    v = logits_of([3.0, 4.0, 0.0]).requires_grad_(True)
    (g,) = torch.autograd.grad(masked_spherical_loss(v, lab(1), lab(1) != 255).sum(), v)
    assert g[0, 1, 0, 0] < 0
    assert g[0, 0, 0, 0] > 0  # and raising the competitors' share


def test_eroseg_loss_is_eroseg_weights_times_ce():
    # Row of 4 pixels, all labelled 0: pixel 0 fooled; pixels 1-3 correct with confidences mid, low, high.
    u = logits_of([0.0, 2.0, 0.0], [3.0, 0.0, 0.0], [1.0, 0.0, 0.0], [6.0, 0.0, 0.0])
    y = lab(0, 0, 0, 0)
    valid = y != 255
    pix, masks = eroseg_loss(u, y, valid, t=0, steps=10, q0=0.0, kernel_size=3)
    # q_0 = 0 selects the least confident correct pixel (2); the front is the correct neighbour of 0 (1).
    assert masks["weights"][0, 0].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert pix[0, 0].tolist() == pytest.approx([0.0, ce_ref([3, 0, 0], 0), ce_ref([1, 0, 0], 0), 0.0], abs=1e-6)
    # at the last iterate q = 1: every correct pixel, i.e. masked CE
    last, _ = eroseg_loss(u, y, valid, t=10, steps=10, q0=0.0)
    assert torch.allclose(last, masked_ce_loss(u, y, valid))
    # gamma weighs the fooled pixel
    g, _ = eroseg_loss(u, y, valid, t=0, steps=10, q0=0.0, gamma=0.5)
    assert g[0, 0, 0].item() == pytest.approx(0.5 * ce_ref([0, 2, 0], 0), abs=1e-6)


# ------------------------------------------------------------ schedules
def test_checkpoint_schedule_hand_worked():
    assert apgd_checkpoint_fractions() == [0.0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99]
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    # ceil(p_j * 10) = 3, 5, 6, 7, 8, 9, 10, 10 -> distinct
    assert apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert apgd_checkpoints(1) == [1]
    # The reference's integer rule: windows max(22T//100, 1), shrinking by max(3T//100, 1) down to max(6T//100, 1).
    assert apgd_checkpoints(100, "reference") == apgd_checkpoints(100)
    assert apgd_checkpoints(300, "reference") == apgd_checkpoints(300) == [66, 123, 171, 210, 240, 261, 279, 297]
    assert apgd_checkpoints(90, "reference") == [19, 36, 51, 64, 75, 84]  # windows 19, 17, 15, 13, 11, 9
    assert apgd_checkpoints(90) == [20, 37, 52, 63, 72, 79, 84, 90]
    assert apgd_checkpoints(120, "reference") == [26, 49, 69, 86, 100, 111, 119]
    assert apgd_checkpoints(10, "reference") == list(range(2, 11))
    with pytest.raises(ValueError, match="checkpoint rule must be 'paper' or 'reference', got 'ref'"):
        apgd_checkpoints(10, "ref")


def test_halving_rule_per_image():
    # images: few ups | many ups, not halved, best unchanged | many ups, halved last time, best unchanged |
    #         many ups, best improved | exactly rho * window ups (not fewer), best improved
    n_up = torch.tensor([3.0, 8.0, 8.0, 8.0, 6.0])
    halved = torch.tensor([False, False, True, False, False])
    best = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0])
    best_last = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    out = halving_rule(n_up, 8, 0.75, halved, best, best_last)
    assert out.tolist() == [True, True, False, False, False]
    # the reference's "<=": exactly rho * window ups halves too
    assert halving_rule(n_up, 8, 0.75, halved, best, best_last, strict=False).tolist() == [True, True, False, False,
                                                                                            True]


def test_step_size_halves_at_every_checkpoint_when_the_loss_cannot_rise():
    """A model whose output ignores the input: the loss never rises, so every checkpoint halves the step."""
    fixed = torch.randn(1, K, 8, 8, generator=gen(1))

    def model(x):
        return fixed + 0 * x.mean(1, keepdim=True)

    x = torch.rand(2, 3, 8, 8, generator=gen(2))
    y = torch.zeros(2, 8, 8, dtype=torch.long)
    seen = []
    apgd(model, x, y, eps=0.1, steps=100, random_start=False, callback=lambda i: seen.append(i["step_size"]))
    assert len(seen) == 101
    checks = apgd_checkpoints(100)
    for t, s in enumerate(seen):  # iterate t is evaluated with the step size after the checkpoints before t
        halvings = sum(1 for w in checks if w < t)
        assert torch.allclose(s, torch.full((2,), 0.2 / 2 ** halvings)), t


def test_radius_parts():
    assert radius_parts(10, 1.0, False) == [(1.0, 10)]
    assert radius_parts(10, 1.0, True) == [(2.0, 3), (1.5, 3), (1.0, 4)]
    assert radius_parts(300, 1.0, True) == [(2.0, 90), (1.5, 90), (1.0, 120)]  # int(0.3 T), int(0.3 T), the rest
    assert radius_parts(100, 1.0, True) == [(2.0, 30), (1.5, 30), (1.0, 40)]
    assert radius_parts(3, 1.0, True) == [(1.0, 3)]
    assert radius_parts(2, 1.0, True) == [(1.0, 2)]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_radius_schedule_radii_per_iteration(norm):
    model, x, y = setup()
    eps = EPS[norm]
    seen = []
    adv = apgd(model, x, y, eps=eps, steps=10, norm=norm, radius_schedule=True, generator=gen(),
               callback=lambda i: seen.append((i["radius"], i["images"] - x)), rules=ApgdRules(early_stop="off"))
    radii = [r for r, _ in seen]
    assert radii == [2 * eps] * 4 + [1.5 * eps] * 4 + [eps] * 5  # 3, 3, 4 iterations + the start of each part
    for r, d in seen:
        assert size_of(d, norm).max() <= r + 1e-6
    # the larger radii were used, and the result is within the final eps
    assert max(size_of(d, norm).max().item() for r, d in seen if r == 2 * eps) > 1.5 * eps
    assert size_of(adv - x, norm).max() <= eps + 1e-6


# -------------------------------------------------------- attack properties
@pytest.mark.parametrize("loss", ["ce", "js", "balanced_ce"])
@pytest.mark.parametrize("random_start", [False, True])
def test_reaches_the_linf_optimum_of_a_linear_model(loss, random_start):
    """1x1-conv logits: each pixel's loss grows with the logit gap, linear in the pixel, so the optimum is the corner
    ``x + eps * sign(w_other - w_y)`` of the box."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0]]).view(2, 3, 1, 1))
        conv.bias.zero_()
    x = 0.2 + 0.6 * torch.rand(2, 3, 6, 6, generator=gen(3))
    y = (torch.rand(2, 6, 6, generator=gen(4)) < 0.5).long()
    w = conv.weight.view(2, 3)
    direction = (w[1 - y] - w[y]).sign().permute(0, 3, 1, 2)  # [B, 3, H, W]
    eps = 0.05
    adv = apgd(conv, x, y, eps=eps, steps=5, loss=loss, random_start=random_start, best_iterate=False,
               generator=gen())
    assert torch.allclose(adv, x + eps * direction, atol=1e-6)


@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_best_iterate_is_the_lowest_accuracy_iterate_and_never_worse_than_the_start(loss):
    model, x, y = setup(batch=4)
    accs = []
    adv = apgd(model, x, y, eps=4 / 255, steps=6, loss=loss, random_start=False,
               callback=lambda i: accs.append(pixel_accuracy_per_image(i["logits"], y)))
    got = acc(model, adv, y)
    accs = torch.stack(accs)  # [iterates, B]
    assert torch.equal(got, accs.min(0).values)
    assert (got <= accs[0]).all() and torch.equal(accs[0], acc(model, x, y))  # start = clean image
    assert (got < 1).any()  # the attack did something


def _saturated(x):
    return ((x - 0.5) * 6 + 0.5).clamp(0, 1)  # many values at 0 or 1: the box must act


@pytest.mark.parametrize("radius_schedule", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", ALL_LOSSES)
def test_budget_and_box(loss, norm, radius_schedule):
    model, x, y = setup(batch=2)
    x = _saturated(x)
    eps = EPS[norm]
    adv = apgd(model, x, y, eps=eps, steps=4, norm=norm, loss=loss, radius_schedule=radius_schedule,
               generator=gen())
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert size_of(adv - x, norm).max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv != x).any()


def test_budget_is_used():
    model, x, y = setup(batch=2)
    adv = apgd(model, x, y, eps=8 / 255, steps=4, random_start=False, best_iterate=False)
    assert size_of(adv - x, "linf").min() >= 8 / 255 - 1e-6


def test_stronger_than_start_and_deterministic():
    model, x, y = setup(batch=4)
    a1 = apgd(model, x, y, eps=8 / 255, steps=10, generator=gen(5))
    a2 = apgd(model, x, y, eps=8 / 255, steps=10, generator=gen(5))
    assert torch.equal(a1, a2)
    assert (acc(model, a1, y) < 0.9).all()  # clean accuracy is 1


def test_targeted_moves_pixels_to_their_targets():
    model, x, y = setup(batch=2)
    target = torch.where(y == 255, y, (y + 1) % K)
    start = acc(model, x, target)
    adv = apgd(model, x, target, eps=8 / 255, steps=10, loss="masked_ce", targeted=True, random_start=False)
    assert (start == 0).all() and (acc(model, adv, target) > 0.05).all()


def test_model_mode_and_parameters_untouched():
    model, x, y = setup(batch=2)
    model.train()
    model.net[1].eval()  # a frozen BatchNorm inside a training model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sea(model, x, y, eps=4 / 255, steps=3, losses=("js", "masked_ce"), generator=gen())
    assert model.training and not model.net[1].training and model.net[0].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # running statistics untouched: attack passes run in eval mode
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_mode_restored_when_model_raises():
    model, x, y = setup(batch=1)
    model.train()
    calls = []

    def boom(module, inp, out):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")

    h = model.net[0].register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        apgd(model, x, y, steps=5)
    h.remove()
    assert model.training and model.net[1].training


def test_no_grad_inference_mode_and_dtype():
    model, x, y = setup(batch=1)
    with torch.no_grad():
        adv = apgd(model, x, y, steps=2, generator=gen())
    assert (adv != x).any() and not adv.requires_grad
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="inference_mode"):
            apgd(model, x, y, steps=2)
        with pytest.raises(RuntimeError, match="inference_mode"):
            sea(model, x, y, steps=2)
    m64 = Net().double().eval()
    a64 = apgd(m64, x.double(), y, steps=2, loss="js", generator=gen())
    assert a64.dtype == torch.float64 and (a64 - x.double()).abs().max() <= 8 / 255 + 1e-12


def test_callback_contents_and_counts():
    model, x, y = setup(batch=2)
    seen = []
    apgd(model, x, y, steps=5, loss="eroseg", callback=seen.append, generator=gen(), rules=ApgdRules(early_stop="off"))
    assert [i["step"] for i in seen] == list(range(6))  # T + 1 iterates
    i = seen[-1]
    for key in ("logits", "weights", "fooled", "images", "radius", "step_size", "loss", "attack_loss", "attacked",
                "front"):
        assert key in i, key
    assert i["fooled"].shape == y.shape and i["fooled"].dtype == torch.bool
    assert torch.equal(i["fooled"], (i["logits"].argmax(1) != y) & (y != 255))
    seen.clear()
    apgd(model, x, y, steps=5, radius_schedule=True, callback=seen.append, generator=gen(),
         rules=ApgdRules(early_stop="off"))
    assert len(seen) == 8  # T + 3: each of the three parts (1, 1, 3 iterations) also evaluates its start


def test_tracking_loss_pairing_and_its_effect():
    """SEA's reference pairing by default; tracking another loss changes the restarts, not the steps' loss."""
    tracked = {name: spec.track for name, spec in LOSSES.items()}
    assert tracked == {"ce": "ce", "masked_ce": "ce", "balanced_ce": "ce", "js": "ce",
                       "masked_spherical": "spherical", "eroseg": "ce", "spherical": "spherical"}
    model, x, y = setup(batch=2, seed=3)
    runs = {}
    for track in (None, "ce", "masked_ce"):
        seen = []
        apgd(model, x, y, eps=2 / 255, steps=30, loss="masked_ce", track_loss=track, generator=gen(),
             callback=seen.append, rules=ApgdRules(early_stop="off"))
        runs[track] = seen
    # the callback's "loss" is the tracked loss; "attack_loss" the masked CE whose gradient drives the steps
    first = runs[None][0]
    valid = y != 255
    assert torch.allclose(first["loss"], image_loss(ce_loss(first["logits"], y, valid), valid), atol=1e-6)
    assert torch.allclose(first["attack_loss"], image_loss(masked_ce_loss(first["logits"], y, valid), valid), atol=1e-6)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(runs[None], runs["ce"]))
    assert any(not torch.equal(a["images"], b["images"]) for a, b in zip(runs[None], runs["masked_ce"]))


@pytest.mark.parametrize("name", ["apgd", "sea"])
def test_early_stop_saves_iterations_and_changes_nothing(name):
    """A linear model every pixel of which flips at 2 eps: the first part stops early; the result is unchanged."""
    torch.manual_seed(4)
    conv = nn.Conv2d(3, K, 1).eval()

    def model(z):
        return conv((z - 0.5) * 8)

    x = torch.rand(3, 3, SIZE, SIZE, generator=gen(4))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:, 0, :3] = 255
    out, count = {}, {}
    for stop in ("pixel_acc", "off"):
        calls = []
        rules = ApgdRules(early_stop=stop, best_keeps_earlier=True)
        out[stop] = ATTACKS[name](model, x, y, eps=0.2, steps=30, radius_schedule=True, generator=gen(),
                                  callback=calls.append, rules=rules)
        count[stop] = [(c["radius"], c.get("component")) for c in calls]
    assert len(count["pixel_acc"]) < len(count["off"])
    # only the 2 eps part, where every pixel flips, was cut short
    assert [c for c in count["off"] if c[0] != 0.4] == [c for c in count["pixel_acc"] if c[0] != 0.4]
    assert torch.equal(out["pixel_acc"], out["off"])  # a 0-accuracy best iterate is final: the same images
    # The reference's test (the default) counts void pixels as right after the start: with them it never stops.
    calls = []
    ATTACKS[name](model, x, y, eps=0.2, steps=30, radius_schedule=True, generator=gen(), callback=calls.append)
    assert len(calls) == len(count["off"])


# ----------------------------------------------------------------------- SEA
def test_sea_takes_the_per_image_worst_component():
    model, x, y = setup(batch=6, seed=1)
    comps = {}
    losses = ("masked_ce", "balanced_ce", "js", "masked_spherical", "eroseg", "ce")
    adv = sea(model, x, y, eps=2 / 255, steps=3, losses=losses, generator=gen(),
              component_callback=lambda name, a: comps.setdefault(name, []).append(a))
    assert list(comps) == list(losses) and all(len(v) == 1 for v in comps.values())  # once per loss, in order
    accs = torch.stack([acc(model, comps[n][0], y) for n in losses])  # [losses, B]
    got = acc(model, adv, y)
    assert torch.equal(got, accs.min(0).values)  # no worse than any component, per image
    first_min = (accs == accs.min(0).values).float().argmax(0)  # ties go to the earlier loss
    for b in range(x.shape[0]):
        assert torch.equal(adv[b], comps[losses[first_min[b]]][0][b]), b
    assert (adv - x).abs().max() <= 2 / 255 + 1e-6


def test_sea_defaults_and_callback():
    assert attack_parameters("sea")["losses"] == SEA_LOSSES == ("masked_ce", "balanced_ce", "js", "masked_spherical")
    assert attack_parameters("sea")["radius_schedule"] is True
    model, x, y = setup(batch=1)
    names = []
    sea(model, x, y, steps=4, callback=lambda i: names.append(i["component"]), generator=gen(),
        rules=ApgdRules(early_stop="off"))
    # radius schedule with 4 steps: 1 + 1 + 2 iterations, 7 iterates per component
    assert names == [n for n in SEA_LOSSES for _ in range(7)]


# ------------------------------------------------------------------ registry
def test_registry_apgd_and_sea():
    assert list(ATTACKS)[-2:] == ["apgd", "sea"] and set(ATTACKS) == set(REGISTRY)
    with pytest.raises(ValueError, match="loss must be one of ce, masked_ce, balanced_ce, js, masked_spherical, "
                                         "eroseg, spherical; got 'bogus'"):
        create_attack("apgd", loss="bogus")
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['step_size'\]; valid: eps, steps, norm, loss"):
        create_attack("apgd", step_size=0.1)
    with pytest.raises(ValueError, match=r"unknown attack 'seaa'; valid: .*apgd, sea"):
        create_attack("seaa")
    assert attack_uses_steps("pgd") and attack_uses_steps("apgd") and attack_uses_steps("sea")
    assert not attack_uses_steps("fgsm")
    atk = create_attack("sea", eps=2 / 255, steps=3, losses=["js", "ce"])
    assert atk.__name__ == "sea"
    model, x, y = setup(batch=1)
    adv = atk(model, x, y, generator=gen())
    assert (adv - x).abs().max() <= 2 / 255 + 1e-6 and (adv != x).any()


@pytest.mark.parametrize("name,bad,exc,match", [
    ("apgd", dict(momentum=1.5), ValueError, r"momentum must be in \[0, 1\]"),
    ("apgd", dict(momentum="0.75"), TypeError, "momentum must be a real number"),
    ("apgd", dict(rho=-0.1), ValueError, r"rho must be in \[0, 1\]"),
    ("apgd", dict(initial_step=0), ValueError, "initial_step must be a finite number > 0"),
    ("apgd", dict(radius_schedule="yes"), TypeError, "radius_schedule must be a bool"),
    ("apgd", dict(loss="eroseg", loss_params={"kernel_size": 2}), ValueError, "kernel_size must be an odd integer"),
    ("apgd", dict(steps=0), ValueError, "steps must be an integer >= 1"),
    ("apgd", dict(norm="l1"), ValueError, "norm must be one of"),
    ("sea", dict(losses=[]), ValueError, "losses must name at least one"),
    ("sea", dict(losses="js"), TypeError, "losses must be a list"),
    ("sea", dict(losses=["js", "bogus"]), ValueError, "each of losses must be one of ce, masked_ce"),
    ("sea", dict(losses=["js", "js"]), ValueError, "losses must be distinct"),
    ("sea", dict(component_callback=3), TypeError, "component_callback must be callable"),
    ("sea", dict(momentum=2), ValueError, "momentum"),
    ("apgd", dict(track_loss="bogus"), ValueError, "track_loss must be one of ce, masked_ce"),
    ("apgd", dict(rules="paper"), ValueError, "rules must be one of default, reference or an ApgdRules; got 'paper'"),
    ("sea", dict(rules=ApgdRules(checkpoints="x")), ValueError, "rules.checkpoints must be 'paper' or 'reference'"),
    ("apgd", dict(loss="ce", loss_params={"q0": 0.4}), ValueError,
     r"loss 'ce' has no parameter\(s\) \['q0'\]; valid: none"),
    ("apgd", dict(loss="eroseg", loss_params={"q": 0.4}), ValueError, "valid: q0, schedule, kernel_size"),
    ("apgd", dict(loss="eroseg", loss_params=[0.4]), TypeError, "loss_params must be a dict"),
    ("sea", dict(loss_params={"eroseg": {"q0": 0.4}}), ValueError, r"loss_params names \['eroseg'\], which are not"),
    ("sea", dict(losses=["js", "eroseg"], loss_params={"eroseg": {"q0": 2.0}}), ValueError, "q0 must be in"),
    ("sea", dict(loss_params=[1]), TypeError, "loss_params must be a dict from component loss"),
])
def test_bad_parameters_are_named(name, bad, exc, match):
    model, x, y = setup(batch=1)
    with pytest.raises(exc, match=match):  # at creation time ...
        create_attack(name, **bad)
    with pytest.raises(exc, match=match):  # ... and when the function is called directly
        ATTACKS[name](model, x, y, **bad)


def test_loss_params_reach_the_loss_in_apgd_and_in_a_sea_component():
    """EroSeg's parameters given as loss_params change the run; SEA hands its component the same ones as APGD."""
    model, x, y = setup(batch=2, seed=4)
    params = {"q0": 0.6, "kernel_size": 5, "gamma": 0.3}
    assert resolve_loss_params("eroseg", params) == {"q0": 0.6, "schedule": "linear", "kernel_size": 5,
                                                     "gamma": 0.3, "front": True, "selection": True}
    assert resolve_loss_params("masked_ce", None) == {}

    def run_apgd(loss_params):
        return apgd(model, x, y, eps=4 / 255, steps=6, loss="eroseg", loss_params=loss_params, radius_schedule=True,
                    generator=gen())

    tuned = run_apgd(params)
    assert not torch.equal(tuned, run_apgd(None))  # the parameters change the iterates
    component = sea(model, x, y, eps=4 / 255, steps=6, losses=["eroseg"], loss_params={"eroseg": params},
                    generator=gen())
    assert torch.equal(component, tuned)


def test_only_sea_reports_components_and_the_registry_says_so():
    """has_components comes from the component_callback parameter: SEA's losses are kept per image, no others."""
    assert [name for name, spec in REGISTRY.items() if spec.has_components] == ["sea"]
    assert attack_has_components("sea") and not attack_has_components("apgd")


def test_registry_entries_cannot_drift_from_their_signatures():
    def atk(model, images, labels, *, eps=0.1, steps=1, depth=2):
        return images

    def check_depth(*, depth):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")

    with pytest.raises(TypeError, match=r"parameter\(s\) \['depth'\] of atk\(\) are checked neither"):
        AttackSpec("x", atk)  # a parameter no check covers

    def check_other(*, width):
        pass

    with pytest.raises(TypeError, match=r"its check takes \['width'\], which atk\(\) does not have"):
        AttackSpec("x", atk, check_other)
    spec = AttackSpec("x", atk, check_depth)
    assert spec.parameters() == {"eps": 0.1, "steps": 1, "depth": 2} and spec.own_parameters() == ("depth",)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        spec.validate({"eps": 0.1, "steps": 1, "depth": 0})
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        spec.validate({"eps": 0.1, "steps": 0, "depth": 2})
    with pytest.raises(ValueError, match="already registered"):
        register_attack("pgd", atk, check_depth)
