"""Statistics and verdicts of the tables (eroseg.aggregate, eroseg.stats) on hand-worked numbers."""

import math

import numpy as np
import pandas as pd
import pytest

from eroseg import stats
from eroseg.aggregate import (
    Evals,
    aggregate,
    claims_table,
    fmt_cell,
    main_table,
    mean_ci,
    table_html,
    verdicts_table,
)
from eroseg.evaluate import EvalRecord
from eroseg.metrics import PerImageStats
from eroseg.tune import grid_candidates, tune


def t2_quantile(alpha):
    """Student's t with 2 degrees of freedom in closed form: P(|T| > q) = 1 - q / sqrt(q^2 + 2)."""
    return math.sqrt(2 * (1 - alpha) ** 2 / (1 - (1 - alpha) ** 2))


def test_mean_ci_is_the_t_interval():
    m, sd, lo, hi, n = mean_ci([1.0, 2.0, 3.0])
    # mean 2, sample std 1, t(0.975, 2) = 4.3027: half-width 4.3027 / sqrt(3)
    assert (m, sd, n) == (2.0, 1.0, 3)
    half = t2_quantile(0.05) / math.sqrt(3)
    assert hi - m == pytest.approx(half) and m - lo == pytest.approx(half) and half == pytest.approx(2.4841, abs=1e-4)
    m, sd, lo, hi, n = mean_ci([0.5])
    assert m == 0.5 and n == 1 and math.isnan(sd) and math.isnan(lo)
    assert mean_ci([float("nan"), 1.0, 3.0])[4] == 2


def test_fmt_cell_in_percent():
    assert fmt_cell([0.25]) == "25.0"
    assert fmt_cell([0.1, 0.2, 0.3]) == "20.0 ± 10.0 [-4.8, 44.8]"
    assert fmt_cell([]) == "–"


def test_tuning_picks_the_lowest_mean_and_keeps_grid_values_as_written():
    grid = {"step_size": ["eps/4", "eps/2"], "q0": [0.1, 0.4]}
    assert grid_candidates(grid) == [{"step_size": "eps/4", "q0": 0.1}, {"step_size": "eps/4", "q0": 0.4},
                                     {"step_size": "eps/2", "q0": 0.1}, {"step_size": "eps/2", "q0": 0.4}]
    scores = {("a", "eps/2", 0.4): 0.2, ("b", "eps/2", 0.4): 0.4}  # mean 0.3, lowest
    out = tune({"a": "a", "b": "b"}, lambda m, p: scores.get((m, p["step_size"], p["q0"]), 0.5),
               {"eps": 0.03}, grid)
    assert out["chosen"] == {"step_size": "eps/2", "q0": 0.4}
    assert [c["mean"] for c in out["candidates"]] == pytest.approx([0.5, 0.5, 0.5, 0.3])
    with pytest.raises(ValueError, match="non-empty list"):
        grid_candidates({"q0": []})
    assert np.isfinite(out["candidates"][0]["mean"])


# ------------------------------------------------------------------- claims: the numbers
def test_t_quantile_matches_closed_forms_and_tables():
    assert stats.t_quantile(0.05, 1) == pytest.approx(math.tan(math.pi / 2 * 0.95), rel=1e-9)  # Cauchy
    for alpha in (0.05, 0.01, 0.05 / 12):
        assert stats.t_quantile(alpha, 2) == pytest.approx(t2_quantile(alpha), rel=1e-9)
    assert stats.t_quantile(0.05, 10) == pytest.approx(2.228, abs=1e-3)  # printed tables
    assert stats.t_quantile(0.05, 30) == pytest.approx(2.042, abs=1e-3)
    assert stats.t_quantile(0.05, math.inf) == pytest.approx(1.959964, abs=1e-6)
    # the p-value and the quantile agree, so an interval excludes 0 exactly when p < alpha
    assert stats.t_two_sided_p(stats.t_quantile(0.01, 3.7), 3.7) == pytest.approx(0.01, rel=1e-9)


