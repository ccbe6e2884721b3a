"""Figures fit for a paper: ticks, clean reference, legends off the data, zero vs absent classes, keys, units."""

from __future__ import annotations

from pathlib import Path

import matplotlib.ticker
import numpy as np
import pandas as pd
import pytest

import eroseg.figures as figures
from eroseg.evaluate import EvalRecord
from eroseg.figures import make_figures
from eroseg.metrics import PerImageStats
from eroseg.report import FIGURES

CLASSES = 8  # the synthetic dataset's
CLEAN = 0.60
# (attack, eps in 1/255, steps) -> mIoU (0-1): a sweep over steps at 8/255 and over eps at 10 steps.
SWEEP = {
    ("pgd", 8, 2): 0.40, ("pgd", 8, 5): 0.30, ("pgd", 8, 10): 0.25, ("pgd", 4, 10): 0.45, ("pgd", 16, 10): 0.05,
    ("eroseg", 8, 2): 0.35, ("eroseg", 8, 5): 0.20, ("eroseg", 8, 10): 0.10, ("eroseg", 4, 10): 0.40,
    ("eroseg", 16, 10): 0.02,
}
# per-class IoU of the headline evaluations: class 3 never predicted right (0), class 7 absent (None);
# under eroseg class 5 also drops to 0.
PER_CLASS = {
    "clean": [0.9, 0.8, 0.5, 0.0, 0.4, 0.3, 0.6, None],
    "pgd": [0.7, 0.5, 0.2, 0.0, 0.1, 0.1, 0.2, None],
    "eroseg": [0.6, 0.3, 0.1, 0.0, 0.05, 0.0, 0.1, None],
}


