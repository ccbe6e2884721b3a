"""The ``min_norm`` table and the robustness-curve figure, from minimal-norm records (pure functions).

Statistics, per model (method, seed) and attack setting, over the images with
valid pixels:

- **success rate**: share of images on which the attack fooled at least
  ``adv_threshold`` of the valid pixels (checked by our own forward pass);
- **norm quartiles**: 25 %, 50 % and 75 % quantiles of the per-image minimal
  norm, failures counted as infinite (so the median is ``inf`` when fewer than
  half the images were fooled), as Rony et al. (CVPR 2023) and Halmosi et al.
  (ECCV 2024) report the median norm with failures at infinity;
- **robust share at eps**: share of images whose minimal norm exceeds eps
  (the "robust accuracy" of minimal-norm evaluations: the attack found no
  perturbation within eps that fools ``adv_threshold`` of the pixels);
- **mIoU at eps**: dataset mIoU (confusion-matrix mIoU over all images, as
  everywhere in eroseg) of the perturbations scaled to eps; unlike the robust
  share it counts partly fooled images;
- **seconds per image**: attack time, the batch's time shared equally.

Seeds are averaged in the table (mean over seeds of each statistic).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from eroseg.metrics import PerImageStats
from eroseg.minnorm.records import norms_of
from eroseg.numbers import eps_label


def _quantiles(values: np.ndarray, levels: list[float]) -> np.ndarray:
    """``np.quantile`` (linear interpolation) with ``inf`` values allowed: a quantile that reaches one is ``inf``.

    numpy interpolates ``inf - inf`` to NaN; here infinities stand in as the largest float, so a quantile between
    two of them, or between a finite value and one, comes out huge and is read back as ``inf``.
    """
    big = np.finfo(np.float64).max
    out = np.quantile(np.where(np.isinf(values), big, values), levels)
    return np.where(out > big / 1e6, np.inf, out)


def _record_rows(record: dict) -> list[dict]:
    """One row per eps of the grid for one record (its per-image statistics reduced)."""
    norms = norms_of(record)
    norms = norms[~np.isnan(norms)]
    quartiles = _quantiles(norms, [0.25, 0.5, 0.75]) if norms.size else [np.nan] * 3
    base = {
        "method": record.get("method"), "seed": record.get("seed"),
        "setting": record.get("setting", record["attack"]), "attack": record["attack"],
        "success_rate": float(np.mean(np.isfinite(norms))) if norms.size else np.nan,
        "norm_q1": quartiles[0], "norm_median": quartiles[1], "norm_q3": quartiles[2],
        "seconds_per_image": float(np.mean(record["per_image"]["seconds"])),
        "clean_miou": record["clean"]["miou"],
    }
    return [{**base, "eps": entry["eps"], "robust_share": float(np.mean(norms > entry["eps"])) if norms.size
             else np.nan, "miou": PerImageStats.from_dict(entry["per_image"]).scores()["miou"]}
            for entry in record["at_eps"]]


def min_norm_frame(records: list[dict]) -> pd.DataFrame:
    """Long frame of minimal-norm records: one row per (method, seed, setting, eps).

    Args:
        records: dicts of :func:`eroseg.minnorm.evaluate_min_norm` with ``method`` and ``seed`` (and optionally
            ``setting``, the config's name of the attack setting) added by the caller.

    Returns:
        Columns ``method, seed, setting, attack, success_rate, norm_q1, norm_median, norm_q3,
        seconds_per_image, clean_miou, eps, robust_share, miou`` (fractions; norms in pixel units).
    """
    rows = [row for record in records for row in _record_rows(record)]
    if not rows:
        raise ValueError("min_norm table: no minimal-norm records")
    return pd.DataFrame(rows)


def min_norm_table(records: list[dict]) -> pd.DataFrame:
    """Per model and attack: success rate, norm quartiles (x255), robust share and mIoU at each eps, s/image.

    Returns:
        One row per (method, setting); columns ``success %``, ``norm q1 / median / q3 (x/255)``,
        ``robust % @ <eps>`` and ``mIoU % @ <eps>`` for each eps of the grid, ``s/image``, ``seeds``.
        Means over seeds.
    """
    frame = min_norm_frame(records)
    keys = ["method", "setting"]
    per_model = frame.drop_duplicates(["method", "seed", "setting"])
    summary = per_model.groupby(keys, sort=False).agg(
        success=("success_rate", "mean"), q1=("norm_q1", "mean"), median=("norm_median", "mean"),
        q3=("norm_q3", "mean"), seconds=("seconds_per_image", "mean"), seeds=("seed", "nunique"))
    table = pd.DataFrame({
        "success %": 100 * summary["success"], "norm q1 (x/255)": 255 * summary["q1"],
        "norm median (x/255)": 255 * summary["median"], "norm q3 (x/255)": 255 * summary["q3"]})
    by_eps = frame.groupby([*keys, "eps"], sort=False)[["robust_share", "miou"]].mean().mul(100)
    for eps in sorted(frame["eps"].unique()):
        at = by_eps.xs(eps, level="eps")
        table[f"robust % @ {eps_label(eps)}"] = at["robust_share"]
        table[f"mIoU % @ {eps_label(eps)}"] = at["miou"]
    table["s/image"] = summary["seconds"]
    table["seeds"] = summary["seeds"]
    return table.reset_index()


#: Markers of the fixed-budget points on the curve's mIoU panel, by what they show.
_POINT_MARKERS = {"SEA": "*", "worst case": "X"}


def robustness_curve_figure(frame: pd.DataFrame, sea_points: pd.DataFrame | None = None, method: str | None = None):
    """Robust share and mIoU versus eps, one line per attack setting (and per method), SEA as points.

    Args:
        frame: :func:`min_norm_frame` rows (seeds are averaged).
        sea_points: optional rows ``method, eps, miou`` (fractions) of fixed-budget evaluations, drawn
            as points on the mIoU panel; an optional ``what`` column names each point (default ``SEA``;
            ``worst case`` is drawn as a cross).
        method: draw only this method (default: every method, line style per method).

    Returns:
        A matplotlib figure (the caller saves it).
    """
    import matplotlib.pyplot as plt

    if method is not None:
        frame = frame[frame["method"] == method]
        sea_points = None if sea_points is None else sea_points[sea_points["method"] == method]
    curves = frame.groupby(["method", "setting", "eps"], sort=False)[["robust_share", "miou"]].mean().reset_index()
    fig, (ax_share, ax_miou) = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    styles = ["-", "--", ":", "-."]
    for i, (name, rows) in enumerate(curves.groupby("method", sort=False)):
        for setting, line in rows.groupby("setting", sort=False):
            label = f"{name} / {setting}"
            drawn = ax_share.plot(255 * line["eps"], 100 * line["robust_share"], styles[i % 4], marker=".",
                                  label=label)[0]
            ax_miou.plot(255 * line["eps"], 100 * line["miou"], styles[i % 4], marker=".", color=drawn.get_color())
    if sea_points is not None and len(sea_points):
        points = sea_points if "what" in sea_points else sea_points.assign(what="SEA")
        for (name, what), rows in points.groupby(["method", "what"], sort=False):
            ax_miou.scatter(255 * rows["eps"], 100 * rows["miou"], marker=_POINT_MARKERS.get(what, "o"), s=80,
                            zorder=3, label=f"{name} / {what}")
    ax_share.set_ylabel("robust images (%): minimal norm > eps")
    ax_miou.set_ylabel("mIoU (%) of the perturbation scaled to eps")
    for ax in (ax_share, ax_miou):
        ax.set_xlabel("eps (x/255)")
        ax.grid(alpha=0.3)
    handles = ax_share.get_legend_handles_labels()[0] + ax_miou.get_legend_handles_labels()[0]  # lines, SEA points
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    return fig