def test_holm_by_hand():
    # sorted: 0.01 < 0.05/3, 0.02 < 0.05/2, 0.04 < 0.05/1: Holm rejects all three (Bonferroni, 0.05/3: one)
    adjusted, levels = stats.holm([0.02, 0.04, 0.01], 0.05)
    assert adjusted == pytest.approx([0.04, 0.04, 0.03])  # 2*0.02, max(0.04, 1*0.04), 3*0.01
    assert levels == pytest.approx([0.025, 0.05, 0.05 / 3])
    # sorted 0.005, 0.01, 0.03, 0.04: two rejected (0.005 < 0.0125, 0.01 < 0.0167), 0.03 > 0.025 stops;
    # the rest keep the level of the stop; a NaN (row not tested) is left out of m = 4
    adjusted, levels = stats.holm([0.01, 0.04, 0.03, 0.005, math.nan], 0.05)
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(adjusted[4])
    assert levels[:4] == pytest.approx([0.05 / 3, 0.025, 0.025, 0.0125]) and math.isnan(levels[4])
    assert [a < 0.05 for a in adjusted[:4]] == [True, False, False, True]


def test_verdict_needs_the_interval_and_the_minimum_effect():
    v = stats.verdict
    # claim (a): a negative difference (EroSeg's attacked mIoU lower) supports it
    assert v(-2.0, -3.0, -1.0, 0.5, lower_is_yes=True) == stats.YES
    assert v(2.0, 1.0, 3.0, 0.5, lower_is_yes=True) == stats.NO
    # claim (b): a positive difference (EroSeg-AT more robust) supports it
    assert v(2.0, 1.0, 3.0, 0.5, lower_is_yes=False) == stats.YES
    assert v(-2.0, -3.0, -1.0, 0.5, lower_is_yes=False) == stats.NO
    # the interval excludes 0 but the difference is below the minimum effect
    assert v(0.3, 0.1, 0.5, 0.5, lower_is_yes=False) == stats.EQUIVALENT  # and inside +-0.5
    assert v(0.4, 0.1, 0.7, 0.5, lower_is_yes=False) == stats.INCONCLUSIVE  # reaches beyond it
    assert v(0.4, 0.1, 0.7, 0.0, lower_is_yes=False) == stats.YES  # no minimum effect: the interval decides
    assert v(0.0, -0.4, 0.4, 0.5, lower_is_yes=True) == stats.EQUIVALENT
    assert v(0.6, -0.2, 1.4, 0.5, lower_is_yes=True) == stats.INCONCLUSIVE
    assert v(0.6, math.nan, math.nan, 0.5, lower_is_yes=True) == stats.TOO_FEW


def test_detectable_difference_formula():
    # max(min_effect, t_df(1 - alpha / (2 m)) * se): 4 rows, df 2, se 0.2
    assert stats.detectable(0.2, 2, 0.05, 4, 0.5) == pytest.approx(t2_quantile(0.0125) * 0.2)
    assert stats.detectable(0.01, 2, 0.05, 4, 0.5) == 0.5  # never below the minimum effect
    assert math.isnan(stats.detectable(math.nan, 2, 0.05, 4, 0.5))


def test_overall_answer_rule():
    a = stats.overall_answer
    assert a({stats.YES: 6}) == stats.YES
    assert a({stats.YES: 4, stats.INCONCLUSIVE: 2}) == stats.YES
    assert a({stats.YES: 3, stats.INCONCLUSIVE: 3}) == stats.INCONCLUSIVE  # no majority
    assert a({stats.YES: 5, stats.NO: 1}) == stats.MIXED
    assert a({stats.EQUIVALENT: 2, stats.YES: 1}) == stats.EQUIVALENT
    assert a({stats.NO: 2}) == stats.NO


def test_claims_options_fill_defaults_and_name_the_bad_key():
    assert stats.claims_options(None) == {}
    opts = stats.claims_options({"attack_pairs": [["a", "b"]]})
    assert opts == {"attack_pairs": [["a", "b"]], **stats.CLAIMS_DEFAULTS} and opts["min_effect"] == 0.5
    for key, value in (("alpha", 0), ("alpha", 1.5), ("min_effect", -1), ("min_effect", "big"), ("resamples", 10),
                       ("resamples", 1000.5), ("bootstrap_seed", -1), ("bootstrap_seed", True)):
        with pytest.raises(ValueError, match=rf"^config key evaluation\.claims\.{key}: .*expected") as err:
            stats.claims_options({key: value})
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^config key evaluation\.claims: \[1\]; expected a mapping"):
        stats.claims_options([1])


