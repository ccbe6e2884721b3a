"""Tables from evaluation records: CSV for machines, Markdown and HTML for people.

Aggregation never loads a model or attacks anything: worst cases over attacks
are recomputed from the per-image counts that every evaluation keeps. Every
number in the tables is in percent (mIoU, pixel accuracy, differences in
points), except ``results.csv``, whose ``miou`` and ``pixel_acc`` columns are
fractions in [0, 1] as the evaluation records store them (its header says so).

Tables (each written as ``<name>.csv``, ``<name>.md`` and ``<name>.html``):

- ``results``: one row per evaluation (long form).
- ``main``: methods x attack settings at the headline eps and steps: clean
  first, then the worst case over all of them and SEA (the robust numbers),
  then each attack; mean ± std over seeds with a 95 % confidence interval.
- ``sea``: per method, SEA's components: how often each was the per-image
  worst (pixel accuracy) and each one's mIoU alone; SEA alone, the other
  attacks' worst case, and SEA + EroSeg.
- ``checks``: gradient-masking sanity per model: APGD at an eps ladder up to
  eps = 1, random restarts of PGD; flags what fails.
- ``claims``: the paper's two claims as paired differences over seeds and test
  images, with Holm-Bonferroni intervals per claim, a minimum effect and the
  minimum detectable difference of each row.
- ``verdicts``: per claim and comparison, how many models say yes / no /
  equivalent / inconclusive, and the overall answer.
- ``steps`` / ``eps``: attack strength versus steps and eps on one model.
- ``ablation``: the EroSeg ablation over seeds.
"""

from __future__ import annotations

import html
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from eroseg import stats
from eroseg.evaluate import EvalRecord
from eroseg.io import atomic_write_text
from eroseg.metrics import PerImageStats, miou_of_counts, worst_case_stats
from eroseg.numbers import eps_label

log = logging.getLogger(__name__)

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
#: A cell of :func:`fmt_cell`: ``"31.6 ± 0.4 [30.6, 32.6]"``.
_WITH_INTERVAL = re.compile(r"^(.*\S) (\[[^\[\]]*\])$")

#: Style of the HTML tables, standalone and (the same rules) inlined on the report's landing page
#: (``workflow/report/workflow.rst``): text wraps at spaces, a mean ± std never, its interval on a
#: second line, headers also after an underscore, so that a wide table fits a laptop's width.
TABLE_STYLE = ("table{border-collapse:collapse;font:13px sans-serif}"
               "td,th{padding:2px 6px;text-align:right;vertical-align:top;border-bottom:1px solid #ddd}"
               "thead th{vertical-align:bottom}td:first-child,th:first-child{text-align:left}"
               ".m,.ci{white-space:nowrap}.ci{color:#666;font-size:90%}")


def _html_cell(value) -> str:
    """A cell for the HTML table: escaped; ``mean ± std [low, high]`` as the mean line over the interval line."""
    text = html.escape(str(value))
    m = _WITH_INTERVAL.match(text)
    return f'<span class="m">{m.group(1)}</span><br><span class="ci">{m.group(2)}</span>' if m else text


def _html_header(name) -> str:
    """A column header that may break after an underscore (``worst_case``, ``apgd_eroseg``)."""
    return html.escape(str(name)).replace("_", "_<wbr>")


def table_html(df: pd.DataFrame, index: bool = True) -> str:
    """``df`` as an HTML table with the same values as its CSV (see :data:`TABLE_STYLE` for the layout)."""
    out = df.reset_index() if index and df.index.name else df.copy()  # a named index: a column, no extra header row
    index = index and not df.index.name
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]) or pd.api.types.is_bool_dtype(out[col]):
            out[col] = out[col].map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v))
                                    else _html_cell(v))
    out.columns = [_html_header(c) for c in out.columns]
    if index:
        out.index = out.index.map(_html_cell)
        out.index.names = [None if n is None else _html_header(n) for n in out.index.names]
    return out.to_html(index=index, na_rep="–", border=0, classes="eroseg-table", escape=False)


def write_table(df: pd.DataFrame, out_dir: Path, name: str, title: str, index: bool = True) -> None:
    """Write ``<name>.csv``, ``.md`` (titled) and ``.html`` (titled, for the report; see :func:`table_html`)."""
    if index and isinstance(df.index, pd.MultiIndex):  # one column per level, not tuples
        df, index = df.reset_index(), False
    atomic_write_text(out_dir / f"{name}.csv", df.to_csv(index=index))
    atomic_write_text(out_dir / f"{name}.md", f"## {title}\n\n{df.to_markdown(index=index)}\n")
    atomic_write_text(out_dir / f"{name}.html",
                      f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                      f"<style>{TABLE_STYLE}</style></head>"
                      f"<body><h3>{html.escape(title)}</h3>{table_html(df, index)}</body></html>\n")


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
    """Methods x (clean, worst case, SEA, attacks): formatted cells; per-model values (fractions), worst case last."""
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
        # The robust columns (worst case, SEA) right after clean, so that they are seen first on a narrow page.
        rows[m] = {c: fmt_cell(per_col.get(c, [])) for c in ["clean", WORST, *sea, *attacks]}
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


