"""Figures (PNG and SVG, matplotlib Agg) from evaluation JSON, training logs and samples.

Figures never load a model: everything they show was written by the
evaluation and training jobs. Each method and each attack keeps one colour in
every figure.

:func:`make_figures` draws every figure of :data:`eroseg.report.FIGURES` the spec enables (each
``<name>.png`` and ``<name>.svg``; the registered builders are in :mod:`eroseg.report.figures`); this
module holds the drawing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from eroseg.conventions import full_palette  # noqa: E402
from eroseg.io import atomic_path  # noqa: E402

if TYPE_CHECKING:
    from eroseg.report import ReportItem, ReportSpec

log = logging.getLogger(__name__)

_TAB = plt.get_cmap("tab10").colors
ATTACK_COLORS = {
    "clean": "#444444", "fgsm": _TAB[7], "pgd": _TAB[0], "pgd_l2": _TAB[9], "segpgd": _TAB[1],
    "cospgd": _TAB[2], "eroseg": _TAB[3], "worst_case": "#000000",
}
METHOD_COLORS = {
    "standard": "#444444", "pgd_at": _TAB[0], "segpgd_at": _TAB[1], "cospgd_at": _TAB[2], "eroseg_at": _TAB[3],
}


def color_for(name: str, table: dict) -> tuple:
    """A stable colour for ``name``: the table's, else one derived from the name."""
    if name in table:
        return table[name]
    h = sum(ord(c) * (i + 1) for i, c in enumerate(name))
    return plt.get_cmap("tab20").colors[h % 20]


def distinct_colors(names, table: dict) -> dict:
    """One colour per name, never two alike, in the order given (the config's).

    A name keeps its colour in ``table`` unless an earlier name already holds
    that colour; every other name takes the first colour of tab10, then tab20,
    that no earlier name holds (grey shades are left to ``clean`` / ``standard``).
    """
    palette = [*plt.get_cmap("tab10").colors, *plt.get_cmap("tab20").colors]
    out: dict = {}
    taken: set = set()
    key = matplotlib.colors.to_hex
    for name in dict.fromkeys(names):
        color = table.get(name)
        if color is None or key(color) in taken:
            color = next((c for c in palette if key(c) not in taken and key(c) not in {"#7f7f7f", "#c7c7c7"}),
                         color_for(name, {}))
        out[name] = color
        taken.add(key(color))
    return out


def save_figure(fig, out_dir: Path, name: str, dpi: int) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        target = out_dir / f"{name}.{ext}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=ext)
        paths.append(target)
    plt.close(fig)
    return paths


def placeholder(out_dir: Path, name: str, message: str, dpi: int) -> list[Path]:
    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    log.warning("figure %s: %s", name, message)
    return save_figure(fig, out_dir, name, dpi)


def _palette_image(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return palette[np.clip(label, 0, 255)]


def _full_palette(palette) -> np.ndarray:
    return np.asarray(full_palette(palette), dtype=np.uint8)


def _eps_label(value: float, _pos=None) -> str:
    """Tick label of an eps given in 1/255 units: ``0``, ``4/255``, ``0.5/255``."""
    return "0" if value == 0 else f"{value:g}/255"


def _value_ticks(ax, values, integer: bool, max_ticks: int = 10) -> None:
    """Ticks at the evaluated x values (few of them), else integer ticks chosen by matplotlib."""
    values = sorted(set(float(v) for v in values))
    if len(values) <= max_ticks:
        ax.set_xticks(values)
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=integer))


def _legend_outside(ax, **kwargs):
    """Legend to the right of the axes: it never covers a data point."""
    return ax.legend(frameon=False, fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5), **kwargs)


def seed_phrase(seeds) -> str:
    """``seed 0`` for one seed, ``mean ± std over seeds 0, 1, 2`` for several: what a sweep title says."""
    seeds = sorted(int(s) for s in seeds)
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"mean ± std over seeds {', '.join(map(str, seeds))}"


def _fitted_ylim(ax, values, min_span: float = 2.0) -> None:
    """A y-range around ``values`` (points of mIoU), not from 0: lines a few tenths apart stay apart.

    The span is at least ``min_span`` points; a margin of 8 % of it is added on both sides.
    """
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if not len(values):
        return
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < min_span:
        mid = (hi + lo) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    pad = 0.08 * (hi - lo)
    ax.set_ylim(lo - pad, hi + pad)