# ------------------------------------------------------------ claims: hand-made records
EPS, CLASSES, IMAGES = 8 / 255, 6, 48
#: Accuracy of each model (method) under each setting; the models' per-seed spread in SEED_SD.
ACCURACY = {
    "standard": {"clean": 0.80, "pgd": 0.40, "eroseg": 0.30, "fgsm": 0.60, "sea": 0.35},
    "pgd_at": {"clean": 0.75, "pgd": 0.60, "eroseg": 0.55, "fgsm": 0.65, "sea": 0.55},
    "eroseg_at": {"clean": 0.755, "pgd": 0.605, "eroseg": 0.555, "fgsm": 0.655, "sea": 0.555},
}
SEED_SD = {"standard": 0.005, "pgd_at": 0.005, "eroseg_at": 0.03}
SEEDS = (0, 1, 2)


def _counts(rng, label, hard, acc):
    """Per-image counts with per-(image, class) accuracy ``acc + hard``; wrong pixels go to the next class."""
    p = np.clip(acc + hard + rng.normal(0, 0.02, size=label.shape), 0.01, 0.99)
    tp = rng.binomial(label, p)
    return PerImageStats(tp, tp + np.roll(label - tp, -1, axis=1), label.copy())


def _record(method, seed, setting, per_image, components=None):
    s = per_image.scores()
    return EvalRecord(method=method, seed=seed, setting=setting, attack="none" if setting == "clean" else setting,
                      attack_params={} if setting == "clean" else {"eps": EPS, "steps": 10}, split="test",
                      checkpoint=f"{method}/seed{seed}/model.pt", classes=None, miou=s["miou"],
                      pixel_acc=s["pixel_acc"], per_class_iou=s["per_class_iou"], per_image=per_image,
                      components=components or {})


def hand_made_records():
    """Three seeds of ``ACCURACY``'s models on one set of test images, plus ``twin``: ``pgd_at`` renamed.

    Images differ in difficulty (the same for every model); SEA has two components, its ``balanced_ce``
    being its own result and ``masked_ce`` one point of accuracy weaker.
    """
    rng = np.random.default_rng(0)
    label = rng.integers(50, 150, size=(IMAGES, CLASSES))
    hard = rng.normal(0, 0.08, size=(IMAGES, CLASSES))
    records = []
    for method, settings in ACCURACY.items():
        for seed in SEEDS:
            shift = rng.normal(0, SEED_SD[method])
            for setting, acc in settings.items():
                st = _counts(rng, label, hard, acc + shift)
                comps = {"masked_ce": _counts(rng, label, hard, acc + shift + 0.01), "balanced_ce": st} \
                    if setting == "sea" else None
                records.append(_record(method, seed, setting, st, comps))
    twins = [_record("twin", r.seed, r.setting, r.per_image, r.components) for r in records if r.method == "pgd_at"]
    return records + twins


def claims_spec(**options):
    return {"methods": [*ACCURACY, "twin"], "headline": {"eps": EPS, "steps": 10}, "attacks": ["fgsm", "pgd", "eroseg"],
            "sea": "sea", "worst_case": ["fgsm", "pgd", "eroseg"], "worst_case_rule": "miou",
            "claims": {"attack_pairs": [["eroseg", "pgd"], ["fgsm", "pgd"], ["eroseg", "sea:masked_ce"]],
                       "eroseg_at": ["eroseg_at", "twin"], "at_baselines": ["pgd_at"], **options}}


@pytest.fixture(scope="module")
def evals():
    records = hand_made_records()
    return Evals(records, [f"record{i}.json" for i in range(len(records))])


@pytest.fixture(scope="module")
def claims(evals):
    return claims_table(evals, claims_spec())


def test_claims_answer_what_the_records_were_made_to_say(claims):
    holds = claims["holds"]
    a, b, clean = "(a) EroSeg is the stronger attack", "(b) EroSeg-AT is more robust", \
        "(b) EroSeg-AT has the higher clean mIoU"
    # a clear difference: 10 points of accuracy lower under EroSeg than PGD on every model
    for m in ACCURACY:
        assert holds[(a, m, "eroseg vs pgd")] == stats.YES
        assert holds[(a, m, "fgsm vs pgd")] == stats.NO  # FGSM is the weaker attack
    # identical models: the twin of pgd_at is equivalent to it, at a difference of exactly 0
    for comparison in ("vs pgd_at under SEA", "vs pgd_at under the worst case"):
        assert holds[(b, "twin", comparison)] == stats.EQUIVALENT
        assert claims.loc[(b, "twin", comparison), "difference (points)"] == 0.0
    assert holds[(clean, "twin", "vs pgd_at clean")] == stats.EQUIVALENT
    # a small difference (+0.5 points of accuracy) under a large seed-to-seed spread: inconclusive
    for comparison in ("vs pgd_at under SEA", "vs pgd_at under the worst case"):
        assert holds[(b, "eroseg_at", comparison)] == stats.INCONCLUSIVE
    assert holds[(clean, "eroseg_at", "vs pgd_at clean")] == stats.INCONCLUSIVE
    assert (claims["seeds"] == 3).all() and (claims["images"] == IMAGES).all()


