"""benchmarks/bench_min_norm.py: one row per attack with its time, the settings taken from the config, the table."""

import importlib.util
import math
import sys

import pytest
import torch

from tests.conftest import ROOT, ToyNet, toy_batch

pytest.importorskip("adv_lib", reason="the minnorm extra (adv-lib) is part of the test extra")


def bench_module():
    """The script as a module (registered in ``sys.modules`` first: its dataclass looks its module up there)."""
    spec = importlib.util.spec_from_file_location("bench_min_norm", ROOT / "benchmarks" / "bench_min_norm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = bench_module()


def test_measure_gives_pgd_then_one_row_per_attack_with_positive_times():
    torch.manual_seed(0)
    model = ToyNet().eval()
    images, labels = toy_batch(2, size=16)
    settings = {name: {"norm": norm, "steps": 2} for name, norm in bench.NORM_OF.items()}
    reference = bench.build_attack("pgd", {"eps": 8 / 255, "steps": 2, "step_size": 2 / 255})
    rows = bench.measure(model, images, labels, settings, reference, adv_threshold=0.5)
    assert [row.attack for row in rows] == ["pgd", *bench.NORM_OF]
    assert [row.norm for row in rows] == ["linf", *bench.NORM_OF.values()]
    assert rows[0].ratio_to_pgd == 1.0
    for row in rows:
        assert row.seconds_per_image > 0 and row.ratio_to_pgd > 0
        assert 0 <= row.success_rate <= 1
        assert row.median_norm >= 0 or math.isnan(row.median_norm)
    assert model.training is False


def test_settings_follow_the_config_and_fill_the_attacks_it_does_not_set():
    plan = bench.load_plan(ROOT / "config" / "config.yaml")
    threshold, settings = bench.attack_settings(plan, list(bench.NORM_OF))
    configured = {plan.min_norm_args(s)["attack"]: plan.min_norm_args(s) for s in plan.min_norm["attacks"]}
    first = plan.min_norm_args(next(iter(plan.min_norm["attacks"])))
    assert threshold == first["adv_threshold"]
    for name, kwargs in settings.items():
        expected = configured.get(name, {"steps": first["steps"], "params": {}})
        assert kwargs == {"norm": bench.NORM_OF[name], "steps": expected["steps"], **expected["params"]}


def test_table_prints_linf_norms_in_255ths_and_failures_as_inf():
    rows = [bench.CostRow("pgd", "linf", 0.02, 1.0, 0.25, math.inf),
            bench.CostRow("alma_prox", "linf", 0.1, 5.0, 1.0, 4 / 255),
            bench.CostRow("pdgd", "l2", 0.1, 5.0, 1.0, 1.5)]
    lines = bench.format_table(rows, {"pgd": 10, "alma_prox": 50, "pdgd": None}).splitlines()
    assert lines[1].split() == ["pgd", "linf", "10", "0.020", "1.00", "25%", "inf"]
    assert lines[2].split()[-1] == "4.00/255"
    assert lines[3].split()[2] == "-" and lines[3].split()[-1] == "1.50"