def write_eval(path, attack, eps_255, steps, miou, per_class=None):
    n = 2
    per_image = PerImageStats(*(np.ones((n, CLASSES), dtype=np.int64) for _ in range(3)))
    params = {} if attack == "clean" else {"eps": eps_255 / 255, "step_size": 2 / 255, "steps": steps}
    EvalRecord(method="standard", seed=0, setting=attack, attack="none" if attack == "clean" else attack,
               attack_params=params, split="test", checkpoint="model.pt", classes=None, miou=miou, pixel_acc=miou,
               per_class_iou=per_class or [miou] * CLASSES, per_image=per_image).write(path)
    return str(path)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Every figure of hand-made inputs; the matplotlib figures are kept for inspection."""
    d = tmp_path_factory.mktemp("figs")
    evals = [write_eval(d / "clean.json", "clean", 0, 0, CLEAN, PER_CLASS["clean"])]
    for (attack, eps, steps), miou in SWEEP.items():
        per_class = PER_CLASS[attack] if (eps, steps) == (8, 10) else None
        evals.append(write_eval(d / f"{attack}_{eps}_{steps}.json", attack, eps, steps, miou, per_class))
    logs = []
    for method in ("standard", "pgd_at"):
        log = d / method / "seed0" / "log.csv"
        log.parent.mkdir(parents=True)
        log.write_text("epoch,loss,val_miou,robust_val_miou\n1,1.2,0.2,0.1\n2,0.8,0.4,0.2\n3,0.6,0.5,0.3\n")
        logs.append(str(log))
    rng = np.random.default_rng(0)
    img = rng.random((2, 3, 16, 16), dtype=np.float32)
    lab = rng.integers(0, CLASSES, (2, 16, 16))
    np.savez(d / "samples.npz", image=img, adv=np.clip(img + 0.03, 0, 1), label=lab, pred_clean=lab, pred_adv=lab,
             step_fooled=rng.random((4, 16, 16)) > 0.5, step_attacked=rng.random((4, 16, 16)) > 0.5)
    spec = {"dataset": "synthetic", "dpi": 50, "headline": {"eps": 8 / 255, "steps": 10},
            "sweep": {"method": "standard", "attacks": ["pgd", "eroseg"]},
            "per_class": {"method": "standard", "attacks": ["pgd", "eroseg"]}}
    kept = {}
    save = figures.save_figure

    def keep(fig, out_dir, name, dpi):
        kept[name] = fig
        return save(fig, out_dir, name, dpi)

    mp = pytest.MonkeyPatch()
    mp.setattr(figures, "save_figure", keep)
    try:
        written = make_figures(evals=evals, logs=logs, samples=[str(d / "samples.npz")],
                               steps=str(d / "samples.npz"), spec=spec, out_dir=d / "out")
    finally:
        mp.undo()
    for fig in kept.values():
        fig.canvas.draw()
    return d / "out", written, kept


def tick_labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def test_every_figure_written_as_png_and_svg(rendered):
    out, written, kept = rendered
    # robustness_curve needs minimal-norm records (tests/test_min_norm_report.py draws it), size object summaries
    # (tests/test_size.py draws it)
    drawn = set(FIGURES) - {"robustness_curve", "size"}
    assert set(kept) == drawn
    for name in drawn:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (out / f"{name}.svg").read_text()
    assert len(written) == 2 * len(drawn)


def test_steps_axis_has_integer_ticks_and_a_dashed_clean_line(rendered):
    ax, diff_ax = rendered[2]["robust_vs_steps"].axes
    assert list(diff_ax.get_xticks()) == [2, 5, 10]
    assert tick_labels(diff_ax) == ["2", "5", "10"]  # the shared x axis is labelled on the bottom panel
    clean = [ln for ln in ax.get_lines() if ln.get_label().startswith("clean")]
    assert len(clean) == 1 and clean[0].get_linestyle() == "--"
    assert np.allclose(clean[0].get_ydata(), CLEAN * 100)
    assert "(" in diff_ax.get_xlabel() and ax.get_ylabel() == "mIoU (%)"


def test_eps_axis_in_255ths_starting_at_the_clean_point(rendered):
    ax, diff_ax = rendered[2]["robust_vs_eps"].axes
    assert tick_labels(diff_ax) == ["0", "4/255", "8/255", "16/255"]
    for attack in ("pgd", "eroseg"):
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == attack]
        x, y = line.get_data()
        assert list(x) == [0, 4, 8, 16]
        assert y[0] == pytest.approx(CLEAN * 100)
        assert list(y[1:]) == pytest.approx([SWEEP[(attack, e, 10)] * 100 for e in (4, 8, 16)])
    assert any(ln.get_label() == "clean (eps = 0)" for ln in ax.get_lines())
    assert "eps" in diff_ax.get_xlabel() and ax.get_ylabel() == "mIoU (%)"


@pytest.mark.parametrize("name", ["robust_vs_steps", "robust_vs_eps", "per_class_iou", "training_curves"])
def test_legend_covers_no_data(rendered, name):
    fig = rendered[2][name]
    legends = [leg for ax in fig.axes for leg in ([ax.get_legend()] if ax.get_legend() else [])] + fig.legends
    assert legends, "no legend"
    boxes = [leg.get_window_extent() for leg in legends]
    # Outside the plotting area, so no data of any run can be hidden (matplotlib's "best" only avoids this run's).
    for ax in fig.axes:
        assert not any(b.overlaps(ax.get_window_extent()) for b in boxes), name
    for ax in fig.axes:
        points = [ln.get_transform().transform(np.c_[ln.get_xdata(), ln.get_ydata()]) for ln in ax.get_lines()]
        points += [ax.transData.transform([[p.get_x() + p.get_width() / 2, p.get_height()]]) for p in ax.patches]
        for pts in points:
            for px, py in pts:
                assert not any(b.contains(px, py) for b in boxes), (name, px, py)


def test_zero_iou_is_marked_and_absent_classes_say_na(rendered):
    ax = rendered[2]["per_class_iou"].axes[0]
    zero_markers = [ln for ln in ax.get_lines() if ln.get_marker() == "X"]
    # class 3 for clean, pgd and eroseg, class 5 for eroseg: 4 markers, all on the axis
    assert sum(len(ln.get_xdata()) for ln in zero_markers) == 4
    assert all(np.all(ln.get_ydata() == 0) for ln in zero_markers)
    na = [t for t in ax.texts if t.get_text() == "n/a"]
    assert len(na) == 3  # class 7, one per evaluation
    assert all(abs(t.get_position()[0] - 7) < 0.5 for t in na)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["clean", "pgd", "eroseg", "IoU = 0", "class absent (no IoU)"]
    assert ax.get_ylabel() == "IoU (%)"


def test_erosion_figure_has_a_colour_key(rendered):
    fig = rendered[2]["erosion"]
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert any(lbl.startswith("fooled") for lbl in labels) and any(lbl.startswith("attacked") for lbl in labels)
    assert len(labels) == 4
    assert [ax.get_xlabel() for ax in fig.axes[:4]] == [f"{100 * m:.0f}% fooled" for m in
                                                         np.load(rendered[0].parent / "samples.npz")[
                                                             "step_fooled"].mean(axis=(1, 2))]


def test_every_plot_axis_has_units(rendered):
    for name in ("robust_vs_steps", "robust_vs_eps", "per_class_iou", "training_curves"):
        for ax in rendered[2][name].axes:
            # a shared x axis (the sweeps' two panels) is labelled once, under the bottom panel
            assert ax.get_xlabel() or any(o.get_xlabel() for o in ax.get_shared_x_axes().get_siblings(ax)), name
            assert "(" in ax.get_ylabel(), (name, ax.get_ylabel())
    for ax in rendered[2]["training_curves"].axes:
        assert isinstance(ax.xaxis.get_major_locator(), matplotlib.ticker.MaxNLocator)
        assert all(float(t).is_integer() for t in ax.get_xticks())


def _configs_methods():
    import yaml

    root = Path(__file__).resolve().parents[1] / "config"
    return {p.name: list(yaml.safe_load(p.read_text())["methods"]) for p in sorted(root.glob("*.yaml"))}


@pytest.mark.parametrize("methods", [
    *_configs_methods().values(),
    ["standard", "pgd_at", "cospgd_at", "eroseg_at", "eroseg_at_tuned"],  # the tuned one hashed onto cospgd's green
    [f"m{k}" for k in range(12)],
])
def test_every_method_of_a_config_gets_its_own_colour_in_the_training_curves(tmp_path, monkeypatch, methods):
    import matplotlib.colors

    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, out_dir, name, dpi: drawn.setdefault(name, fig) and [])
    log = pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.5], "val_miou": [0.2, 0.3]})
    figures.plot_training({f"{m}/seed0": log for m in methods}, tmp_path, 60, methods)
    lines = drawn["training_curves"].axes[0].get_lines()
    colours = {line.get_label().split("/")[0]: matplotlib.colors.to_hex(line.get_color()) for line in lines}
    assert list(colours) == methods and len(set(colours.values())) == len(methods), colours


# ----------------------------------------------------------------------------- seeds, y-ranges, erosion steps
def _sweep_frame(seeds_at_every_point, seeds_at_headline=(), offset=None):
    """A frame as ``Evals.frame()`` gives it: pgd and eroseg 0.5 points apart, seed k adds k points."""
    offset = offset or (lambda seed: seed / 100)
    rows = []
    for seed in sorted({*seeds_at_every_point, *seeds_at_headline}):
        rows.append(dict(method="standard", seed=seed, setting="clean", eps_255=0.0, steps=0,
                         miou=CLEAN + offset(seed)))
        for (attack, eps, steps), miou in SWEEP.items():
            if seed in seeds_at_every_point or (eps, steps) == (8, 10):
                rows.append(dict(method="standard", seed=seed, setting=attack, eps_255=float(eps), steps=steps,
                                 miou=miou + offset(seed) - (0.005 if attack == "eroseg" else 0)))
    # the eroseg values are pgd's minus 0.5 points wherever both exist
    frame = pd.DataFrame(rows)
    pgd = frame[frame.setting == "pgd"].set_index(["seed", "eps_255", "steps"])["miou"]
    ero = frame.setting == "eroseg"
    frame.loc[ero, "miou"] = [pgd[(r.seed, r.eps_255, r.steps)] - 0.005 for r in frame[ero].itertuples()]
    return frame


def _draw_sweeps(tmp_path, monkeypatch, frame):
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, out_dir, name, dpi: drawn.setdefault(name, fig) and [])
    for x in ("steps", "eps_255"):
        figures.sweep_figure(frame, x, "standard", ["pgd", "eroseg"], 8.0, 10, tmp_path, 50)
    return drawn


@pytest.mark.parametrize("name", ["robust_vs_steps", "robust_vs_eps"])
def test_one_seed_sweep_says_seed_0_even_where_the_headline_point_has_three(tmp_path, monkeypatch, name):
    # The config sweeps seed 0 only, and the headline point (8/255, 10 steps) exists for seeds 0-2.
    drawn = _draw_sweeps(tmp_path, monkeypatch, _sweep_frame([0], seeds_at_headline=[1, 2]))
    ax = drawn[name].axes[0]
    assert "(seed 0)" in ax.get_title()
    assert not ax.containers, "one seed: no error bars"
    (pgd,) = [ln for ln in ax.get_lines() if ln.get_label() == "pgd"]
    x, y = pgd.get_data()
    headline = list(x).index(10 if name == "robust_vs_steps" else 8)
    # seed 0's value, not a mean of seeds 0-2 beside seed-0-only points
    assert y[headline] == pytest.approx(SWEEP[("pgd", 8, 10)] * 100)


@pytest.mark.parametrize("name", ["robust_vs_steps", "robust_vs_eps"])
def test_several_seeds_mean_with_error_bars_and_seeds_in_the_title(tmp_path, monkeypatch, name):
    from matplotlib.container import ErrorbarContainer

    drawn = _draw_sweeps(tmp_path, monkeypatch, _sweep_frame([0, 1, 2]))
    ax, diff_ax = drawn[name].axes
    assert "mean ± std over seeds 0, 1, 2" in ax.get_title()
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2  # pgd and eroseg
    (pgd,) = [ln for ln in ax.get_lines() if ln.get_label() == "pgd"]
    x, y = pgd.get_data()
    k = list(x).index(10 if name == "robust_vs_steps" else 8)
    assert y[k] == pytest.approx(SWEEP[("pgd", 8, 10)] * 100 + 1)  # mean of +0, +1, +2 points
    # the bars span one standard deviation of 0, 1, 2 points: 1 point either side
    segments = bars[0].lines[2][0].get_segments()
    assert {round(abs(s[1][1] - s[0][1]), 6) for s in segments} == {2.0}


@pytest.mark.parametrize("name", ["robust_vs_steps", "robust_vs_eps"])
def test_lines_half_a_point_apart_are_apart_on_the_page(tmp_path, monkeypatch, name):
    drawn = _draw_sweeps(tmp_path, monkeypatch, _sweep_frame([0]))
    ax, diff_ax = drawn[name].axes
    bottom, top = ax.get_ylim()
    assert bottom > 0  # fitted to the data, not from 0
    # the panel of differences to PGD: PGD's dashed zero and EroSeg at -0.5 points everywhere
    (ref,) = [ln for ln in diff_ax.get_lines() if ln.get_label() == "pgd (reference)"]
    assert ref.get_linestyle() == "--" and np.allclose(ref.get_ydata(), 0)
    (ero,) = [ln for ln in diff_ax.get_lines() if ln.get_label() == "eroseg"]
    assert np.allclose(ero.get_ydata(), -0.5)
    lo, hi = diff_ax.get_ylim()
    assert hi - lo < 3  # half a point is a sixth of the panel or more
    assert "pgd" in diff_ax.get_ylabel() and "(points)" in diff_ax.get_ylabel()


@pytest.mark.parametrize(("t", "shown", "words"), [
    (4, [1, 2, 3, 4], "every step, 1 to 4"),
    (10, list(range(1, 11)), "every step, 1 to 10"),
    (20, [1, 4, 7, 10, 13, 16, 19, 20], "every 3rd step from 1 and the last"),
    (19, [1, 3, 5, 7, 9, 11, 13, 15, 17, 19], "every 2nd step from 1"),
])
def test_erosion_figure_shows_the_steps_its_title_names(tmp_path, monkeypatch, t, shown, words):
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, out_dir, name, dpi: drawn.setdefault(name, fig) and [])
    rng = np.random.default_rng(0)
    masks = {"step_fooled": rng.random((t, 8, 8)) > 0.5, "step_attacked": rng.random((t, 8, 8)) > 0.5}
    figures.plot_erosion(masks, tmp_path, "eroseg on standard", 50)
    fig = drawn["erosion"]
    title = fig._suptitle.get_text()
    assert words in title
    panels = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert panels == [f"step {k}" for k in shown]
    if "every step" not in title:
        assert f"steps {', '.join(map(str, shown))} of {t}" in title
    # each panel draws the mask of the step it names
    first_row = [ax for ax in fig.axes if ax.get_title()]
    for ax, k in zip(first_row, shown):
        assert np.array_equal(ax.get_images()[0].get_array(), masks["step_fooled"][k - 1])


def test_training_curves_draw_validation_only_at_validated_epochs(tmp_path, monkeypatch):
    # train.val_every: 4 validates after epochs 4, 8 and the last (10); the other rows are empty
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, out_dir, name, dpi: drawn.setdefault(name, fig) and [])
    epochs = np.arange(1, 11)
    val = [0.1 * e if e in (4, 8, 10) else np.nan for e in epochs]
    log = pd.DataFrame({"epoch": epochs, "loss": 1 / epochs, "val_miou": val, "robust_val_miou": val})
    figures.plot_training({"standard/seed0": log}, tmp_path, 50, ["standard"])
    loss_ax, clean_ax, robust_ax = drawn["training_curves"].axes
    assert list(loss_ax.get_lines()[0].get_xdata()) == list(epochs)
    for ax in (clean_ax, robust_ax):
        (line,) = ax.get_lines()
        assert list(line.get_xdata()) == [4, 8, 10]
        assert list(line.get_ydata()) == pytest.approx([40, 80, 100])


def test_a_sweep_of_one_attack_has_no_empty_difference_panel(tmp_path, monkeypatch):
    frame = _sweep_frame([0])
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, out_dir, name, dpi: drawn.setdefault(name, fig) and [])
    for x in ("steps", "eps_255"):
        figures.sweep_figure(frame[frame.setting != "eroseg"], x, "standard", ["pgd"], 8.0, 10, tmp_path, 50)
    for name in ("robust_vs_steps", "robust_vs_eps"):
        (ax,) = drawn[name].axes
        assert ax.get_xlabel() and "(seed 0)" in ax.get_title()