def test_claim_difference_is_the_mean_over_seeds_of_the_records(evals, claims):
    def miou(method, seed, setting):
        return evals.get(method, seed, setting, EPS, 10).miou

    d = np.mean([miou("pgd_at", s, "eroseg") - miou("pgd_at", s, "pgd") for s in SEEDS]) * 100
    row = claims.loc[("(a) EroSeg is the stronger attack", "pgd_at", "eroseg vs pgd")]
    assert row["difference (points)"] == pytest.approx(d, abs=0.006)
    assert row["CI low"] < row["difference (points)"] < row["CI high"]
    assert row["detectable (points)"] >= 0.5
    # the worst case: as in the main table, model by model
    spec = claims_spec()
    values = main_table(evals, spec)[1].set_index(["method", "seed"])["worst_case"]
    d = np.mean([values[("eroseg_at", s)] - values[("pgd_at", s)] for s in SEEDS]) * 100
    row = claims.loc[("(b) EroSeg-AT is more robust", "eroseg_at", "vs pgd_at under the worst case")]
    assert row["difference (points)"] == pytest.approx(d, abs=0.006)


def test_interval_includes_test_image_sampling():
    """Seeds that agree exactly leave only the test images to vary: the interval is then the image bootstrap's,
    d ± t_{N-1}(0.975) · sd over image resamples of the mIoU difference (here recomputed independently)."""
    rng = np.random.default_rng(3)
    label = rng.integers(50, 150, size=(IMAGES, CLASSES))
    hard = rng.normal(0, 0.08, size=(IMAGES, CLASSES))
    stats_of = {"clean": _counts(rng, label, hard, 0.8), "pgd": _counts(rng, label, hard, 0.5),
                "eroseg": _counts(rng, label, hard, 0.5)}
    records = [_record("copy", seed, s, st) for seed in SEEDS for s, st in stats_of.items()]  # every seed alike
    spec = {"methods": ["copy"], "headline": {"eps": EPS, "steps": 10}, "attacks": ["pgd", "eroseg"],
            "claims": {"attack_pairs": [["eroseg", "pgd"]]}}
    row = claims_table(Evals(records, [""] * len(records)), spec).iloc[0]
    draws = rng.integers(0, IMAGES, size=(2000, IMAGES))

    def miou(st):
        return np.array([st.__class__(st.tp[i], st.pred[i], st.label[i]).scores()["miou"] for i in draws]) * 100

    sd = np.std(miou(stats_of["eroseg"]) - miou(stats_of["pgd"]), ddof=1)
    half = (row["CI high"] - row["CI low"]) / 2
    assert sd > 0.3 and half == pytest.approx(stats.t_quantile(0.05, IMAGES - 1) * sd, rel=0.1)


def test_holm_levels_in_each_claim(claims):
    """Each claim is one family: its rejected rows are tested at alpha/m, alpha/(m-1), ... and the rest at the
    level where Holm stopped; an interval excludes 0 exactly when the Holm-adjusted p-value is below alpha."""
    for claim, family in claims.groupby(level="claim"):
        m = len(family)
        excludes = (family["CI low"] > 0) | (family["CI high"] < 0)
        assert (excludes == (family["p (Holm)"] < 0.05)).all(), claim
        k = int(excludes.sum())
        expected = sorted(100 * (1 - 0.05 / (m - r)) for r in range(k))
        assert sorted(family.loc[excludes, "CI level (%)"]) == pytest.approx(expected, abs=0.006), claim
        if k < m:
            assert family.loc[~excludes, "CI level (%)"].to_numpy() == pytest.approx(100 * (1 - 0.05 / (m - k)),
                                                                                     abs=0.006), claim
    assert len(claims.loc["(a) EroSeg is the stronger attack"]) == 12  # 4 models x 3 pairs: one family


