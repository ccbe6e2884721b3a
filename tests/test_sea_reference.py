"""APGD and SEA against an independent re-implementation of their reference code's update rule.

The reference is SEA's code (nmndeep/robust-segmentation at afe839e,
``semseg/utils/attacker.py`` ``apgd_train`` / ``apgd_largereps``,
``tools/infer.py``), whose APGD loop is auto-attack's
(``autoattack/autopgd_base.py``). :func:`ref_apgd_train` below is written
from those formulas, in their shape (absolute images, a loss history array,
a shrinking window counter), not from this package's code: per-image losses
are means over all pixels, the accuracy counts void pixels as wrong at the
start and right afterwards, checkpoints come from the integer window rule,
condition 1 reads the history at index -1 in the first window, and so on.
With ``rules="reference"`` the package must produce the same iterates.
"""

import pytest
import torch
import torch.nn as nn

from eroseg.attacks import apgd, sea
from eroseg.attacks.losses import LOSSES, pixel_loss
from eroseg.attacks.sea import SEA_LOSSES

VOID = 255
N_CLS = 4


class TinyNet(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, N_CLS, 3, padding=1))
        self.double().eval()

    def forward(self, x):
        return self.net((x - 0.5) * 4)


def problem(seed=0, batch=2, size=10):
    model = TinyNet(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    flip = torch.rand(y.shape, generator=g) < 0.15  # a few pixels wrong from the start
    y = torch.where(flip, torch.randint(0, N_CLS, y.shape, generator=g), y)
    y[0, :2, :] = VOID  # void pixels in one image only
    return model, x, y


# ------------------------------------------------------------- the reference's losses, from their formulas
def _onehot(y):
    return nn.functional.one_hot(torch.where(y == VOID, 0, y), N_CLS).permute(0, 3, 1, 2).to(torch.float64)


def _ce(u, y):
    return torch.logsumexp(u, 1) - (u * _onehot(y)).sum(1)


def _correct(u, y):
    return (u.argmax(1) == y).to(u.dtype)


def ref_pixel_loss(name, u, y, t, n_iter):
    """Per-pixel loss of the reference's ``criterion_dict`` (void pixels are zeroed by the caller)."""
    if name == "ce":
        return _ce(u, y)
    if name == "masked_ce":  # mask-ce-avg
        return _ce(u, y) * _correct(u, y).detach()
    if name == "balanced_ce":  # segpgd-loss: lambda = t / 2 / max_t
        lam, c = t / 2 / n_iter, _correct(u, y).detach()
        return ((1 - lam) * c + lam * (1 - c)) * _ce(u, y)
    if name == "js":  # js-avg: (KL(p||m) + KL(q||m)) / 2 summed over classes, m = (p + q) / 2
        p, q = torch.softmax(u, 1), _onehot(y)
        m = (p + q) / 2
        return 0.5 * (torch.xlogy(p, p) - p * m.log() + torch.xlogy(q, q) - q * m.log()).sum(1)
    if name in ("spherical", "masked_spherical"):  # (mask-)norm-corrlog-avg: -<u / ||u||, onehot(y)>
        v = u / (u ** 2).sum(1, keepdim=True).sqrt()
        loss = -(v * _onehot(y)).sum(1)
        return loss * _correct(u, y).detach() if name == "masked_spherical" else loss
    raise KeyError(name)


def ref_image_loss(name, u, y, t, n_iter):
    """``pixel_to_img_loss``: mean over ALL pixels of the loss times the non-void mask."""
    if name == "eroseg":  # no reference loss: the package's weights, plugged into the reference's update rule
        pix = pixel_loss("eroseg", u, y, y != VOID, t=t, steps=n_iter)[0]
    else:
        pix = ref_pixel_loss(name, u, y, t, n_iter)
    return (pix * (y != VOID)).flatten(1).mean(1)


# -------------------------------------------------------------------- the reference's APGD loop
def ref_apgd_train(model, x, y, eps, n_iter, loss, track, x_init, seen, early_stop=True):
    """``apgd_train`` (Linf, no random start): returns ``x_best_adv``; appends every evaluated point to ``seen``."""
    bs = x.shape[0]
    x_adv = (x if x_init is None else x_init).clone()

    def forward(z, t, with_grad):
        z = z.clone().requires_grad_(with_grad)
        with torch.set_grad_enabled(with_grad):
            u = model(z)
            obj = ref_image_loss(loss, u, y, t, n_iter)
            g = torch.autograd.grad(obj.sum(), z)[0] if with_grad else None
        with torch.no_grad():
            tr = ref_image_loss(track, u.detach(), y, t, n_iter)
        return u.detach(), g, tr

    u, grad, loss_indiv = forward(x_adv, 0, True)
    seen.append(x_adv.clone())
    grad_best = grad.clone()
    acc = (u.argmax(1) == y).to(x.dtype).flatten(1).mean(1)  # void pixels count as wrong here
    x_best, x_best_adv = x_adv.clone(), x_adv.clone()
    loss_best = loss_indiv.clone()
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones(bs, dtype=x.dtype)
    loss_steps = torch.zeros(n_iter, bs, dtype=x.dtype)
    k = max(int(0.22 * n_iter), 1)
    n_iter_min, size_decr = max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    step_size = 2 * eps * torch.ones(bs, 1, 1, 1, dtype=x.dtype)
    counter3 = 0
    x_adv_old = x_adv.clone()
    for i in range(n_iter):
        grad2 = x_adv - x_adv_old
        x_adv_old = x_adv.clone()
        a = 0.75 if i > 0 else 1.0
        x1 = torch.clamp(torch.min(torch.max(x_adv + step_size * torch.sign(grad), x - eps), x + eps), 0.0, 1.0)
        x_adv = torch.clamp(torch.min(torch.max(x_adv + (x1 - x_adv) * a + grad2 * (1 - a), x - eps), x + eps),
                            0.0, 1.0)
        u, g, loss_indiv = forward(x_adv, i + 1, i < n_iter - 1)
        seen.append(x_adv.clone())
        if g is not None:
            grad = g
        pred = u.argmax(1) == y
        pred[y == VOID] = True  # void pixels count as right from here on
        avg_acc = pred.to(x.dtype).flatten(1).mean(1)
        ind = avg_acc <= acc
        acc = torch.min(acc, avg_acc)
        x_best_adv[ind] = x_adv[ind]
        loss_steps[i] = loss_indiv
        ind = loss_indiv > loss_best
        x_best[ind], grad_best[ind], loss_best[ind] = x_adv[ind], grad[ind], loss_indiv[ind]
        counter3 += 1
        if counter3 == k:
            ups = sum((loss_steps[i - c] > loss_steps[i - c - 1]).to(x.dtype) for c in range(k))  # [-1] wraps
            fl = (ups <= k * 0.75).to(x.dtype)
            fl = torch.max(fl, (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best).to(x.dtype))
            reduced_last_check, loss_best_last_check = fl.clone(), loss_best.clone()
            h = fl > 0
            step_size[h] /= 2.0
            x_adv[h], grad[h] = x_best[h], grad_best[h]
            counter3 = 0
            k = max(k - size_decr, n_iter_min)
        if early_stop and acc.sum() == 0:
            break
    return x_best_adv


def ref_apgd_largereps(model, x, y, eps, n_iter, loss, track, seen):
    """``apgd_largereps``: ``int(0.3 T)``, ``int(0.3 T)``, the rest at 2, 1.5, 1 eps, each from the last stage."""
    n_iters = [int(c * n_iter) for c in (0.3, 0.3)]
    n_iters.append(n_iter - sum(n_iters))
    x_init = None
    for it, e in zip(n_iters, [c * eps for c in (2, 1.5, 1)]):
        if x_init is not None:
            x_init = (x + (x_init - x).clamp(-e, e)).clamp(0.0, 1.0)
        x_init = ref_apgd_train(model, x, y, e, it, loss, track, x_init, seen)
    return x_init


def ref_sea(model, x, y, eps, n_iter, seen):
    """``tools/infer.py``: the four losses with their tracking losses; per image the lowest pixel accuracy."""
    track = {"masked_ce": "ce", "balanced_ce": "ce", "js": "ce", "masked_spherical": "spherical"}
    advs, accs = [], []
    for name in ("masked_ce", "balanced_ce", "js", "masked_spherical"):
        adv = ref_apgd_largereps(model, x, y, eps, n_iter, name, track[name], seen.setdefault(name, []))
        with torch.no_grad():
            right = (model(adv).argmax(1) == y) & (y != VOID)
        advs.append(adv)
        accs.append(right.flatten(1).sum(1) / (y != VOID).flatten(1).sum(1))
    pick = torch.stack(accs).min(0).indices
    return torch.stack([advs[pick[b]][b] for b in range(x.shape[0])])


# ------------------------------------------------------------------------------------------------ tests
def _close(a, b):
    assert len(a) == len(b), f"{len(a)} iterates vs the reference's {len(b)}"
    for t, (p, q) in enumerate(zip(a, b)):
        assert (p - q).abs().max().item() <= 1e-9, f"iterate {t} differs by {(p - q).abs().max().item():.3g}"


EPS = 3 / 255


def _steps(steps):
    return pytest.param(steps, marks=pytest.mark.slow) if steps == 300 else steps


@pytest.mark.parametrize("steps", [30, 100, _steps(300)])
@pytest.mark.parametrize("loss", ["ce", "masked_ce", "balanced_ce", "js", "masked_spherical", "eroseg"])
def test_apgd_matches_the_reference_update_rule(loss, steps):
    model, x, y = problem(seed=1)
    seen, ours = [], []
    ref = ref_apgd_train(model, x, y, EPS, steps, loss, LOSSES[loss].track, None, seen)
    adv = apgd(model, x, y, eps=EPS, steps=steps, loss=loss, random_start=False, rules="reference",
               callback=lambda info: ours.append(info["images"]))
    _close(ours, seen)
    assert (adv - ref).abs().max().item() <= 1e-9
    assert len(seen) > 0.6 * steps  # the early stop did not make the comparison trivial


@pytest.mark.parametrize("steps", [30, 100, _steps(300)])
def test_sea_matches_the_reference(steps):
    model, x, y = problem(seed=2)
    seen, ours = {}, {}
    ref = ref_sea(model, x, y, EPS, steps, seen)
    adv = sea(model, x, y, eps=EPS, steps=steps, random_start=False, rules="reference",
              callback=lambda info: ours.setdefault(info["component"], []).append(info["images"]))
    assert list(ours) == list(SEA_LOSSES)
    for name in SEA_LOSSES:
        _close(ours[name], seen[name])
    assert (adv - ref).abs().max().item() <= 1e-9


def test_the_reference_rule_is_not_the_default_rule():
    """The comparison can fail: the package's default rules part from the reference's iterates."""
    model, x, y = problem(seed=1)
    seen, ours = [], []
    ref_apgd_largereps(model, x, y, EPS, 100, "masked_spherical", "spherical", seen)
    sea(model, x, y, eps=EPS, steps=100, losses=["masked_spherical"], random_start=False, rules="default",
        callback=lambda info: ours.append(info["images"]))
    with pytest.raises(AssertionError):
        _close(ours, seen)


# ------------------------------------------------------------------------------- the sea table
def _record(setting, stats, components=None):
    import numpy as np

    from eroseg.evaluate import EvalRecord
    s = stats.scores()
    return EvalRecord(method="m", seed=0, setting=setting, attack="sea" if components else "apgd",
                      attack_params={"eps": 8 / 255, "steps": 10}, split="test", checkpoint="-", classes=None,
                      miou=s["miou"], pixel_acc=s["pixel_acc"], per_class_iou=[], per_image=stats,
                      components=components or {}), np


def _sea_problem(seed):
    """SEA's four components as random per-image counts; SEA's record holds its per-image lowest-accuracy choice."""
    import numpy as np

    from eroseg.metrics import PerImageStats
    rng = np.random.default_rng(seed)
    n, c = 16, 3
    label = rng.integers(5, 40, (n, c))
    comps = {}
    for name in SEA_LOSSES:
        tp = (label * rng.uniform(0, 1, (n, c))).astype(np.int64)
        wrong = label - tp  # every wrongly predicted pixel goes to the next class
        comps[name] = PerImageStats(tp, tp + np.roll(wrong, 1, axis=1), label)
    acc = np.stack([v.pixel_acc for v in comps.values()])
    pick = acc.argmin(0)
    chosen = [list(comps.values())[pick[i]] for i in range(n)]
    sea_stats = PerImageStats(*(np.stack([getattr(ch, f)[i] for i, ch in enumerate(chosen)])
                                for f in ("tp", "pred", "label")))
    return sea_stats, comps


@pytest.mark.parametrize("rule", ["miou", "pixel_acc"])
def test_sea_table_eroseg_adds_nothing_when_it_equals_a_component(rule):
    from eroseg.aggregate import Evals, sea_table
    from eroseg.metrics import PerImageStats
    spec = {"methods": ["m"], "sea": "sea", "sea_plus": ["eroseg"], "attacks": ["eroseg"], "worst_case_rule": rule,
            "headline": {"eps": 8 / 255, "steps": 10}}
    gaps = []
    for seed in range(8):
        sea_stats, comps = _sea_problem(seed)
        sea_rec, np = _record("sea", sea_stats, comps)
        for name in SEA_LOSSES:  # EroSeg's per-image counts equal one SEA component's: it adds nothing
            ero, _ = _record("eroseg", comps[name])
            row = sea_table(Evals([sea_rec, ero], ["a", "b"]), spec).iloc[0]
            assert row["EroSeg lowers SEA by (points)"] == 0.0, (seed, name)
            assert row["SEA + EroSeg"] == row["SEA (worst-case rule)"]
            gaps.append(row["SEA"] - row["SEA + EroSeg"])
        # An EroSeg that fools every pixel of image 0 (and matches SEA elsewhere) does lower it.
        stronger = PerImageStats(sea_stats.tp.copy(), sea_stats.pred.copy(), sea_stats.label)
        stronger.pred[0] -= stronger.tp[0]
        stronger.pred[0] += np.roll(stronger.tp[0], 1)
        stronger.tp[0] = 0
        ero, _ = _record("eroseg", stronger)
        row = sea_table(Evals([sea_rec, ero], ["a", "b"]), spec).iloc[0]
        assert row["EroSeg lowers SEA by (points)"] > 0
    if rule == "miou":  # the case the old column got wrong: SEA's own rule leaves mIoU the pool's rule removes
        assert max(gaps) > 0