# ----------------------------------------------------------------------- claims
CLAIM_ATTACK = "(a) EroSeg is the stronger attack"
CLAIM_ROBUST = "(b) EroSeg-AT is more robust"
CLAIM_CLEAN = "(b) EroSeg-AT has the higher clean mIoU"


class ImageBootstrap:
    """Resamples of the test images, shared by every model and attack, and each side's mIoU on them.

    Every model is evaluated on the same test images, so one resample of them
    (``resamples`` draws of ``N`` images with replacement, fixed by ``seed``)
    applies to every seed and both sides of a comparison: the pairing by seed
    and image. A side's dataset mIoU on a resample is recomputed from the summed
    per-image counts, which is how the evaluation computed it on the full set.
    """

    def __init__(self, resamples: int, seed: int):
        self.resamples, self.seed = int(resamples), int(seed)
        self._weights: dict[int, np.ndarray] = {}

    def weights(self, n_images: int) -> np.ndarray:
        """``[resamples, N]``: how often each image is drawn in each resample."""
        if n_images not in self._weights:
            rng = np.random.default_rng(self.seed)
            self._weights[n_images] = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images),
                                                      size=self.resamples).astype(np.float64)
        return self._weights[n_images]

    def miou(self, st: PerImageStats) -> np.ndarray:
        """mIoU (points) on the full test set, then on each resample: ``[1 + resamples]``."""
        w = self.weights(st.tp.shape[0])
        full = miou_of_counts(st.tp.sum(0), st.pred.sum(0), st.label.sum(0))
        with np.errstate(invalid="ignore"):
            resampled = miou_of_counts(w @ st.tp, w @ st.pred, w @ st.label)
        return np.concatenate([[full], resampled]) * 100


