"""Statistics and verdicts of the tables (eroseg.aggregate) on hand-worked numbers."""

import math

import numpy as np
import pytest

from eroseg.aggregate import _verdict, fmt_cell, mean_ci
from eroseg.tune import grid_candidates, tune


def test_mean_ci_is_the_t_interval():
    m, sd, lo, hi, n = mean_ci([1.0, 2.0, 3.0])
    # mean 2, sample std 1, t(0.975, 2) = 4.303: half-width 4.303 / sqrt(3)
    assert (m, sd, n) == (2.0, 1.0, 3)
    assert hi - m == pytest.approx(4.303 / math.sqrt(3)) and m - lo == pytest.approx(4.303 / math.sqrt(3))
    m, sd, lo, hi, n = mean_ci([0.5])
    assert m == 0.5 and n == 1 and math.isnan(sd) and math.isnan(lo)
    assert mean_ci([float("nan"), 1.0, 3.0])[4] == 2


def test_fmt_cell_in_percent():
    assert fmt_cell([0.25]) == "25.0"
    assert fmt_cell([0.1, 0.2, 0.3]) == "20.0 ± 10.0 [-4.8, 44.8]"
    assert fmt_cell([]) == "–"


def test_verdict_reads_the_interval_the_right_way():
    # claim (a): a negative difference (EroSeg's attacked mIoU lower) supports it
    assert _verdict(-3.0, -1.0, 3, lower_is_yes=True) == "yes"
    assert _verdict(1.0, 3.0, 3, lower_is_yes=True) == "no (the opposite holds)"
    assert _verdict(-1.0, 1.0, 3, lower_is_yes=True) == "inconclusive"
    # claim (b): a positive difference (EroSeg-AT more robust) supports it
    assert _verdict(1.0, 3.0, 3, lower_is_yes=False) == "yes"
    assert _verdict(-3.0, -1.0, 3, lower_is_yes=False) == "no (the opposite holds)"
    assert _verdict(float("nan"), float("nan"), 1, lower_is_yes=False) == "too few seeds"


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
