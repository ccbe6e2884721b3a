"""Evaluation records as the tables read them: indexed by model and setting, cells, worst cases.

Nothing here loads a model or attacks anything: worst cases over attacks are recomputed from the per-image
counts that every evaluation keeps. torch is imported only where a record is read or a worst case
computed (:mod:`eroseg.metrics`), so that the workflow can import the table registry while it plans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from eroseg import stats
from eroseg.numbers import eps_in_255, eps_label
from eroseg.report.spec import ReportSpec

if TYPE_CHECKING:
    from eroseg.evaluate import EvalRecord
    from eroseg.metrics import PerImageStats

WORST = "worst_case"


# ------------------------------------------------------------------- statistics
def mean_ci(values) -> tuple[float, float, float, float, int]:
    """Mean, sample std, and the 95 % t-interval of the mean of ``values`` (NaNs dropped).

    Returns:
        ``(mean, std, low, high, n)``; std and the interval are NaN for fewer than two values.
    """
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, math.nan, math.nan, 1
    sd = float(v.std(ddof=1))
    half = stats.t_quantile(0.05, n - 1) * sd / math.sqrt(n)
    return float(v.mean()), sd, float(v.mean() - half), float(v.mean() + half), n


def fmt_cell(values, scale: float = 100.0, digits: int = 1) -> str:
    """``"31.6 ± 0.4 [30.6, 32.6]"`` (mean ± std [95 % CI]) of ``values`` times ``scale``; one value alone."""
    m, sd, lo, hi, n = mean_ci([x * scale for x in values])
    if n == 0:
        return "–"
    if n == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {sd:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


# ------------------------------------------------------------------------ input
class Evals:
    """Evaluation records indexed by ``(method, seed, setting, eps_255, steps)``."""

    def __init__(self, records: list[EvalRecord], paths: list[str]):
        self.records = records
        self.by_key: dict[tuple, EvalRecord] = {}
        for rec, path in zip(records, paths):
            key = self.key(rec.method, rec.seed, rec.setting, rec.eps, rec.steps)
            if key in self.by_key:
                raise ValueError(f"{path}: a second evaluation of {key} (first: {self.by_key[key].checkpoint})")
            self.by_key[key] = rec

    @staticmethod
    def key(method, seed, setting, eps, steps) -> tuple:
        return (method, int(seed), setting, eps_in_255(eps), int(steps))

    @classmethod
    def load(cls, paths: list[str]) -> Evals:
        from eroseg.evaluate import EvalRecord

        return cls([EvalRecord.read(p) for p in paths], [str(p) for p in paths])

    def get(self, method, seed, setting, eps, steps) -> EvalRecord | None:
        return self.by_key.get(self.key(method, seed, setting, eps, steps))

    def seeds(self, method: str) -> list[int]:
        return sorted({int(r.seed) for r in self.records if r.method == method})

    def frame(self) -> pd.DataFrame:
        rows = [{"method": r.method, "seed": int(r.seed), "setting": r.setting, "attack": r.attack,
                 "eps_255": eps_in_255(r.eps), "steps": r.steps, "restarts": r.restarts,
                 "miou": r.miou, "pixel_acc": r.pixel_acc, "num_images": r.num_images, "split": r.split,
                 "seconds": r.seconds} for r in self.records]
        return pd.DataFrame(rows)


# ------------------------------------------------------------------ worst cases
def candidates(rec: EvalRecord) -> dict[str, PerImageStats]:
    """Per-image results an evaluation offers to a worst case: its own and each component's."""
    out = {rec.setting: rec.per_image}
    out.update({f"{rec.setting}:{k}": v for k, v in rec.components.items()})
    return out


def worst_case_of(records: list[EvalRecord], rule: str = "miou") -> tuple[float, float, list[str]]:
    """mIoU, pixel accuracy and per-image choices of the worst case over ``records`` (and their components)."""
    from eroseg.metrics import worst_case_stats

    pool: dict[str, PerImageStats] = {}
    for rec in records:
        pool.update(candidates(rec))
    chosen, names = worst_case_stats(pool, rule=rule)
    s = chosen.scores()
    return s["miou"], s["pixel_acc"], names


def headline_records(evals: Evals, spec: ReportSpec, method: str, seed: int, settings: list[str]
                     ) -> list[EvalRecord]:
    """The records of ``settings`` for one model at the headline eps and steps (``spec.steps_of`` overrides)."""
    head = spec.headline
    out = []
    for setting in settings:
        steps = spec.steps_at_headline(setting)
        rec = evals.get(method, seed, setting, head.eps, steps)
        if rec is None:
            raise ValueError(f"no evaluation of {setting!r} for {method} seed {seed} at eps {eps_label(head.eps)}, "
                             f"{steps} steps")
        out.append(rec)
    return out

@dataclass
class TableInputs:
    """What a table builder reads: the evaluations, the spec, the other input files, the tables built so far.

    ``out_dir`` is where the tables go (a builder may write a side file there, e.g. ``main_values.csv``).
    """

    evals: Evals
    spec: ReportSpec
    out_dir: Path
    tuning_paths: list[str] = field(default_factory=list)
    benchmark_paths: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def headline_words(self) -> str:
        """``eps 8/255, 10 steps``: the headline budget as the titles say it."""
        return f"eps {eps_label(self.spec.headline.eps)}, {self.spec.headline.steps} steps"
