"""Tables from evaluation records: every table of :data:`eroseg.report.TABLES` the spec enables.

Aggregation never loads a model or attacks anything (see :mod:`eroseg.report.tables` for the tables and
:mod:`eroseg.report.render` for the files). The table functions are importable from here too.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from eroseg.report import TABLES, ReportItem, ReportSpec, as_spec, enabled
from eroseg.report.claims import claims_table, verdicts_table
from eroseg.report.evals import Evals, TableInputs, fmt_cell, mean_ci, worst_case_of
from eroseg.report.render import table_html, write_table
from eroseg.report.tables import ablation_table, checks_table, main_table, sea_table

__all__ = ["Evals", "ablation_table", "aggregate", "checks_table", "claims_table", "fmt_cell", "main_table",
           "mean_ci", "sea_table", "table_html", "verdicts_table", "worst_case_of", "write_table"]


def aggregate(eval_paths: list[str], spec: ReportSpec | dict, out_dir: str | Path,
              tuning_paths: list[str] = (), benchmark_paths: list[str] = (),
              tables: dict[str, ReportItem] | None = None) -> dict[str, pd.DataFrame]:
    """Build and write every table ``spec`` enables, from ``eval_paths``; returns the tables by name.

    Args:
        eval_paths: evaluation JSON files (:class:`eroseg.evaluate.EvalRecord`).
        spec: a :class:`~eroseg.report.spec.ReportSpec` or its mapping (:meth:`ReportSpec.from_dict`).
        out_dir: where tables go (``<name>.csv``, ``.md``, ``.html``).
        tuning_paths: tuning results (``eroseg tune``) for the ``tuning`` table.
        benchmark_paths: Snakemake benchmark files for the ``timings`` table (wall seconds per rule).
        tables: the registry to build from (default: :data:`eroseg.report.TABLES`).
    """
    spec = as_spec(spec)
    inputs = TableInputs(Evals.load(eval_paths), spec, Path(out_dir), list(tuning_paths), list(benchmark_paths))
    for item in enabled(TABLES if tables is None else tables, spec):
        table = item.build(inputs)
        inputs.tables[item.name] = table
        title = item.title(inputs) if callable(item.title) else item.title
        write_table(table, inputs.out_dir, item.name, title, index=item.index)
    return inputs.tables
