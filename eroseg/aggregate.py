"""Tables from evaluation records: CSV for machines, Markdown and HTML for people.

Aggregation never loads a model or attacks anything: worst cases over attacks
are recomputed from the per-image counts that every evaluation keeps. Every
number in the tables is in percent (mIoU, pixel accuracy, differences in
points), except ``results.csv``, whose ``miou`` and ``pixel_acc`` columns are
fractions in [0, 1] as the evaluation records store them (its header says so).

Tables (each written as ``<name>.csv``, ``<name>.md`` and ``<name>.html``):

- ``results``: one row per evaluation (long form).
- ``main``: methods x attack settings at the headline eps and steps: clean
  first, then each attack, SEA, and the worst case over all of them last; mean
  ± std over seeds with a 95 % confidence interval.
- ``sea``: per method, SEA's components: how often each was the per-image
  worst (pixel accuracy) and each one's mIoU alone; SEA alone, the other
  attacks' worst case, and SEA + EroSeg.
- ``checks``: gradient-masking sanity per model: APGD at an eps ladder up to
  eps = 1, random restarts of PGD; flags what fails.
- ``claims``: the paper's two claims as paired differences over seeds.
- ``steps`` / ``eps``: attack strength versus steps and eps on one model.
- ``ablation``: the EroSeg ablation over seeds.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from eroseg.evaluate import EvalRecord
from eroseg.io import atomic_write_text
from eroseg.metrics import PerImageStats, worst_case_stats
from eroseg.numbers import eps_label

log = logging.getLogger(__name__)

WORST = "worst_case"

#: Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (beyond: 1.96).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


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
    half = (_T95[n - 2] if n - 1 <= len(_T95) else 1.96) * sd / math.sqrt(n)
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
        return (method, int(seed), setting, round(float(eps) * 255, 3), int(steps))

    @classmethod
    def load(cls, paths: list[str]) -> Evals:
        return cls([EvalRecord.read(p) for p in paths], [str(p) for p in paths])

    def get(self, method, seed, setting, eps, steps) -> EvalRecord | None:
        return self.by_key.get(self.key(method, seed, setting, eps, steps))

    def seeds(self, method: str) -> list[int]:
        return sorted({int(r.seed) for r in self.records if r.method == method})

    def frame(self) -> pd.DataFrame:
        rows = [{"method": r.method, "seed": int(r.seed), "setting": r.setting, "attack": r.attack,
                 "eps_255": round(r.eps * 255, 3), "steps": r.steps, "restarts": r.restarts,
                 "miou": r.miou, "pixel_acc": r.pixel_acc, "num_images": r.num_images, "split": r.split,
                 "seconds": r.seconds} for r in self.records]
        return pd.DataFrame(rows)


# ----------------------------------------------------------------------- output
def write_table(df: pd.DataFrame, out_dir: Path, name: str, title: str, index: bool = True) -> None:
    """Write ``<name>.csv``, ``.md`` (titled) and ``.html`` (titled, for the report)."""
    if index and isinstance(df.index, pd.MultiIndex):  # one column per level, not tuples
        df, index = df.reset_index(), False
    atomic_write_text(out_dir / f"{name}.csv", df.to_csv(index=index))
    atomic_write_text(out_dir / f"{name}.md", f"## {title}\n\n{df.to_markdown(index=index)}\n")
    html = df.to_html(index=index, na_rep="–", border=0, classes="eroseg-table")
    atomic_write_text(out_dir / f"{name}.html",
                      f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
                      f"<style>table{{border-collapse:collapse;font:14px sans-serif}}td,th{{padding:2px 8px;"
                      f"text-align:right;border-bottom:1px solid #ddd}}</style></head>"
                      f"<body><h3>{title}</h3>{html}</body></html>\n")


# ------------------------------------------------------------------ worst cases
def candidates(rec: EvalRecord) -> dict[str, PerImageStats]:
    """Per-image results an evaluation offers to a worst case: its own and each component's."""
    out = {rec.setting: rec.per_image}
    out.update({f"{rec.setting}:{k}": v for k, v in rec.components.items()})
    return out


