"""Robustness by object size in the report: the ``size`` table and figure.

Per model, each test image's ground-truth connected components are scored on the clean prediction and under the
headline worst case: on each image, the result the worst case chose there (an attack, a component of SEA or a
restart, or a minimal-norm perturbation scaled to eps; :func:`eroseg.report.min_norm.headline_worst_case_choice`).
The evaluations store the per-image summaries (``EvalRecord.objects``, the minimal-norm records' ``objects``);
:mod:`eroseg.objects` defines the scores and the terciles and builds the table and the figure.

torch is imported only where records are read (the workflow imports this module while it plans).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from eroseg.numbers import eps_label
from eroseg.report import min_norm  # noqa: F401  (the min_norm table registers first)
from eroseg.report.registry import register_figure, register_table
from eroseg.report.spec import ReportSpec

if TYPE_CHECKING:
    from eroseg.evaluate import EvalRecord
    from eroseg.report.evals import Evals, TableInputs
    from eroseg.report.figures import FigureInputs


def _has_size(spec: ReportSpec) -> bool:
    return spec.size


def _objects(rec: EvalRecord) -> dict:
    if rec.objects is None:
        raise ValueError(f"size table: the evaluation of {rec.setting!r} on {rec.checkpoint} keeps no object "
                         "summaries; rerun it with evaluation.size on (the settings' \"objects\" key)")
    return rec.objects


def _attacked_summaries(pool: list[EvalRecord], records: list[dict], method: str, seed: int, name: str) -> list:
    """Per image, the attacked summaries of the worst-case candidate ``name`` (a setting of ``pool``, one of its
    components as ``setting:component``, or a minimal-norm record as ``min_norm:setting``)."""
    from eroseg.report.min_norm import CANDIDATE_PREFIX

    for rec in pool:
        if name == rec.setting:
            return _objects(rec)["adv"]
        if name.startswith(f"{rec.setting}:"):
            return _objects(rec)["components"][name[len(rec.setting) + 1:]]
    for record in records:
        if name == CANDIDATE_PREFIX + record["setting"] and record["method"] == method and int(record["seed"]) == seed:
            if "objects" not in record:
                raise ValueError(f"size table: {record['path']} keeps no object summaries; rerun eroseg min-norm "
                                 "with --objects-eps at the headline eps")
            return record["objects"]["adv"]
    raise ValueError(f"size table: no evaluation of the worst-case candidate {name!r} of {method} seed {seed}")


def worst_case_summaries(evals: Evals, spec: ReportSpec, records: list[dict]) -> tuple[list[dict], list[str]]:
    """One summary per image and model (``method``, ``seed``, ``image`` and :data:`eroseg.objects.SUMMARY_FIELDS`):
    clean, and under the candidate the headline worst case chose on that image; and the class names."""
    from eroseg.objects import join_summaries
    from eroseg.report.min_norm import headline_worst_case_choice

    out, classes = [], []
    for method in spec.methods:
        for seed in evals.seeds(method):
            pool, _, _, names = headline_worst_case_choice(evals, spec, method, seed, records)
            clean = _objects(pool[0])["clean"]
            classes = classes or list(pool[0].classes or [])
            attacked = {name: _attacked_summaries(pool, records, method, seed, name) for name in set(names)}
            out += [{"method": method, "seed": seed, "image": i, **join_summaries(clean[i], attacked[name][i])}
                    for i, name in enumerate(names)]
    return out, classes


def size_of(evals: Evals, spec: ReportSpec) -> pd.DataFrame:
    """:func:`eroseg.objects.size_table` of every model's worst case at the headline."""
    from eroseg.objects import component_frame, size_table
    from eroseg.report.min_norm import load_min_norm

    summaries, classes = worst_case_summaries(evals, spec, load_min_norm(spec))
    return size_table(component_frame(summaries), classes or None)


def _title(inputs: TableInputs) -> str:
    return ("Robustness by object size: ground-truth connected components in size terciles (area range in pixels), "
            "per class and all; mean component IoU and recall clean and under the worst case at "
            f"{eps_label(inputs.spec.headline.eps)}, flipped share of the area (%), means over components and seeds; "
            "flipped share of the clean-right pixels (%), pooled")


@register_table("size", caption="table_size", enabled=_has_size, title=_title, index=False)
def size(inputs: TableInputs) -> pd.DataFrame:
    """Per method, tercile and class: :func:`size_of` rounded."""
    return size_of(inputs.evals, inputs.spec).round(2)


@register_figure("size", title="component IoU and flipped share per size tercile", caption="fig_size",
                 enabled=_has_size)
def size_figure(inputs: FigureInputs) -> list[Path]:
    """:func:`eroseg.objects.size_figure` of :func:`size_of` over the figure inputs' evaluations."""
    from eroseg import figures as plots
    from eroseg.objects import size_figure as draw
    from eroseg.report.evals import Evals

    if not inputs.evals:
        raise ValueError("size figure: no evaluation records given (--evals)")
    fig = draw(size_of(Evals.load(inputs.evals), inputs.spec))
    return plots.save_figure(fig, inputs.out_dir, "size", inputs.spec.dpi)
