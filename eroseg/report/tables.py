"""The report's tables, each one registered function (:func:`eroseg.report.registry.register_table`).

Each table is written as ``<name>.csv``, ``<name>.md`` and ``<name>.html``; every number is in percent
(mIoU, pixel accuracy, differences in points) except ``results``, whose mIoU and pixel accuracy are
fractions 0-1 as the evaluation records store them.

- ``main``: methods x attack settings at the headline eps and steps: clean first, then the worst case
  over all of them and SEA (the robust numbers), then each attack; mean ± std over seeds with a 95 %
  confidence interval (``main_values.csv`` beside it: the value of every model).
- ``results``: one row per evaluation (long form).
- ``steps`` / ``eps``: attack strength versus steps and versus eps on one model.
- ``ablation``: the EroSeg ablation over seeds.
- ``timings``: wall time per rule from Snakemake's benchmark files.
- ``tuning``: every tuning candidate, the chosen one marked.
- ``sea``: per method, SEA's components, SEA alone, the other attacks' worst case and SEA + EroSeg.
- ``checks``: gradient-masking sanity per model.
- ``claims`` / ``verdicts``: the paper's claims (:mod:`eroseg.report.claims`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from eroseg.io import atomic_write_text, read_json
from eroseg.numbers import eps_in_255, eps_label
from eroseg.report.evals import (
    WORST,
    Evals,
    TableInputs,
    fmt_cell,
    headline_records,
    worst_case_of,
)
from eroseg.report.registry import register_table
from eroseg.report.spec import ReportSpec, as_spec


# ------------------------------------------------------------------ table functions
def main_table(evals: Evals, spec: ReportSpec | dict, min_norm_records: list[dict] | None = None
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Methods x (clean, worst case, SEA, attacks): formatted cells; per-model values (fractions), worst case last.

    With ``min_norm_records`` (:func:`eroseg.report.min_norm.load_min_norm`), a model's minimal-norm
    perturbations scaled to the headline eps join its worst case, and the values get a column
    ``min_norm_won:<setting>`` per setting: the images whose worst case is that perturbation.
    """
    from eroseg.report.min_norm import headline_worst_case

    spec = as_spec(spec)
    attacks = list(spec.attacks)
    sea = [spec.sea] if spec.sea else []
    rows, values = {}, []
    for m in spec.methods:
        per_col: dict[str, list[float]] = {}
        for seed in evals.seeds(m):
            clean = evals.get(m, seed, "clean", 0, 0)
            recs = headline_records(evals, spec, m, seed, attacks + sea)
            worst_miou, won = headline_worst_case(evals, spec, m, seed, min_norm_records or [])
            model_vals = {"clean": clean.miou if clean else math.nan,
                          **{r.setting: r.miou for r in recs}, WORST: worst_miou}
            values.append({"method": m, "seed": seed, **{f"min_norm_won:{k}": v for k, v in (won or {}).items()},
                           **model_vals})
            for k, v in model_vals.items():
                per_col.setdefault(k, []).append(v)
        # The robust columns (worst case, SEA) right after clean, so that they are seen first on a narrow page.
        rows[m] = {c: fmt_cell(per_col.get(c, [])) for c in ["clean", WORST, *sea, *attacks]}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table, pd.DataFrame(values)