def worst_case_of(records: list[EvalRecord], rule: str = "miou") -> tuple[float, float, list[str]]:
    """mIoU, pixel accuracy and per-image choices of the worst case over ``records`` (and their components)."""
    pool: dict[str, PerImageStats] = {}
    for rec in records:
        pool.update(candidates(rec))
    chosen, names = worst_case_stats(pool, rule=rule)
    s = chosen.scores()
    return s["miou"], s["pixel_acc"], names


def headline_records(ev: Evals, spec: dict, method: str, seed: int, settings: list[str]) -> list[EvalRecord]:
    """The records of ``settings`` for one model at the headline eps and steps (``spec["steps_of"]`` overrides)."""
    head = spec["headline"]
    out = []
    for s in settings:
        steps = spec.get("steps_of", {}).get(s, head["steps"])
        rec = ev.get(method, seed, s, head["eps"], steps)
        if rec is None:
            raise ValueError(f"no evaluation of {s!r} for {method} seed {seed} at eps {eps_label(head['eps'])}, "
                             f"{steps} steps")
        out.append(rec)
    return out


# ----------------------------------------------------------------------- tables
def _worst_case_settings(spec: dict) -> list[str]:
    """The settings the worst case ranges over: ``worst_case`` (default: the main attacks) plus SEA."""
    out = list(spec.get("worst_case") or spec["attacks"])
    if spec.get("sea") and spec["sea"] not in out:
        out.append(spec["sea"])
    return out