def test_verdicts_do_not_depend_on_the_bootstrap_seed(evals, claims):
    other = claims_table(evals, claims_spec(bootstrap_seed=12345))
    assert (other["holds"] == claims["holds"]).all()
    assert (other["difference (points)"] == claims["difference (points)"]).all()  # the estimate is exact
    width = claims["CI high"] - claims["CI low"]
    assert ((other["CI high"] - other["CI low"]) - width).abs().max() <= 0.05 * width.max()
    counted = ["models", "yes", "no", "equivalent", "inconclusive", "answer"]
    assert verdicts_table(other)[counted].equals(verdicts_table(claims)[counted])


def test_minimum_effect_changes_the_verdicts(evals):
    """A minimum effect larger than every difference leaves no yes or no; none lets the interval decide."""
    huge = claims_table(evals, claims_spec(min_effect=50.0))
    assert not huge["holds"].isin([stats.YES, stats.NO]).any()
    assert (huge["detectable (points)"] == 50.0).all()


def test_verdicts_table_counts_models_and_answers():
    idx = pd.MultiIndex.from_tuples([("(a)", m, c) for c in ("x vs y", "x vs z") for m in ("m1", "m2", "m3")],
                                    names=["claim", "model", "comparison"])
    claims = pd.DataFrame({"difference (points)": [-2.0, -1.5, 0.1, 1.0, -1.0, 0.2],
                           "detectable (points)": [0.8, 0.9, 1.2, 0.7, 0.7, 0.6],
                           "holds": [stats.YES, stats.YES, stats.INCONCLUSIVE, stats.NO, stats.YES,
                                     stats.EQUIVALENT]}, index=idx)
    v = verdicts_table(claims)
    assert list(v.index) == [("(a)", "x vs y"), ("(a)", "x vs z")]
    xy, xz = v.loc[("(a)", "x vs y")], v.loc[("(a)", "x vs z")]
    assert (xy["models"], xy["yes"], xy["no"], xy["equivalent"], xy["inconclusive"]) == (3, 2, 0, 0, 1)
    assert xy["answer"] == stats.YES and xy["detectable (points)"] == 1.2
    assert xy["differences (points)"] == "-2.00 to +0.10"
    assert xz["answer"] == stats.MIXED and (xz["yes"], xz["no"], xz["equivalent"]) == (1, 1, 1)
    assert "too few seeds" not in v.columns


def test_aggregate_writes_claims_and_verdicts(evals, tmp_path):
    paths = []
    for i, rec in enumerate(evals.records):
        rec.write(tmp_path / "evals" / f"{i}.json")
        paths.append(str(tmp_path / "evals" / f"{i}.json"))
    tables = aggregate(paths, claims_spec(), tmp_path / "tables")
    v = pd.read_csv(tmp_path / "tables" / "verdicts.csv")
    assert list(v.columns[:4]) == ["claim", "comparison", "answer", "models"]  # the answer before the counts
    c = pd.read_csv(tmp_path / "tables" / "claims.csv")
    assert list(c.columns[:4]) == ["claim", "model", "comparison", "holds"]  # each verdict beside its row's name
    assert len(v) == 3 + 2 + 1  # three attack pairs; SEA and worst case; clean
    row = v[(v.claim == "(a) EroSeg is the stronger attack") & (v.comparison == "eroseg vs pgd")].iloc[0]
    assert (row["models"], row["yes"], row["answer"]) == (4, 4, stats.YES)
    assert "Holm" in (tmp_path / "tables" / "claims.md").read_text().splitlines()[0]
    assert "<table" in (tmp_path / "tables" / "verdicts.html").read_text()
    assert tables["verdicts"].equals(verdicts_table(tables["claims"]))


def test_main_table_shows_the_robust_columns_first_and_intervals_on_a_second_line(evals, tmp_path):
    """At a laptop's width the report must show worst case and SEA without scrolling: they come right after
    clean, each cell's interval goes under its mean, headers may break after an underscore; the CSV keeps
    one cell per value, and the per-model values keep their order."""
    spec = claims_spec()
    table, values = main_table(evals, spec)
    assert list(table.columns) == ["clean", "worst_case", "sea", "fgsm", "pgd", "eroseg"]
    assert list(values.columns) == ["method", "seed", "clean", "fgsm", "pgd", "eroseg", "sea", "worst_case"]
    html_text = table_html(table)
    cell = table.loc["pgd_at", "worst_case"]
    mean, interval = cell.split(" [")
    assert f'<span class="m">{mean}</span><br><span class="ci">[{interval}</span>' in html_text
    assert "worst_<wbr>case" in html_text and ">method<" in html_text
    assert table_html(pd.DataFrame({"a<b": ["x & y"]}), index=False).count("&lt;") == 1  # escaped