def sea_table(evals: Evals, spec: ReportSpec | dict) -> pd.DataFrame:
    """SEA per method: how often each loss was the per-image worst, each loss alone, and SEA + others.

    "SEA" is SEA's own per-image choice (lowest pixel accuracy over its
    components), as the paper reports it. "SEA + EroSeg" and "EroSeg lowers
    SEA by (points)" use one rule, ``worst_case_rule``, on one pool: the
    worst case over SEA's choice and its components ("SEA (worst-case rule)")
    against the worst case over the same pool plus the ``sea_plus`` settings,
    so the difference is exactly 0 when those settings add nothing that SEA
    does not already have.
    """
    spec = as_spec(spec)
    rows = []
    others = [a for a in spec.worst_case or spec.attacks if a != spec.sea]
    for m in spec.methods:
        for seed in evals.seeds(m):
            (sea,) = headline_records(evals, spec, m, seed, [spec.sea])
            row = {"method": m, "seed": seed, "SEA": sea.miou * 100}
            comp = sea.components
            if comp:
                acc = np.stack([np.nan_to_num(c.pixel_acc, nan=np.inf) for c in comp.values()])
                wins = np.bincount(np.argmin(acc, axis=0), minlength=len(comp))
                for (name, st), w in zip(comp.items(), wins):
                    row[f"{name} alone"] = st.scores()["miou"] * 100
                    row[f"{name} worst on (images)"] = int(w)
            rest = headline_records(evals, spec, m, seed, others)
            row["worst of the other attacks"] = worst_case_of(rest)[0] * 100
            if spec.sea_plus:
                with_eroseg = headline_records(evals, spec, m, seed, list(spec.sea_plus))
                row["SEA (worst-case rule)"] = worst_case_of([sea], spec.worst_case_rule)[0] * 100
                row["SEA + EroSeg"] = worst_case_of([sea, *with_eroseg], spec.worst_case_rule)[0] * 100
                row["EroSeg lowers SEA by (points)"] = row["SEA (worst-case rule)"] - row["SEA + EroSeg"]
            rows.append(row)
    return pd.DataFrame(rows).set_index(["method", "seed"]).round(2)


def _restart_columns(evals: Evals, spec: ReportSpec, method: str, seed: int, row: dict) -> str | None:
    """The restart check's columns of one model into ``row``; a flag when restarts gain too much."""
    checks = spec.checks
    rec = headline_records(evals, spec, method, seed, [checks.restarts])[0]
    one = rec.components.get("restart_0")
    row["PGD 1 run"] = one.scores()["miou"] * 100 if one else math.nan
    row[f"PGD best of {rec.restarts}"] = rec.miou * 100
    gain = row["PGD 1 run"] - row[f"PGD best of {rec.restarts}"]
    row["restart gain (points)"] = gain
    return f"restarts gain {gain:.1f} points" if gain > checks.max_restart_gain else None


def checks_table(evals: Evals, spec: ReportSpec | dict) -> pd.DataFrame:
    """Gradient-masking sanity per model (Croce et al. 2024; Athalye et al. 2018).

    Flags: robust mIoU does not fall (weakly) with eps on the ladder; above 1 %
    at eps = 1 (an unbounded attack must destroy every prediction); restarts of
    PGD find more than ``max_restart_gain`` points more than one run.
    """
    spec = as_spec(spec)
    checks = spec.checks
    rows = []
    for m in spec.methods:
        seeds = evals.seeds(m) if checks.seeds is None else checks.seeds
        for seed in [s for s in evals.seeds(m) if s in seeds]:
            row: dict = {"method": m, "seed": seed}
            ladder = []
            for eps in checks.eps:
                rec = evals.get(m, seed, checks.setting, eps, checks.steps)
                if rec is None:
                    raise ValueError(f"checks: no evaluation of {checks.setting!r} for {m} seed {seed} at eps "
                                     f"{eps_label(eps)}")
                ladder.append(rec.miou * 100)
                row[f"eps {eps_label(eps)}"] = rec.miou * 100
            flags = []
            if any(b > a + 1e-9 for a, b in zip(ladder, ladder[1:])):
                flags.append("mIoU rises with eps")
            if ladder[-1] > 1.0:
                flags.append(f"mIoU {ladder[-1]:.1f} % > 1 % at eps {eps_label(checks.eps[-1])}")
            if checks.restarts:
                flags.append(_restart_columns(evals, spec, m, seed, row))
            flags = [f for f in flags if f]
            row["verdict"] = "; ".join(flags) if flags else "ok"
            rows.append(row)
    return pd.DataFrame(rows).set_index(["method", "seed"]).round(2)


