"""Minimal-norm records in the report: the ``min_norm`` table, the robustness curve and the worst-case candidate.

The records (:func:`eroseg.minnorm.evaluate_min_norm`, written by ``eroseg min-norm`` with ``method``,
``seed`` and ``setting``) are named by the spec's ``min_norm.files``. At the headline eps, each record's
perturbation scaled to eps (:func:`eroseg.minnorm.stats_at_eps`) is one more per-image candidate of the
main table's worst case (:func:`worst_case_choice`). A record may cover only the first images of the
evaluated split (``evaluation.min_norm.max_images``): on the others the candidate repeats the first
candidate of the pool, so it can never win there.

torch is imported only where a record's counts are read (the workflow imports this module while it plans).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from eroseg.io import read_json
from eroseg.numbers import eps_label
from eroseg.report import tables  # noqa: F401  (the main table registers first: the min_norm table reads its values)
from eroseg.report.registry import register_figure, register_table
from eroseg.report.spec import ReportSpec

if TYPE_CHECKING:
    from eroseg.evaluate import EvalRecord
    from eroseg.metrics import PerImageStats
    from eroseg.report.evals import TableInputs
    from eroseg.report.figures import FigureInputs

#: Prefix of a minimal-norm candidate's name in a worst-case pool (``min_norm:<setting>``).
CANDIDATE_PREFIX = "min_norm:"


def load_min_norm(spec: ReportSpec) -> list[dict]:
    """The minimal-norm records the spec names (none without a ``min_norm`` block), each checked and with its path.

    Raises:
        ValueError: naming the file, when it is not a minimal-norm record or lacks method, seed or setting.
    """
    from eroseg.minnorm.records import RECORD_KIND

    if spec.min_norm is None:
        return []
    records = []
    for path in spec.min_norm.files:
        record = read_json(path)
        if not isinstance(record, dict) or record.get("kind") != RECORD_KIND:
            raise ValueError(f"{path}: not a minimal-norm record (expected kind {RECORD_KIND!r}, written by "
                             "eroseg min-norm)")
        missing = [k for k in ("method", "seed", "setting") if record.get(k) is None]
        if missing:
            raise ValueError(f"{path}: minimal-norm record without {', '.join(missing)} (write it with eroseg "
                             "min-norm, which fills them in)")
        records.append({**record, "path": str(path)})
    return records


def _padded(stats: PerImageStats, filler: PerImageStats, path: str, clean_labels: np.ndarray | None
            ) -> PerImageStats:
    """``stats`` of the first images extended (or cut) to ``filler``'s images with ``filler``'s own counts."""
    from eroseg.metrics import PerImageStats

    n, total = len(stats.tp), len(filler.tp)
    if clean_labels is not None and not np.array_equal(clean_labels[:min(n, total)], filler.label[:min(n, total)]):
        raise ValueError(f"{path}: the minimal-norm record's images are not the evaluation's first {min(n, total)} "
                         "images (their labelled pixels differ); run both on the same split and order")
    if n >= total:
        return PerImageStats(stats.tp[:total], stats.pred[:total], stats.label[:total])
    return PerImageStats(*(np.concatenate([getattr(stats, k), getattr(filler, k)[n:]]) for k in ("tp", "pred",
                                                                                                    "label")))


def min_norm_candidates(records: list[dict], method: str, seed: int, eps: float, filler: PerImageStats
                        ) -> dict[str, PerImageStats]:
    """Per setting, the per-image counts of one model's minimal-norm perturbations scaled to ``eps``.

    Args:
        records: :func:`load_min_norm`'s records (those of other models are skipped).
        filler: per-image counts over the evaluated images (a candidate of the pool): the counts of the
            images a record does not cover.

    Returns:
        ``{"min_norm:<setting>": PerImageStats}`` over ``filler``'s images (empty: no record of this model).
    """
    from eroseg.metrics import PerImageStats
    from eroseg.minnorm.records import stats_at_eps

    out = {}
    for record in records:
        if record["method"] == method and int(record["seed"]) == int(seed):
            clean = PerImageStats.from_dict(record["clean"]["per_image"]).label
            out[CANDIDATE_PREFIX + record["setting"]] = _padded(stats_at_eps(record, eps), filler, record["path"],
                                                                clean)
    return out


def worst_case_choice(pool: list[EvalRecord], rule: str, candidates_of
                      ) -> tuple[float, dict[str, int] | None, list[str]]:
    """The worst-case mIoU over ``pool`` with the minimal-norm candidates, on how many images each won, and the
    candidate chosen on each image.

    ``candidates_of(filler)`` gives the candidates (:func:`min_norm_candidates`) padded with ``filler``. With
    the ``miou`` rule the result is the lower of the worst case with and without them (coordinate descent is a
    local search, so a larger pool alone does not promise a lower value); with SEA's ``pixel_acc`` rule it is the
    rule's per-image choice over the larger pool.

    Returns:
        ``(miou, wins, names)``: ``wins`` maps each minimal-norm setting to the images whose chosen result is
        its perturbation (0 everywhere when the worst case without them is kept), None when the model has no
        minimal-norm record; ``names`` is the candidate chosen per image (``setting``, ``setting:component``
        or ``min_norm:setting``).
    """
    from eroseg.metrics import worst_case_stats
    from eroseg.report.evals import candidates

    base: dict[str, PerImageStats] = {}
    for rec in pool:
        base.update(candidates(rec))
    chosen, names_without = worst_case_stats(base, rule=rule)
    without = chosen.scores()["miou"]
    extra = candidates_of(next(iter(base.values())))
    if not extra:
        return without, None, names_without
    chosen, names = worst_case_stats({**base, **extra}, rule=rule)
    with_extra = chosen.scores()["miou"]
    keep_without = rule == "miou" and with_extra >= without
    wins = {name[len(CANDIDATE_PREFIX):]: 0 if keep_without else names.count(name) for name in extra}
    return (without, wins, names_without) if keep_without else (with_extra, wins, names)


def headline_worst_case(evals, spec: ReportSpec, method: str, seed: int, records: list[dict]
                        ) -> tuple[float, dict[str, int] | None]:
    """One model's worst case at the headline (``spec.worst_case_settings()``) with its minimal-norm candidates."""
    miou, wins, _ = headline_worst_case_choice(evals, spec, method, seed, records)[1:]
    return miou, wins