def _seed_stats(df: pd.DataFrame, keys: list[str], column: str) -> pd.DataFrame:
    """Mean and sample standard deviation (0 for one seed) of ``column`` over seeds, per ``keys``."""
    g = df.groupby(keys, as_index=False, observed=True)[column]
    out = g.mean()
    out["std"] = g.std(ddof=1)[column].fillna(0.0).to_numpy() if len(out) else []
    return out


def _difference_panel(diff_ax, df: pd.DataFrame, x: str, attacks: list[str], ref: str, colors: dict,
                      several: bool) -> None:
    """Each attack minus ``ref`` (points of mIoU, paired per seed and point) on ``diff_ax``."""
    ref_rows = df[df.setting == ref][[x, "seed", "pct"]].rename(columns={"pct": "ref"})
    diffs = [0.0]
    diff_ax.axhline(0.0, ls="--", lw=1.2, color=colors[ref], label=f"{ref} (reference)")
    for attack in attacks:
        if attack == ref:
            continue
        paired = df[df.setting == attack].merge(ref_rows, on=[x, "seed"])  # same seed, same point
        paired = paired.assign(diff=paired["pct"] - paired["ref"])
        g = _seed_stats(paired, [x], "diff").sort_values(x)
        diff_ax.plot(g[x], g["diff"], marker="o", color=colors[attack], label=attack, clip_on=False, zorder=3)
        if several:
            diff_ax.errorbar(g[x], g["diff"], yerr=g["std"], fmt="none", ecolor=colors[attack], capsize=3,
                             zorder=3)
        diffs += [*(g["diff"] + g["std"]), *(g["diff"] - g["std"])]
    _fitted_ylim(diff_ax, diffs, min_span=1.0)
    diff_ax.set_ylabel(f"minus {ref} (points)")
    diff_ax.grid(alpha=0.3)


def plot_sweep(df: pd.DataFrame, x: str, out_dir: Path, name: str, title: str, xlabel: str, dpi: int,
               clean: float | None = None, reference: str = "pgd", clean_std: float = 0.0) -> list[Path]:
    """mIoU (%) against ``x`` (``steps`` or ``eps_255``), one line per attack, over two panels.

    The top panel shows mIoU with a y-range fitted to the data (attacks that differ by half a point stay
    apart); the bottom panel shows each attack minus ``reference`` (PGD; the first attack when PGD is
    absent), paired per seed, in points (no bottom panel for a single attack). With several seeds each
    point is the mean over seeds with error bars of one standard deviation; the seeds are named in the title.

    Args:
        df: rows with ``setting``, ``x``, ``seed`` and ``miou`` (0-1), every seed at every point.
        clean: the clean mIoU (0-1) of the same model (the same seeds' mean), drawn as the eps = 0 point
            of every line (eps sweep) or as a dashed reference line (steps sweep).
        reference: the attack the bottom panel subtracts.
        clean_std: the standard deviation of the clean mIoU over seeds (0-1), the eps = 0 error bar.
    """
    if "seed" not in df:
        df = df.assign(seed=0)
    seeds = sorted(set(int(s) for s in df["seed"]))
    several = len(seeds) > 1
    attacks = list(dict.fromkeys(df["setting"]))
    if len(attacks) > 1:
        fig, (ax, diff_ax) = plt.subplots(2, 1, figsize=(6.2, 5.6), sharex=True, height_ratios=(3, 2),
                                          layout="constrained")
    else:  # one attack: no differences to draw
        fig, ax = plt.subplots(figsize=(6.2, 3.8), layout="constrained")
        diff_ax = None
    is_eps = x == "eps_255"
    xs = set(df[x])
    if clean is not None and is_eps:
        xs.add(0.0)
    colors = distinct_colors(["clean", *attacks], ATTACK_COLORS)
    df = df.assign(pct=df["miou"] * 100)
    shown = []
    for attack in attacks:
        g = _seed_stats(df[df.setting == attack], [x], "pct").sort_values(x)
        gx, gy, ge = list(g[x]), list(g["pct"]), list(g["std"])
        if clean is not None and is_eps:  # eps = 0 is the clean model: every curve starts there
            gx, gy, ge = [0.0, *gx], [clean * 100, *gy], [clean_std * 100, *ge]
        ax.plot(gx, gy, marker="o", label=attack, color=colors[attack], clip_on=False, zorder=3)
        if several:
            ax.errorbar(gx, gy, yerr=ge, fmt="none", ecolor=colors[attack], capsize=3, zorder=3)
        shown += [*(np.add(gy, ge)), *(np.subtract(gy, ge))]
    if clean is not None:
        if is_eps:
            ax.plot([0], [clean * 100], ls="none", marker="s", ms=8, color=ATTACK_COLORS["clean"],
                    label="clean (eps = 0)", clip_on=False, zorder=4)
        else:
            ax.axhline(clean * 100, ls="--", lw=1.2, color=ATTACK_COLORS["clean"], label="clean (no attack)")
        shown.append(clean * 100)
    _fitted_ylim(ax, shown)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    if diff_ax is None:
        ax.set_xlabel(xlabel)
        _value_ticks(ax, xs, integer=True)
        if is_eps:
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_eps_label))
        return save_figure(fig, out_dir, name, dpi)

    _difference_panel(diff_ax, df, x, attacks, reference if reference in attacks else attacks[0], colors, several)
    diff_ax.set_xlabel(xlabel)
    _value_ticks(diff_ax, xs, integer=True)
    if is_eps:
        diff_ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_eps_label))
    return save_figure(fig, out_dir, name, dpi)