def _paired(a: dict[int, np.ndarray], b: dict[int, np.ndarray], images: int) -> dict:
    """Paired difference ``a - b`` (points) over the seeds both sides have, with its standard error.

    ``a[seed]`` and ``b[seed]`` are :meth:`ImageBootstrap.miou` vectors. The
    estimate is the mean over seeds of the full-set differences. Its variance
    has two parts: between seeds, ``var(d_s) / S`` (Student, ``S - 1`` degrees
    of freedom), and from the choice of test images, the variance over image
    resamples of the mean over seeds. Their sum gives the standard error, and
    Welch-Satterthwaite the degrees of freedom (``S - 1`` when seeds dominate,
    ``N - 1`` when images do).
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return {"estimate": math.nan, "se": math.nan, "df": math.nan, "seeds": 0, "images": images}
    d = np.stack([a[s] - b[s] for s in seeds])  # [S, 1 + resamples]
    full, n = d[:, 0], len(seeds)
    if n < 2:
        return {"estimate": float(full[0]), "se": math.nan, "df": math.nan, "seeds": 1, "images": images}
    var_seed = float(full.var(ddof=1)) / n
    var_images = float(np.nanmean(d[:, 1:], axis=0).var(ddof=1))
    return {"estimate": float(full.mean()), "se": math.sqrt(var_seed + var_images),
            "df": stats.welch_df(var_seed, n, var_images, images), "seeds": n, "images": images}


def _per_seed(ev: Evals, spec: dict, method: str, setting: str) -> dict[int, PerImageStats]:
    """Per-image counts of ``setting`` (``clean``, a setting, ``setting:component`` or the worst case) per seed.

    The worst case keeps the per-image attack choice made on the full test set
    (see :func:`claims_table`).
    """
    out = {}
    for seed in ev.seeds(method):
        if setting == "clean":
            rec = ev.get(method, seed, "clean", 0, 0)
            if rec is None:
                raise ValueError(f"claims: no clean evaluation of {method} seed {seed}")
            out[seed] = rec.per_image
        elif setting == WORST:
            pool: dict[str, PerImageStats] = {}
            for rec in headline_records(ev, spec, method, seed, _worst_case_settings(spec)):
                pool.update(candidates(rec))
            out[seed] = worst_case_stats(pool, rule=spec.get("worst_case_rule", "miou"))[0]
        elif ":" in setting:  # a component, e.g. "sea:balanced_ce" (one loss of SEA)
            name, part = setting.split(":", 1)
            comp = headline_records(ev, spec, method, seed, [name])[0].components
            if part not in comp:
                raise ValueError(f"claims: {name!r} has no component {part!r}; it has {sorted(comp)}")
            out[seed] = comp[part]
        else:
            out[seed] = headline_records(ev, spec, method, seed, [setting])[0].per_image
    return out


def _comparisons(spec: dict) -> list[dict]:
    """The rows of the claims table before any data: claim, model, comparison, the two sides, the sign."""
    cl = spec["claims"]
    rows = []
    for m in spec["methods"]:
        for ero, base in cl.get("attack_pairs", []):
            rows.append({"claim": CLAIM_ATTACK, "model": m, "comparison": f"{ero} vs {base}",
                         "a": (m, ero), "b": (m, base), "lower_is_yes": True})
    ats = cl.get("eroseg_at") or []
    ats = [ats] if isinstance(ats, str) else list(ats)
    robust = [(spec.get("sea"), "under SEA"), (WORST, "under the worst case")]
    for claim, settings in ((CLAIM_ROBUST, [r for r in robust if r[0]]), (CLAIM_CLEAN, [("clean", "clean")])):
        for other in cl.get("at_baselines", []):
            for what, label in settings:
                for at in ats:
                    rows.append({"claim": claim, "model": at, "comparison": f"vs {other} {label}",
                                 "a": (at, what), "b": (other, what), "lower_is_yes": False})
    return rows


def claims_table(ev: Evals, spec: dict) -> pd.DataFrame:
    """The paper's claims on the data at hand: paired differences over seeds and test images, Holm-adjusted.

    (a) EroSeg is a stronger attack than each baseline at equal eps and steps:
    the difference EroSeg - baseline of the attacked mIoU on each model
    (negative: EroSeg stronger). (b) EroSeg-AT is more robust than each other
    adversarial training method under SEA and under the full worst case
    (positive: EroSeg-AT more robust), and (b, clean) its clean mIoU is higher
    (positive), the cost of its robustness.

    Each row pairs the two sides by seed and test image. Its standard error adds
    the between-seed variance of the per-seed differences (Student's t: three
    seeds are too few to bootstrap, as a resample of three values takes only 10
    distinct values and its percentile interval is about a third as wide as the
    t-interval) and the variance over ``resamples`` bootstrap resamples of the
    test images, the same resample for every seed and both sides (see
    :class:`ImageBootstrap`; ``bootstrap_seed`` fixes them); Welch-Satterthwaite
    gives the degrees of freedom. The worst case keeps, on each resample, the
    per-image attack choice made on the full test set: under SEA's pixel
    accuracy rule that choice does not depend on which images are drawn, and
    rerunning the ``miou`` rule's coordinate descent on 200 resamples of
    hand-made records moved a resample's worst case by at most 0.014 points and
    its spread by under 0.001, at about 7 ms a descent (over 10 minutes for
    every resample of every model). The estimate itself is exact.

    The rows of each claim (every model and comparison of (a); (b) under SEA
    and the worst case; (b) clean) form one family: Holm-Bonferroni at
    family-wise level ``alpha`` gives each row its level, and the interval
    ``d ± t_df(1 - level / 2) · se`` excludes 0 exactly when Holm rejects.
    Verdicts follow :func:`eroseg.stats.verdict` with ``min_effect``, and
    ``detectable`` is :func:`eroseg.stats.detectable`.

    Args:
        spec: ``claims``: ``attack_pairs``, ``eroseg_at``, ``at_baselines``,
            and ``alpha``, ``min_effect`` (points), ``resamples``,
            ``bootstrap_seed`` (defaults: :data:`eroseg.stats.CLAIMS_DEFAULTS`).
    """
    cl = stats.claims_options(spec["claims"])
    boot = ImageBootstrap(cl["resamples"], cl["bootstrap_seed"])
    cache: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    images: dict[tuple[str, str], int] = {}

    def side(method: str, setting: str) -> dict[int, np.ndarray]:
        if (method, setting) not in cache:
            per_seed = _per_seed(ev, spec, method, setting)
            cache[(method, setting)] = {s: boot.miou(st) for s, st in per_seed.items()}
            images[(method, setting)] = {st.tp.shape[0] for st in per_seed.values()}
        return cache[(method, setting)]

    rows = []
    for row in _comparisons(spec):
        a, b = side(*row["a"]), side(*row["b"])
        n = images[row["a"]] | images[row["b"]]
        if len(n) > 1:
            raise ValueError(f"claims: {row['model']} {row['comparison']}: the evaluations cover different numbers "
                             f"of test images ({sorted(n)}); evaluate every model on the same images")
        rows.append({**row, **_paired(a, b, n.pop() if n else 0)})
    for claim in dict.fromkeys(r["claim"] for r in rows):
        family = [r for r in rows if r["claim"] == claim]
        pvalues = [stats.p_value(r["estimate"], r["se"], r["df"]) for r in family]
        adjusted, levels = stats.holm(pvalues, cl["alpha"])
        m = int(np.sum(~np.isnan(adjusted)))
        for r, p_adj, level in zip(family, adjusted, levels):
            half = math.nan if math.isnan(level) else stats.t_quantile(level, r["df"]) * r["se"]
            r.update(low=r["estimate"] - half, high=r["estimate"] + half, level=level, p_adj=p_adj,
                     mdd=stats.detectable(r["se"], r["df"], cl["alpha"], m, cl["min_effect"]))
    out = [{"claim": r["claim"], "model": r["model"], "comparison": r["comparison"],
            "holds": stats.verdict(r["estimate"], r["low"], r["high"], cl["min_effect"], r["lower_is_yes"]),
            "difference (points)": r["estimate"], "CI low": r["low"], "CI high": r["high"],
            "CI level (%)": 100 * (1 - r["level"]), "p (Holm)": r["p_adj"],
            "detectable (points)": r["mdd"], "seeds": r["seeds"], "images": r["images"]}
           for r in rows]
    digits = {"difference (points)": 2, "CI low": 2, "CI high": 2, "CI level (%)": 2, "p (Holm)": 4,
              "detectable (points)": 2}
    return pd.DataFrame(out).set_index(["claim", "model", "comparison"]).round(digits)


def verdicts_table(claims: pd.DataFrame) -> pd.DataFrame:
    """One row per claim and comparison: how many models give each verdict, and the overall answer.

    The overall answer (:func:`eroseg.stats.overall_answer`): "mixed" when some
    models say yes and others no, else the verdict of more than half of the
    models, else inconclusive. ``differences`` is the range of the models'
    paired differences; ``detectable`` the largest minimum detectable difference
    among them: a true difference at least that large would be called on every model.
    """
    df = claims.reset_index()
    short = {stats.YES: "yes", stats.NO: "no", stats.EQUIVALENT: "equivalent", stats.INCONCLUSIVE: "inconclusive",
             stats.TOO_FEW: "too few seeds"}
    rows = []
    for (claim, comparison), group in df.groupby(["claim", "comparison"], sort=False):
        counts = group["holds"].value_counts().to_dict()
        d = group["difference (points)"]
        rows.append({"claim": claim, "comparison": comparison, "answer": stats.overall_answer(counts),
                     "models": len(group), **{name: int(counts.get(v, 0)) for v, name in short.items()},
                     "differences (points)": f"{d.min():+.2f} to {d.max():+.2f}" if len(d) > 1 else f"{d.iloc[0]:+.2f}",
                     "detectable (points)": round(float(group["detectable (points)"].max()), 2)})
    out = pd.DataFrame(rows).set_index(["claim", "comparison"])
    if not out["too few seeds"].any():
        out = out.drop(columns="too few seeds")
    return out


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
            SEA in the ``sea`` table); optional ``checks``, ``claims`` (with it the
            ``verdicts`` table too), ``sweep``, ``ablation`` (see the table functions).
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
    claims = stats.claims_options(spec.get("claims"))
    claims_terms = (f" (family-wise {claims['alpha']:g}), minimum effect {claims['min_effect']:g} points"
                    if claims else "")
    builders = {
        "sea": (spec.get("sea"), sea_table, f"SEA per model ({h}): mIoU (%) of each loss alone, images on which "
                                            "each loss was the worst, and SEA with the other attacks"),
        "checks": (spec.get("checks"), checks_table, "Gradient-masking checks: mIoU (%) under APGD at growing eps "
                                                     "and PGD with restarts; verdict per model"),
        "claims": (spec.get("claims"), claims_table,
                   f"The paper's claims on this data: paired differences (points of mIoU) over seeds and test images; "
                   f"intervals Holm-adjusted per claim{claims_terms}"),
        "ablation": (spec.get("ablation"), ablation_table,
                     f"EroSeg ablation on `{(spec.get('ablation') or {}).get('method')}` ({h}): mIoU and pixel "
                     "accuracy (%), mean ± std [95 % CI]"),
    }
    for name, (wanted, build, title) in builders.items():
        if wanted:
            tables[name] = build(ev, spec)
            write_table(tables[name], out_dir, name, title)
    if claims:
        tables["verdicts"] = verdicts_table(tables["claims"])
        write_table(tables["verdicts"], out_dir, "verdicts",
                    f"Verdicts: per claim and comparison, how many models say each{claims_terms}, and the answer")
    if spec.get("sweep"):
        for name, table in sweep_tables(ev, spec).items():
            tables[name] = table
            what = "attack steps" if name == "steps" else "eps"
            write_table(table, out_dir, name, f"mIoU (%) of `{spec['sweep']['method']}` (seed "
                        f"{ev.seeds(spec['sweep']['method'])[0]}) versus {what}")
    return tables