def main_table(ev: Evals, spec: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Methods x (clean, attacks, SEA, worst case): formatted cells and per-model values (fractions)."""
    attacks = list(spec["attacks"])
    sea = [spec["sea"]] if spec.get("sea") else []
    rows, values = {}, []
    for m in spec["methods"]:
        per_col: dict[str, list[float]] = {}
        for seed in ev.seeds(m):
            clean = ev.get(m, seed, "clean", 0, 0)
            recs = headline_records(ev, spec, m, seed, attacks + sea)
            wc_recs = headline_records(ev, spec, m, seed, _worst_case_settings(spec))
            wc_miou, _, _ = worst_case_of(wc_recs, spec.get("worst_case_rule", "miou"))
            model_vals = {"clean": clean.miou if clean else math.nan,
                          **{r.setting: r.miou for r in recs}, WORST: wc_miou}
            values.append({"method": m, "seed": seed, **model_vals})
            for k, v in model_vals.items():
                per_col.setdefault(k, []).append(v)
        rows[m] = {c: fmt_cell(per_col.get(c, [])) for c in ["clean", *attacks, *sea, WORST]}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table, pd.DataFrame(values)


def sea_table(ev: Evals, spec: dict) -> pd.DataFrame:
    """SEA per method: how often each loss was the per-image worst, each loss alone, and SEA + others.

    "SEA" is SEA's own per-image choice (lowest pixel accuracy over its
    components), as the paper reports it. "SEA + EroSeg" and "EroSeg lowers
    SEA by (points)" use one rule, ``worst_case_rule``, on one pool: the
    worst case over SEA's choice and its components ("SEA (worst-case rule)")
    against the worst case over the same pool plus the ``sea_plus`` settings,
    so the difference is exactly 0 when those settings add nothing that SEA
    does not already have.
    """
    rows = []
    others = [a for a in spec.get("worst_case") or spec["attacks"] if a != spec["sea"]]
    eroseg = spec.get("sea_plus") or []
    rule = spec.get("worst_case_rule", "miou")
    for m in spec["methods"]:
        for seed in ev.seeds(m):
            (sea,) = headline_records(ev, spec, m, seed, [spec["sea"]])
            row = {"method": m, "seed": seed, "SEA": sea.miou * 100}
            comp = sea.components
            if comp:
                acc = np.stack([np.nan_to_num(c.pixel_acc, nan=np.inf) for c in comp.values()])
                wins = np.bincount(np.argmin(acc, axis=0), minlength=len(comp))
                for (name, st), w in zip(comp.items(), wins):
                    row[f"{name} alone"] = st.scores()["miou"] * 100
                    row[f"{name} worst on (images)"] = int(w)
            rest = headline_records(ev, spec, m, seed, others)
            row["worst of the other attacks"] = worst_case_of(rest)[0] * 100
            if eroseg:
                with_e = headline_records(ev, spec, m, seed, eroseg)
                row["SEA (worst-case rule)"] = worst_case_of([sea], rule)[0] * 100
                row["SEA + EroSeg"] = worst_case_of([sea, *with_e], rule)[0] * 100
                row["EroSeg lowers SEA by (points)"] = row["SEA (worst-case rule)"] - row["SEA + EroSeg"]
            rows.append(row)
    return pd.DataFrame(rows).set_index(["method", "seed"]).round(2)


def checks_table(ev: Evals, spec: dict) -> pd.DataFrame:
    """Gradient-masking sanity per model (Croce et al. 2024; Athalye et al. 2018).

    Flags: robust mIoU does not fall (weakly) with eps on the ladder; above 1 %
    at eps = 1 (an unbounded attack must destroy every prediction); restarts of
    PGD find more than ``max_restart_gain`` points more than one run.
    """
    ck = spec["checks"]
    rows = []
    for m in spec["methods"]:
        for seed in [s for s in ev.seeds(m) if s in ck.get("seeds", ev.seeds(m))]:
            row: dict = {"method": m, "seed": seed}
            ladder = []
            for eps in ck["eps"]:
                rec = ev.get(m, seed, ck["setting"], eps, ck["steps"])
                if rec is None:
                    raise ValueError(f"checks: no evaluation of {ck['setting']!r} for {m} seed {seed} at eps "
                                     f"{eps_label(eps)}")
                ladder.append(rec.miou * 100)
                row[f"eps {eps_label(eps)}"] = rec.miou * 100
            flags = []
            if any(b > a + 1e-9 for a, b in zip(ladder, ladder[1:])):
                flags.append("mIoU rises with eps")
            if ladder[-1] > 1.0:
                flags.append(f"mIoU {ladder[-1]:.1f} % > 1 % at eps {eps_label(ck['eps'][-1])}")
            rs = ck.get("restarts")
            if rs:
                rec = headline_records(ev, spec, m, seed, [rs])[0]
                one = rec.components.get("restart_0")
                row["PGD 1 run"] = one.scores()["miou"] * 100 if one else math.nan
                row[f"PGD best of {rec.restarts}"] = rec.miou * 100
                gain = row["PGD 1 run"] - row[f"PGD best of {rec.restarts}"]
                row["restart gain (points)"] = gain
                if gain > ck.get("max_restart_gain", 1.0):
                    flags.append(f"restarts gain {gain:.1f} points")
            row["verdict"] = "; ".join(flags) if flags else "ok"
            rows.append(row)
    return pd.DataFrame(rows).set_index(["method", "seed"]).round(2)


def _paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, float, int]:
    seeds = sorted(set(a) & set(b))
    m, _, lo, hi, n = mean_ci([(a[s] - b[s]) * 100 for s in seeds])
    return m, lo, hi, n


def _verdict(lo: float, hi: float, n: int, lower_is_yes: bool) -> str:
    if n < 2 or math.isnan(lo):
        return "too few seeds"
    if (hi < 0) if lower_is_yes else (lo > 0):
        return "yes"
    if (lo > 0) if lower_is_yes else (hi < 0):
        return "no (the opposite holds)"
    return "inconclusive"


def _per_seed(ev: Evals, spec: dict, method: str, setting: str) -> dict[int, float]:
    out = {}
    for seed in ev.seeds(method):
        if setting == "clean":
            rec = ev.get(method, seed, "clean", 0, 0)
            out[seed] = rec.miou if rec else math.nan
        elif setting == WORST:
            recs = headline_records(ev, spec, method, seed, _worst_case_settings(spec))
            out[seed] = worst_case_of(recs, spec.get("worst_case_rule", "miou"))[0]
        elif ":" in setting:  # a component, e.g. "sea:balanced_ce" (one loss of SEA)
            name, part = setting.split(":", 1)
            comp = headline_records(ev, spec, method, seed, [name])[0].components
            if part not in comp:
                raise ValueError(f"claims: {name!r} has no component {part!r}; it has {sorted(comp)}")
            out[seed] = comp[part].scores()["miou"]
        else:
            out[seed] = headline_records(ev, spec, method, seed, [setting])[0].miou
    return out


def claims_table(ev: Evals, spec: dict) -> pd.DataFrame:
    """The paper's claims on the data at hand, as paired differences over seeds (points of mIoU, 95 % CI).

    (a) EroSeg is a stronger attack than each baseline at equal eps and steps:
    difference EroSeg - baseline of the attacked mIoU on each model (negative:
    EroSeg stronger). (b) EroSeg-AT is more robust than each other adversarial
    training method under SEA and under the full worst case (positive: EroSeg-AT
    more robust), and its clean mIoU difference (the cost).
    """
    cl = spec["claims"]
    rows = []
    for m in spec["methods"]:
        for ero, base in cl.get("attack_pairs", []):
            d, lo, hi, n = _paired(_per_seed(ev, spec, m, ero), _per_seed(ev, spec, m, base))
            rows.append({"claim": "(a) EroSeg is the stronger attack", "model": m, "comparison": f"{ero} vs {base}",
                         "difference (points)": d, "CI low": lo, "CI high": hi, "seeds": n,
                         "holds": _verdict(lo, hi, n, lower_is_yes=True)})
    ats = cl.get("eroseg_at") or []
    pairs = [(at, other) for at in ([ats] if isinstance(ats, str) else ats) for other in cl.get("at_baselines", [])]
    for at, other in pairs:
        for what, label in ((spec.get("sea"), "under SEA"), (WORST, "under the worst case"), ("clean", "clean (cost)")):
            if not what:
                continue
            d, lo, hi, n = _paired(_per_seed(ev, spec, at, what), _per_seed(ev, spec, other, what))
            rows.append({"claim": "(b) EroSeg-AT is more robust" if what != "clean" else "(b) clean-accuracy cost",
                         "model": f"{at} vs {other}", "comparison": label, "difference (points)": d,
                         "CI low": lo, "CI high": hi, "seeds": n,
                         "holds": _verdict(lo, hi, n, lower_is_yes=False) if what != "clean" else "–"})
    return pd.DataFrame(rows).set_index(["claim", "model", "comparison"]).round(2)


def sweep_tables(ev: Evals, spec: dict) -> dict[str, pd.DataFrame]:
    """Attack strength versus steps (at the headline eps) and versus eps (at the headline steps) on one model."""
    sw = spec["sweep"]
    df = ev.frame()
    base = df[(df.method == sw["method"]) & (df.setting.isin(sw["attacks"]))].copy()
    order = {a: i for i, a in enumerate(sw["attacks"])}
    h_eps = round(spec["headline"]["eps"] * 255, 3)
    out = {}
    st = base[base.eps_255 == h_eps].pivot_table(index="setting", columns="steps", values="miou", aggfunc="mean")
    st = (st * 100).sort_index(key=lambda ix: ix.map(order))
    st.columns = [f"{c} steps" for c in st.columns]
    out["steps"] = st.round(2)
    ep = base[base.steps == spec["headline"]["steps"]].pivot_table(index="setting", columns="eps_255",
                                                                    values="miou", aggfunc="mean")
    ep = (ep * 100).sort_index(key=lambda ix: ix.map(order))
    ep.columns = [f"eps {c:g}/255" for c in ep.columns]
    out["eps"] = ep.round(2)
    return out


def ablation_table(ev: Evals, spec: dict) -> pd.DataFrame:
    """The EroSeg ablation on one method over its seeds: mIoU and pixel accuracy (%), mean ± std [95 % CI]."""
    ab = spec["ablation"]
    rows = []
    for label, setting in ab["attacks"]:
        recs = [headline_records(ev, spec, ab["method"], s, [setting])[0] for s in ev.seeds(ab["method"])]
        rows.append({"variant": label, "setting": setting, "mIoU": fmt_cell([r.miou for r in recs], digits=2),
                     "pixel acc": fmt_cell([r.pixel_acc for r in recs], digits=2)})
    return pd.DataFrame(rows).set_index("variant")


def tuning_table(paths: list[str]) -> pd.DataFrame:
    """Every tuning candidate of every family: parameters, val mIoU (%) per model and mean, the chosen one marked."""
    from eroseg.io import read_json

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


# ------------------------------------------------------------------------ entry
def aggregate(eval_paths: list[str], spec: dict, out_dir: str | Path,
              tuning_paths: list[str] = (), benchmark_paths: list[str] = ()) -> dict[str, pd.DataFrame]:
    """Build every table from ``eval_paths`` as ``spec`` describes; returns the tables.

    Args:
        eval_paths: evaluation JSON files (:class:`eroseg.evaluate.EvalRecord`).
        spec: ``methods`` (row order); ``headline`` ``{eps, steps}`` (eps in pixel
            units); ``attacks`` (main-table columns, setting labels);
            ``steps_of`` (setting -> its steps at the headline, where not the
            headline steps: FGSM 1, SEA its own count); ``sea`` (the SEA setting's
            label, or None); ``worst_case`` (settings the worst case ranges over,
            SEA added); ``worst_case_rule``; ``sea_plus`` (settings added to
            SEA in the ``sea`` table); optional ``checks``, ``claims``, ``sweep``,
            ``ablation`` (see the table functions).
        out_dir: where tables go.
        tuning_paths: tuning results (``eroseg tune``) for the ``tuning`` table.
        benchmark_paths: Snakemake benchmark files for the ``timings`` table (wall seconds per rule).
    """
    out_dir = Path(out_dir)
    ev = Evals.load(eval_paths)
    if tuning_paths:
        tables_tuning = tuning_table(list(tuning_paths))
        write_table(tables_tuning, out_dir, "tuning", "Tuning on the validation split: mIoU (%) of every candidate "
                    "(lowest mean chosen)", index=False)
    head = spec["headline"]
    h = f"eps {eps_label(head['eps'])}, {head['steps']} steps"
    tables: dict[str, pd.DataFrame] = {"tuning": tables_tuning} if tuning_paths else {}
    results = ev.frame().rename(columns={"miou": "miou (0-1)", "pixel_acc": "pixel_acc (0-1)"})
    tables["results"] = results
    write_table(results, out_dir, "results", "Every evaluation (mIoU and pixel accuracy as fractions 0-1)",
                index=False)
    if benchmark_paths:
        tables["timings"] = timings_table(list(benchmark_paths))
        write_table(tables["timings"], out_dir, "timings", "Wall time (s) per rule: jobs, total, mean and longest job")
    main, values = main_table(ev, spec)
    tables["main"], tables["main_values"] = main, values
    n_seeds = "/".join(str(n) for n in sorted({len(ev.seeds(m)) for m in spec["methods"]}))
    write_table(main, out_dir, "main", f"mIoU (%) clean and under attack, {h} (FGSM: 1 step), best iterate; "
                f"worst case over every attack and SEA's components; mean ± std [95 % CI] over {n_seeds} seeds")
    atomic_write_text(out_dir / "main_values.csv", values.to_csv(index=False))
    builders = {
        "sea": (spec.get("sea"), sea_table, f"SEA per model ({h}): mIoU (%) of each loss alone, images on which "
                                            "each loss was the worst, and SEA with the other attacks"),
        "checks": (spec.get("checks"), checks_table, "Gradient-masking checks: mIoU (%) under APGD at growing eps "
                                                     "and PGD with restarts; verdict per model"),
        "claims": (spec.get("claims"), claims_table, "The paper's claims on this data: paired differences over "
                                                     "seeds, points of mIoU with 95 % CI"),
        "ablation": (spec.get("ablation"), ablation_table,
                     f"EroSeg ablation on `{(spec.get('ablation') or {}).get('method')}` ({h}): mIoU and pixel "
                     "accuracy (%), mean ± std [95 % CI]"),
    }
    for name, (wanted, build, title) in builders.items():
        if wanted:
            tables[name] = build(ev, spec)
            write_table(tables[name], out_dir, name, title)
    if spec.get("sweep"):
        for name, table in sweep_tables(ev, spec).items():
            tables[name] = table
            what = "attack steps" if name == "steps" else "eps"
            write_table(table, out_dir, name, f"mIoU (%) of `{spec['sweep']['method']}` (seed "
                        f"{ev.seeds(spec['sweep']['method'])[0]}) versus {what}")
    return tables