def _sweep_rows(evals: Evals, spec: ReportSpec) -> tuple[pd.DataFrame, dict[str, int]]:
    """The sweep method's evaluations of the sweep attacks, and each attack's place in the table."""
    df = evals.frame()
    base = df[(df.method == spec.sweep.method) & (df.setting.isin(spec.sweep.attacks))].copy()
    return base, {a: i for i, a in enumerate(spec.sweep.attacks)}


def steps_table(evals: Evals, spec: ReportSpec | dict) -> pd.DataFrame:
    """Attack strength versus steps at the headline eps on the sweep's model: mIoU (%)."""
    spec = as_spec(spec)
    base, order = _sweep_rows(evals, spec)
    head_eps = eps_in_255(spec.headline.eps)
    table = base[base.eps_255 == head_eps].pivot_table(index="setting", columns="steps", values="miou",
                                                       aggfunc="mean")
    table = (table * 100).sort_index(key=lambda ix: ix.map(order))
    table.columns = [f"{c} steps" for c in table.columns]
    return table.round(2)


def eps_table(evals: Evals, spec: ReportSpec | dict) -> pd.DataFrame:
    """Attack strength versus eps at the headline steps on the sweep's model: mIoU (%)."""
    spec = as_spec(spec)
    base, order = _sweep_rows(evals, spec)
    table = base[base.steps == spec.headline.steps].pivot_table(index="setting", columns="eps_255",
                                                                values="miou", aggfunc="mean")
    table = (table * 100).sort_index(key=lambda ix: ix.map(order))
    table.columns = [f"eps {c:g}/255" for c in table.columns]
    return table.round(2)


def ablation_table(evals: Evals, spec: ReportSpec | dict) -> pd.DataFrame:
    """The EroSeg ablation on one method over its seeds: mIoU and pixel accuracy (%), mean ± std [95 % CI]."""
    spec = as_spec(spec)
    method = spec.ablation.method
    rows = []
    for label, setting in spec.ablation.attacks:
        recs = [headline_records(evals, spec, method, s, [setting])[0] for s in evals.seeds(method)]
        rows.append({"variant": label, "setting": setting, "mIoU": fmt_cell([r.miou for r in recs], digits=2),
                     "pixel acc": fmt_cell([r.pixel_acc for r in recs], digits=2)})
    return pd.DataFrame(rows).set_index("variant")


def tuning_table(paths: list[str]) -> pd.DataFrame:
    """Every tuning candidate of every family: parameters, val mIoU (%) per model and mean, the chosen one marked."""
    rows = []
    for p in paths:
        d = read_json(p)
        for c in d["candidates"]:
            row = {"family": d["family"], "split": d["split"],
                   "candidate": ", ".join(f"{k}={v}" for k, v in c["params"].items()),
                   "mean val mIoU": c["mean"] * 100, "chosen": "yes" if c["params"] == d["chosen"] else ""}
            row.update({f"mIoU {Path(k).parent.parent.name}/{Path(k).parent.name}": v * 100
                        for k, v in c["miou"].items()})
            rows.append(row)
    return pd.DataFrame(rows).round(2)


def timings_table(paths: list[str]) -> pd.DataFrame:
    """Wall time per rule from Snakemake's benchmark files (``.../benchmarks/<rule>/<job>.tsv``)."""
    rows = []
    for p in paths:
        bench = pd.read_csv(p, sep="\t")
        rows.append({"rule": Path(p).parent.name, "job": Path(p).stem, "seconds": float(bench["s"].iloc[0])})
    df = pd.DataFrame(rows, columns=["rule", "job", "seconds"])
    out = df.groupby("rule", sort=False)["seconds"].agg(jobs="count", total="sum", mean="mean", max="max")
    return out.round(1)


# ------------------------------------------------------------------ the registered tables
def _seed_counts(inputs: TableInputs) -> str:
    return "/".join(str(n) for n in sorted({len(inputs.evals.seeds(m)) for m in inputs.spec.methods}))


@register_table("main", caption="table_main",
                title=lambda inputs: f"mIoU (%) clean and under attack, {inputs.headline_words()} (FGSM: 1 step), "
                                     "best iterate; worst case over every attack and SEA's components; mean ± std "
                                     f"[95 % CI] over {_seed_counts(inputs)} seeds")