def plot_per_class(evals: list[dict], classes: list[str], out_dir: Path, title: str, dpi: int) -> list[Path]:
    """Per-class IoU (%) bars, one group per class and one bar per attack.

    An IoU of exactly 0 (the class is present but never predicted right)
    would be an invisible bar, so it gets a marker on the axis; a class absent
    from both labels and predictions has no IoU and is written ``n/a``.
    """
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) + 2.5), 3.8))
    width = 0.8 / max(len(evals), 1)
    x = np.arange(len(classes))
    any_zero = any_absent = False
    colors = distinct_colors([d["setting"] for d in evals], ATTACK_COLORS)
    for i, d in enumerate(evals):
        iou = np.array([np.nan if v is None else v for v in d["per_class_iou"]], dtype=float) * 100
        pos = x + (i - (len(evals) - 1) / 2) * width
        color = colors[d["setting"]]
        ax.bar(pos, np.nan_to_num(iou), width, label=d["setting"], color=color)
        zero = iou == 0
        if zero.any():
            any_zero = True
            ax.plot(pos[zero], np.zeros(zero.sum()), ls="none", marker="X", ms=7, color=color,
                    markeredgecolor="black", markeredgewidth=0.5, clip_on=False, zorder=4)
        for px in pos[np.isnan(iou)]:
            any_absent = True
            ax.text(px, 1.5, "n/a", rotation=90, ha="center", va="bottom", fontsize=8, color="#555555")
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_xlabel("class")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    handles, _ = ax.get_legend_handles_labels()
    if any_zero:
        handles.append(Line2D([], [], ls="none", marker="X", ms=7, color="white", markeredgecolor="black",
                              label="IoU = 0"))
    if any_absent:
        handles.append(Line2D([], [], ls="none", marker="$n/a$", ms=14, color="#777777",
                              label="class absent (no IoU)"))
    # Outside on the right: clear of the title and of the bars whatever the number of classes.
    ax.legend(handles=handles, frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out_dir, "per_class_iou", dpi)


