"""The claims and verdicts tables: the paper's two claims tested on the data at hand.

Each row of ``claims`` is a paired difference of dataset mIoU over seeds and test images with a
Holm-Bonferroni interval per claim; ``verdicts`` counts the models' answers per comparison
(:mod:`eroseg.stats` holds the statistics).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from eroseg import stats
from eroseg.report.evals import WORST, Evals, TableInputs, candidates, headline_records
from eroseg.report.registry import register_table
from eroseg.report.spec import ReportSpec, as_spec

if TYPE_CHECKING:
    from eroseg.metrics import PerImageStats

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
        from eroseg.metrics import miou_of_counts

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


def _per_seed(evals: Evals, spec: ReportSpec, method: str, setting: str) -> dict[int, PerImageStats]:
    """Per-image counts of ``setting`` (``clean``, a setting, ``setting:component`` or the worst case) per seed.

    The worst case keeps the per-image attack choice made on the full test set
    (see :func:`claims_table`).
    """
    from eroseg.metrics import worst_case_stats

    out = {}
    for seed in evals.seeds(method):
        if setting == "clean":
            rec = evals.get(method, seed, "clean", 0, 0)
            if rec is None:
                raise ValueError(f"claims: no clean evaluation of {method} seed {seed}")
            out[seed] = rec.per_image
        elif setting == WORST:
            pool: dict[str, PerImageStats] = {}
            for rec in headline_records(evals, spec, method, seed, spec.worst_case_settings()):
                pool.update(candidates(rec))
            out[seed] = worst_case_stats(pool, rule=spec.worst_case_rule)[0]
        elif ":" in setting:  # a component, e.g. "sea:balanced_ce" (one loss of SEA)
            name, part = setting.split(":", 1)
            comp = headline_records(evals, spec, method, seed, [name])[0].components
            if part not in comp:
                raise ValueError(f"claims: {name!r} has no component {part!r}; it has {sorted(comp)}")
            out[seed] = comp[part]
        else:
            out[seed] = headline_records(evals, spec, method, seed, [setting])[0].per_image
    return out


def _comparisons(spec: ReportSpec) -> list[dict]:
    """The rows of the claims table before any data: claim, model, comparison, the two sides, the sign."""
    claims = spec.claims
    rows = []
    for m in spec.methods:
        for ero, base in claims.get("attack_pairs", []):
            rows.append({"claim": CLAIM_ATTACK, "model": m, "comparison": f"{ero} vs {base}",
                         "a": (m, ero), "b": (m, base), "lower_is_yes": True})
    ats = claims.get("eroseg_at") or []
    ats = [ats] if isinstance(ats, str) else list(ats)
    robust = [(spec.sea, "under SEA"), (WORST, "under the worst case")]
    for claim, settings in ((CLAIM_ROBUST, [r for r in robust if r[0]]), (CLAIM_CLEAN, [("clean", "clean")])):
        for other in claims.get("at_baselines", []):
            for what, label in settings:
                for at in ats:
                    rows.append({"claim": claim, "model": at, "comparison": f"vs {other} {label}",
                                 "a": (at, what), "b": (other, what), "lower_is_yes": False})
    return rows


def claims_table(evals: Evals, spec: ReportSpec | dict) -> pd.DataFrame:
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
    spec = as_spec(spec)
    options = stats.claims_options(spec.claims)
    boot = ImageBootstrap(options["resamples"], options["bootstrap_seed"])
    cache: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    images: dict[tuple[str, str], int] = {}

    def side(method: str, setting: str) -> dict[int, np.ndarray]:
        if (method, setting) not in cache:
            per_seed = _per_seed(evals, spec, method, setting)
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
        adjusted, levels = stats.holm(pvalues, options["alpha"])
        m = int(np.sum(~np.isnan(adjusted)))
        for r, p_adj, level in zip(family, adjusted, levels):
            half = math.nan if math.isnan(level) else stats.t_quantile(level, r["df"]) * r["se"]
            r.update(low=r["estimate"] - half, high=r["estimate"] + half, level=level, p_adj=p_adj,
                     mdd=stats.detectable(r["se"], r["df"], options["alpha"], m, options["min_effect"]))
    out = [{"claim": r["claim"], "model": r["model"], "comparison": r["comparison"],
            "holds": stats.verdict(r["estimate"], r["low"], r["high"], options["min_effect"], r["lower_is_yes"]),
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


def _claims_terms(spec: ReportSpec) -> str:
    """`` (family-wise 0.05), minimum effect 0.5 points``: the claims' error rate and minimum effect."""
    options = stats.claims_options(spec.claims)
    return f" (family-wise {options['alpha']:g}), minimum effect {options['min_effect']:g} points"


def _has_claims(spec: ReportSpec) -> bool:
    return bool(spec.claims)


@register_table("claims", caption="table_claims", enabled=_has_claims,
                title=lambda inputs: "The paper's claims on this data: paired differences (points of mIoU) over seeds "
                                     "and test images; intervals Holm-adjusted per claim" + _claims_terms(inputs.spec))
def claims(inputs: TableInputs) -> pd.DataFrame:
    return claims_table(inputs.evals, inputs.spec)


@register_table("verdicts", caption="table_verdicts", enabled=_has_claims,
                title=lambda inputs: "Verdicts: per claim and comparison, how many models say each"
                                     f"{_claims_terms(inputs.spec)}, and the answer")
def verdicts(inputs: TableInputs) -> pd.DataFrame:
    return verdicts_table(inputs.tables["claims"])