def main(inputs: TableInputs) -> pd.DataFrame:
    """The main table; every model's values go to ``main_values.csv`` beside it (the images each minimal-norm
    candidate won, to ``inputs.tables["min_norm_won"]``)."""
    from eroseg.report.min_norm import load_min_norm

    table, values = main_table(inputs.evals, inputs.spec, load_min_norm(inputs.spec))
    won = [c for c in values.columns if c.startswith("min_norm_won:")]
    inputs.tables["min_norm_won"] = values[["method", "seed", *won]]  # read by the min_norm table
    values = values.drop(columns=won)
    inputs.tables["main_values"] = values
    atomic_write_text(inputs.out_dir / "main_values.csv", values.to_csv(index=False))
    return table


@register_table("results", title="Every evaluation (mIoU and pixel accuracy as fractions 0-1)", index=False)
def results(inputs: TableInputs) -> pd.DataFrame:
    return inputs.evals.frame().rename(columns={"miou": "miou (0-1)", "pixel_acc": "pixel_acc (0-1)"})


def _sweep_title(what: str):
    def title(inputs: TableInputs) -> str:
        method = inputs.spec.sweep.method
        return f"mIoU (%) of `{method}` (seed {inputs.evals.seeds(method)[0]}) versus {what}"
    return title


def _has_sweep(spec: ReportSpec) -> bool:
    return spec.sweep is not None


@register_table("steps", title=_sweep_title("attack steps"), enabled=_has_sweep)
def steps(inputs: TableInputs) -> pd.DataFrame:
    return steps_table(inputs.evals, inputs.spec)


@register_table("eps", title=_sweep_title("eps"), enabled=_has_sweep)
def eps(inputs: TableInputs) -> pd.DataFrame:
    return eps_table(inputs.evals, inputs.spec)


@register_table("ablation", enabled=lambda spec: spec.ablation is not None,
                title=lambda inputs: f"EroSeg ablation on `{inputs.spec.ablation.method}` ({inputs.headline_words()})"
                                     ": mIoU and pixel accuracy (%), mean ± std [95 % CI]")
def ablation(inputs: TableInputs) -> pd.DataFrame:
    return ablation_table(inputs.evals, inputs.spec)


@register_table("timings", title="Wall time (s) per rule: jobs, total, mean and longest job",
                enabled=lambda spec: spec.timings)
def timings(inputs: TableInputs) -> pd.DataFrame:
    if not inputs.benchmark_paths:
        raise ValueError("timings table: no benchmark files given (--benchmarks); leave timings out of the spec "
                         "to build the tables without it")
    return timings_table(inputs.benchmark_paths)


@register_table("tuning", title="Tuning on the validation split: mIoU (%) of every candidate (lowest mean chosen)",
                enabled=lambda spec: bool(spec.tuning), index=False)
def tuning(inputs: TableInputs) -> pd.DataFrame:
    table = tuning_table(inputs.tuning_paths)
    missing = [f for f in inputs.spec.tuning if f not in set(table.get("family", []))]
    if missing:
        raise ValueError(f"tuning table: no tuning result of {', '.join(missing)} among the tuning files given "
                         f"(--tuning: {inputs.tuning_paths or 'none'})")
    return table


@register_table("sea", caption="table_sea", enabled=lambda spec: spec.sea is not None,
                title=lambda inputs: f"SEA per model ({inputs.headline_words()}): mIoU (%) of each loss alone, "
                                     "images on which each loss was the worst, and SEA with the other attacks")
def sea(inputs: TableInputs) -> pd.DataFrame:
    return sea_table(inputs.evals, inputs.spec)


@register_table("checks", caption="table_checks", enabled=lambda spec: spec.checks is not None,
                title="Gradient-masking checks: mIoU (%) under APGD at growing eps and PGD with restarts; verdict "
                      "per model")
def checks(inputs: TableInputs) -> pd.DataFrame:
    return checks_table(inputs.evals, inputs.spec)