def plot_training(logs: dict[str, pd.DataFrame], out_dir: Path, dpi: int, methods: list[str] | None = None
                  ) -> list[Path]:
    """Loss, clean and robust val mIoU per epoch; one colour per method (``methods``: the config's order)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    colors = distinct_colors([*(methods or []), *(label.split("/")[0] for label in logs)], METHOD_COLORS)
    for label, df in logs.items():
        method = label.split("/")[0]
        c = colors[method]
        ls = "-" if label.endswith("seed0") or "/" not in label else "--"
        axes[0].plot(df["epoch"], df["loss"], color=c, ls=ls, label=label)
        for ax, column in ((axes[1], "val_miou"), (axes[2], "robust_val_miou")):
            if column in df and df[column].notna().any():  # rows of epochs without validation are empty
                rows = df[df[column].notna()]
                ax.plot(rows["epoch"], rows[column] * 100, color=c, ls=ls, label=label, marker=".", ms=3)
    titles = ("training loss", "clean val mIoU", "robust val mIoU (PGD, few steps)")
    ylabels = ("cross-entropy (nats per pixel)", "mIoU (%)", "mIoU (%)")
    for ax, t, yl in zip(axes, titles, ylabels):
        ax.set_title(t)
        ax.set_xlabel("epoch")
        ax.set_ylabel(yl)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    # The loss panel has every run; its legend goes right of the last panel, off the data.
    handles, labels = axes[0].get_legend_handles_labels()
    _legend_outside(axes[2], handles=handles, labels=labels, title="method/seed", title_fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_dir, "training_curves", dpi)


def plot_qualitative(samples: dict, classes: list[str], palette, out_dir: Path, title: str, dpi: int,
                     amplify: float = 10.0) -> list[Path]:
    pal = _full_palette(palette)
    n = samples["image"].shape[0]
    cols = ["image", "adversarial", f"perturbation ×{amplify:g}\n(grey = none)", "ground truth",
            "clean prediction", "adversarial prediction"]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.0 * len(cols), 2.0 * n + 0.8), squeeze=False)
    for i in range(n):
        img = samples["image"][i].transpose(1, 2, 0)
        adv = samples["adv"][i].transpose(1, 2, 0)
        pert = np.clip(0.5 + amplify * (adv - img), 0, 1)
        panels = [img, adv, pert, _palette_image(samples["label"][i], pal),
                  _palette_image(samples["pred_clean"][i], pal), _palette_image(samples["pred_adv"][i], pal)]
        for j, p in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(p, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
    handles = [Patch(color=np.asarray(pal[k]) / 255, label=c) for k, c in enumerate(classes)]
    handles.append(Patch(color=np.asarray(pal[255]) / 255, label="void (255)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    return save_figure(fig, out_dir, "qualitative", dpi)


def erosion_steps(t: int, max_panels: int = 10) -> tuple[list[int], str]:
    """Which of ``t`` steps the erosion figure shows (1-based) and the words that say so.

    Every step when they fit in ``max_panels``; otherwise every ``s``-th step from step 1 with
    ``s = ceil((t - 1) / (max_panels - 1))``, plus the last step when the stride misses it.
    """
    if t < 1:
        raise ValueError(f"the erosion figure needs at least one recorded step, got {t}")
    if t <= max_panels:
        return list(range(1, t + 1)), f"every step, 1 to {t}" if t > 1 else "step 1 of 1"
    stride = -(-(t - 1) // (max_panels - 1))
    shown = list(range(1, t + 1, stride))
    words = f"every {_ordinal(stride)} step from 1"
    if shown[-1] != t:
        shown.append(t)
        words += " and the last"
    return shown, f"steps {', '.join(map(str, shown))} of {t} ({words})"


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def plot_erosion(steps: dict, out_dir: Path, title: str, dpi: int, max_panels: int = 10) -> list[Path]:
    """EroSeg's fooled region and attacked mask at the steps :func:`erosion_steps` picks; the title names them."""
    fooled = steps["step_fooled"]
    attacked = steps.get("step_attacked")
    shown, which = erosion_steps(fooled.shape[0], max_panels)
    idx = [k - 1 for k in shown]
    title = f"{title}\n{which}"
    rows = [("fooled region", fooled, "Reds", "fooled")]
    if attacked is not None:
        rows.append(("attacked mask", attacked, "Blues", "attacked"))
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.7 * len(idx) + 1.5, 2.1 * len(rows) + 1.0),
                             squeeze=False, layout="constrained")
    for r, (name, arr, cmap, what) in enumerate(rows):
        for j, k in enumerate(idx):
            ax = axes[r, j]
            ax.imshow(arr[k], cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"step {k + 1}", fontsize=9)
            # Share of all pixels of the image, under the panel it describes.
            ax.set_xlabel(f"{100 * arr[k].mean():.0f}% {what}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    # Colour key: what the two colours of each row mean.
    labels = {"fooled": ("fooled (wrong class)", "not fooled (correct or void)"),
              "attacked": ("attacked (loss weight > 0)", "not attacked")}
    handles = []
    for _, _, cmap, what in rows:
        cm = plt.get_cmap(cmap)
        handles += [Patch(facecolor=cm(1.0), edgecolor="grey", label=labels[what][0]),
                    Patch(facecolor=cm(0.0), edgecolor="grey", label=labels[what][1])]
    fig.suptitle(title, fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(rows), frameon=False, fontsize=8)
    return save_figure(fig, out_dir, "erosion", dpi)


def common_seeds(df: pd.DataFrame, x: str) -> list[int]:
    """Seeds evaluated at every (attack, ``x``) point of ``df``: the seeds a sweep figure can average.

    The sweep runs on one seed (``evaluation.sweep``) while the headline point runs on every seed; a mean
    over all rows would mix three seeds at that point with one elsewhere.
    """
    per_point = df.groupby(["setting", x], observed=True)["seed"].apply(lambda s: set(int(v) for v in s))
    return sorted(set.intersection(*per_point)) if len(per_point) else []


def _sweep_figure(rows: pd.DataFrame, clean_rows: pd.DataFrame, x: str, name: str, what: str, xlabel: str,
                  method: str, out_dir: Path, dpi: int) -> list[Path]:
    """One sweep figure over the seeds common to all its points; its title names them."""
    if rows[x].nunique() < 2:
        return placeholder(out_dir, name, f"fewer than two {'eps values' if x == 'eps_255' else 'step counts'}"
                            " evaluated", dpi)
    seeds = common_seeds(rows, x)
    if not seeds:  # no seed at every point: average what each point has, and say so
        seeds = sorted(set(int(s) for s in rows["seed"]))
        who = f"seeds {', '.join(map(str, seeds))}, not every seed at every point"
    else:
        dropped = sorted(set(int(s) for s in rows["seed"]) - set(seeds))
        if dropped:
            log.info("figure %s: seeds %s are left out (not evaluated at every point)", name, dropped)
        rows = rows[rows.seed.isin(seeds)]
        who = seed_phrase(seeds)
    own_clean = clean_rows[clean_rows.seed.isin(seeds)]
    clean = float(own_clean["miou"].mean()) if len(own_clean) else None
    clean_std = float(own_clean["miou"].std(ddof=1)) if len(own_clean) > 1 else 0.0
    return plot_sweep(rows, x, out_dir, name, f"{method} ({who}): {what}", xlabel, dpi, clean=clean,
                      clean_std=clean_std)


def sweep_figure(frame: pd.DataFrame, x: str, method: str, attacks: list[str], eps_255: float, steps: int,
                 out_dir: Path, dpi: int) -> list[Path]:
    """``robust_vs_steps`` (``x="steps"``, at ``eps_255``) or ``robust_vs_eps`` (``x="eps_255"``, at ``steps``)
    of ``method``'s evaluations in ``frame`` (a placeholder where the sweep has one value)."""
    base = frame[(frame.method == method) & (frame.setting.isin(attacks))]
    base = base.assign(setting=pd.Categorical(base.setting, [a for a in attacks if a in set(base.setting)],
                                              ordered=True))
    base = base.sort_values("setting")
    clean_rows = frame[(frame.method == method) & (frame.setting == "clean")]
    if x == "steps":
        return _sweep_figure(base[base.eps_255 == eps_255], clean_rows, "steps", "robust_vs_steps",
                             f"mIoU vs attack steps (eps {eps_255:g}/255)", "attack steps (iterations)", method,
                             out_dir, dpi)
    return _sweep_figure(base[base.steps == steps], clean_rows, "eps_255", "robust_vs_eps",
                         f"mIoU vs eps ({steps} steps)", "perturbation budget eps (pixel scale)", method, out_dir, dpi)


def make_figures(*, evals: list[str], logs: list[str], samples: list[str], steps: str | None,
                 spec: ReportSpec | dict, out_dir: str | Path, figures: dict[str, ReportItem] | None = None
                 ) -> list[Path]:
    """Draw every figure ``spec`` enables (:data:`eroseg.report.FIGURES`); returns the written paths.

    Args:
        evals: evaluation JSON files.
        logs: training log CSVs, each at ``.../<method>/seed<k>/log.csv``.
        samples: sample ``.npz`` files; the first is drawn in the qualitative grid.
        steps: an ``.npz`` with EroSeg's per-step masks (``step_fooled``, ``step_attacked``).
        spec: a :class:`~eroseg.report.spec.ReportSpec` or its mapping; figures read ``dataset`` (class
            names and palette), ``methods`` (their order gives their colours), ``headline``, ``sweep``,
            ``per_class``, ``dpi``, ``samples`` and the title overrides.
        out_dir: output folder.
        figures: the registry to draw from (default: :data:`eroseg.report.FIGURES`).
    """
    from eroseg.data import dataset_info
    from eroseg.report import FIGURES, as_spec, enabled
    from eroseg.report.evals import Evals
    from eroseg.report.figures import FigureInputs

    spec = as_spec(spec)
    info = dataset_info(spec.dataset)
    frame = (Evals.load(evals).frame() if evals
             else pd.DataFrame(columns=["method", "seed", "setting", "eps_255", "steps", "miou"]))
    inputs = FigureInputs(spec, Path(out_dir), list(evals), list(logs), list(samples), steps, frame,
                          list(info.classes), info.palette)
    written: list[Path] = []
    for item in enabled(FIGURES if figures is None else figures, spec):
        written += item.build(inputs)
    return written
