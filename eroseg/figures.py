"""Figures (PNG and SVG, matplotlib Agg) from evaluation JSON, training logs and samples.

Figures never load a model: everything they show was written by the
evaluation and training jobs. Each method and each attack keeps one colour in
every figure.

Figures written by :func:`make_figures` (``<name>.png`` and ``<name>.svg``):
``robust_vs_steps``, ``robust_vs_eps``, ``per_class_iou``,
``training_curves``, ``qualitative`` and ``erosion``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from eroseg.io import atomic_path, read_json  # noqa: E402

log = logging.getLogger(__name__)

FIGURES = ("robust_vs_steps", "robust_vs_eps", "per_class_iou", "training_curves", "qualitative", "erosion")

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


def _save(fig, out_dir: Path, name: str, dpi: int) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        target = out_dir / f"{name}.{ext}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=ext)
        paths.append(target)
    plt.close(fig)
    return paths


def _placeholder(out_dir: Path, name: str, message: str, dpi: int) -> list[Path]:
    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    log.warning("figure %s: %s", name, message)
    return _save(fig, out_dir, name, dpi)


def _palette_image(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return palette[np.clip(label, 0, 255)]


def _full_palette(palette) -> np.ndarray:
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[255] = (224, 224, 192)
    pal[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return pal


def plot_sweep(df: pd.DataFrame, x: str, out_dir: Path, name: str, title: str, xlabel: str, dpi: int) -> list[Path]:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for attack, g in df.groupby("setting", sort=False, observed=True):
        g = g.groupby(x, as_index=False)["miou"].mean().sort_values(x)
        ax.plot(g[x], g["miou"] * 100, marker="o", label=attack, color=color_for(attack, ATTACK_COLORS))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=9)
    return _save(fig, out_dir, name, dpi)


def plot_per_class(evals: list[dict], classes: list[str], out_dir: Path, title: str, dpi: int) -> list[Path]:
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes) + 2), 3.8))
    width = 0.8 / max(len(evals), 1)
    x = np.arange(len(classes))
    for i, d in enumerate(evals):
        iou = np.array([np.nan if v is None else v for v in d["per_class_iou"]], dtype=float) * 100
        ax.bar(x + (i - (len(evals) - 1) / 2) * width, iou, width, label=d["setting"],
               color=color_for(d["setting"], ATTACK_COLORS))
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    # Legend above the axes: inside, it would cover the tallest (clean) bars.
    # Outside on the right: clear of the title and of the bars whatever the number of classes.
    ax.legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_dir, "per_class_iou", dpi)


def plot_training(logs: dict[str, pd.DataFrame], out_dir: Path, dpi: int) -> list[Path]:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for label, df in logs.items():
        method = label.split("/")[0]
        c = color_for(method, METHOD_COLORS)
        ls = "-" if label.endswith("seed0") or "/" not in label else "--"
        axes[0].plot(df["epoch"], df["loss"], color=c, ls=ls, label=label)
        if "val_miou" in df:
            axes[1].plot(df["epoch"], df["val_miou"] * 100, color=c, ls=ls, label=label)
        if "robust_val_miou" in df and df["robust_val_miou"].notna().any():
            axes[2].plot(df["epoch"], df["robust_val_miou"] * 100, color=c, ls=ls, label=label)
    for ax, t in zip(axes, ("training loss", "clean val mIoU (%)", "robust val mIoU (%), PGD few steps")):
        ax.set_title(t)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False, fontsize=8)
    return _save(fig, out_dir, "training_curves", dpi)


def plot_qualitative(samples: dict, classes: list[str], palette, out_dir: Path, title: str, dpi: int,
                     amplify: float = 10.0) -> list[Path]:
    pal = _full_palette(palette)
    n = samples["image"].shape[0]
    cols = ["image", "adversarial", f"perturbation x{amplify:g}", "ground truth", "clean prediction",
            "adversarial prediction"]
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
    return _save(fig, out_dir, "qualitative", dpi)


def plot_erosion(steps: dict, out_dir: Path, title: str, dpi: int, max_panels: int = 8) -> list[Path]:
    fooled = steps["step_fooled"]
    attacked = steps.get("step_attacked")
    t = fooled.shape[0]
    idx = np.unique(np.linspace(0, t - 1, min(max_panels, t)).round().astype(int))
    rows = [("fooled region", fooled)] + ([("attacked mask", attacked)] if attacked is not None else [])
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.7 * len(idx), 1.9 * len(rows) + 0.4), squeeze=False)
    for r, (name, arr) in enumerate(rows):
        for j, k in enumerate(idx):
            ax = axes[r, j]
            ax.imshow(arr[k], cmap="Reds" if r == 0 else "Blues", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"step {k + 1}\n{100 * arr[k].mean():.0f}% fooled", fontsize=8)
            else:
                ax.set_title(f"{100 * arr[k].mean():.0f}% attacked", fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, "erosion", dpi)


def make_figures(*, evals: list[str], logs: list[str], samples: list[str], steps: str | None, spec: dict,
                 out_dir: str | Path) -> list[Path]:
    """Write every figure; returns the written paths.

    Args:
        evals: evaluation JSON files.
        logs: training log CSVs, each at ``.../<method>/seed<k>/log.csv``.
        samples: sample ``.npz`` files; the first is drawn in the qualitative grid.
        steps: an ``.npz`` with EroSeg's per-step masks (``step_fooled``, ``step_attacked``).
        spec: ``dataset`` (for class names and palette), ``headline`` ``{eps, steps}``,
            ``sweep`` ``{method, attacks, eps_fixed, steps_fixed}``, ``per_class``
            ``{method, attacks}``, ``dpi``.
        out_dir: output folder.
    """
    from eroseg.aggregate import Evals
    from eroseg.data import dataset_info

    out_dir = Path(out_dir)
    dpi = int(spec.get("dpi", 120))
    info = dataset_info(spec.get("dataset", "synthetic"))
    written: list[Path] = []
    df = Evals.load(evals).frame() if evals else pd.DataFrame(columns=["method", "setting", "eps_255", "steps", "miou"])
    head = spec.get("headline", {})
    h_eps = round(float(head.get("eps", 8 / 255)) * 255, 3)
    h_steps = int(head.get("steps", 20))

    sweep = spec.get("sweep") or {}
    sm = sweep.get("method", "standard")
    sa = sweep.get("attacks") or sorted(set(df["setting"]) - {"clean"})
    e_fixed = round(float(sweep.get("eps_fixed", h_eps / 255)) * 255, 3)
    s_fixed = int(sweep.get("steps_fixed", h_steps))
    base = df[(df.method == sm) & (df.setting.isin(sa))]
    base = base.assign(setting=pd.Categorical(base.setting, [a for a in sa if a in set(base.setting)], ordered=True))
    base = base.sort_values("setting")
    by_steps = base[base.eps_255 == e_fixed]
    if by_steps["steps"].nunique() >= 2:
        written += plot_sweep(by_steps, "steps", out_dir, "robust_vs_steps",
                              f"{sm}: mIoU vs attack steps (eps {e_fixed:g}/255)", "attack steps", dpi)
    else:
        written += _placeholder(out_dir, "robust_vs_steps", "fewer than two step counts evaluated", dpi)
    by_eps = base[base.steps == s_fixed].assign(eps_255=lambda d: d.eps_255)
    if by_eps["eps_255"].nunique() >= 2:
        written += plot_sweep(by_eps, "eps_255", out_dir, "robust_vs_eps",
                              f"{sm}: mIoU vs eps ({s_fixed} steps)", "eps (x/255)", dpi)
    else:
        written += _placeholder(out_dir, "robust_vs_eps", "fewer than two eps values evaluated", dpi)

    pc = spec.get("per_class") or {}
    pm = pc.get("method", sm)
    chosen = []
    for p in evals:
        d = read_json(p)
        params = d.get("attack_params") or {}
        if d.get("method") != pm or d.get("seed") != pc.get("seed", d.get("seed")):
            continue
        own_steps = spec.get("steps_of", {}).get(d["setting"], h_steps)
        if d["setting"] == "clean" or (
            d["setting"] in (pc.get("attacks") or sa)
            and round(params.get("eps", 0) * 255, 3) == h_eps
            and int(params.get("steps", 0)) == own_steps
        ):
            if all(c["setting"] != d["setting"] for c in chosen):
                chosen.append(d)
    order = ["clean", *(pc.get("attacks") or sa)]
    chosen.sort(key=lambda d: order.index(d["setting"]) if d["setting"] in order else len(order))
    if chosen:
        written += plot_per_class(chosen, list(info.classes), out_dir,
                                  f"{pm}: per-class IoU, eps {h_eps:g}/255, {h_steps} steps", dpi)
    else:
        written += _placeholder(out_dir, "per_class_iou", f"no evaluation of method {pm}", dpi)

    frames = {}
    for p in logs:
        path = Path(p)
        frames[f"{path.parent.parent.name}/{path.parent.name}"] = pd.read_csv(path)
    written += plot_training(frames, out_dir, dpi) if frames else _placeholder(out_dir, "training_curves", "no logs", dpi)

    if samples:
        with np.load(samples[0]) as z:
            s = {k: z[k] for k in z.files}
        if "image" in s:
            written += plot_qualitative(s, list(info.classes), info.palette, out_dir,
                                        spec.get("qualitative_title", Path(samples[0]).stem), dpi)
        else:
            written += _placeholder(out_dir, "qualitative", "sample file holds no images", dpi)
    else:
        written += _placeholder(out_dir, "qualitative", "no samples", dpi)

    if steps:
        with np.load(steps) as z:
            st = {k: z[k] for k in z.files if k.startswith("step_")}
        if "step_fooled" in st:
            written += plot_erosion(st, out_dir, spec.get("erosion_title", "EroSeg: erosion over iterations"), dpi)
        else:
            written += _placeholder(out_dir, "erosion", "no per-step masks recorded", dpi)
    else:
        written += _placeholder(out_dir, "erosion", "no EroSeg run recorded", dpi)
    return written