def headline_worst_case_choice(evals, spec: ReportSpec, method: str, seed: int, records: list[dict]
                               ) -> tuple[list[EvalRecord], float, dict[str, int] | None, list[str]]:
    """:func:`headline_worst_case` with its pool of records and the candidate chosen on each image
    (:func:`worst_case_choice`)."""
    from eroseg.report.evals import headline_records

    pool = headline_records(evals, spec, method, seed, spec.worst_case_settings())
    return pool, *worst_case_choice(pool, spec.worst_case_rule, lambda filler: min_norm_candidates(
        records, method, seed, spec.headline.eps, filler))


# ------------------------------------------------------------------ the table and the figure
def _has_min_norm(spec: ReportSpec) -> bool:
    return spec.min_norm is not None


def _title(inputs: TableInputs) -> str:
    return ("Minimal-norm attacks per model and setting: success rate, norm quartiles (x/255, failures as inf), "
            "robust share (minimal norm > eps) and mIoU of the perturbation scaled to eps (%), seconds per image; "
            f"images won in the worst case at {eps_label(inputs.spec.headline.eps)}; means over seeds")


@register_table("min_norm", caption="table_min_norm", enabled=_has_min_norm, title=_title, index=False)
def min_norm(inputs: TableInputs) -> pd.DataFrame:
    """:func:`eroseg.minnorm.min_norm_table` plus, per model, the images on which the perturbation scaled to the
    headline eps is the main table's worst case (mean over the seeds that have a record)."""
    from eroseg.minnorm.tables import min_norm_table

    table = min_norm_table(load_min_norm(inputs.spec))
    values = inputs.tables.get("min_norm_won")
    if values is not None:
        won = values.groupby("method", sort=False).mean(numeric_only=True)
        table["images won in the worst case"] = [
            won.at[m, f"min_norm_won:{s}"] if m in won.index and f"min_norm_won:{s}" in won else np.nan
            for m, s in zip(table["method"], table["setting"])]
    return table.round(2)


@register_figure("robustness_curve", title="robust share and mIoU against eps (minimal-norm attacks)",
                 caption="fig_robustness_curve", enabled=_has_min_norm)
def robustness_curve(inputs: FigureInputs) -> list[Path]:
    """The curves of :func:`eroseg.minnorm.robustness_curve_figure`, SEA and the worst case at the headline eps."""
    from eroseg import figures as plots
    from eroseg.minnorm.tables import min_norm_frame, robustness_curve_figure

    records = load_min_norm(inputs.spec)
    fig = robustness_curve_figure(min_norm_frame(records), _headline_points(inputs, records))
    return plots.save_figure(fig, inputs.out_dir, "robustness_curve", inputs.spec.dpi)


def _headline_points(inputs: FigureInputs, records: list[dict]) -> pd.DataFrame | None:
    """Per method drawn, mean over seeds of SEA's mIoU and of the worst case (with the minimal-norm candidates) at
    the headline eps: ``method, eps, miou, what`` rows (None without evaluations)."""
    from eroseg.report.evals import Evals

    spec = inputs.spec
    if not inputs.evals:
        return None
    evals, rows = Evals.load(inputs.evals), []
    for method in sorted({r["method"] for r in records}, key=list(spec.methods).index):
        for seed in evals.seeds(method):
            if spec.sea and evals.get(method, seed, spec.sea, spec.headline.eps, spec.steps_at_headline(spec.sea)):
                rec = evals.get(method, seed, spec.sea, spec.headline.eps, spec.steps_at_headline(spec.sea))
                rows.append({"method": method, "what": "SEA", "miou": rec.miou})
            if spec.worst_case_settings():
                rows.append({"method": method, "what": "worst case",
                             "miou": headline_worst_case(evals, spec, method, seed, records)[0]})
    if not rows:
        return None
    points = pd.DataFrame(rows).groupby(["method", "what"], sort=False)["miou"].mean().reset_index()
    points["eps"] = spec.headline.eps
    return points
