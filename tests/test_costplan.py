"""The cost plan (eroseg.costplan): work counted from the config, device-hours from per-image seconds."""

from __future__ import annotations

import pytest

from eroseg.costplan import (
    StepSeconds,
    benchmark,
    evaluation_work,
    format_plan,
    load_plan,
    split_sizes,
    training_attack_steps,
    training_work,
    validation_work,
)
from eroseg.training.config import TrainConfig
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def tests_plan():
    return load_plan(ROOT / "config" / "tests.yaml")


def test_evaluation_work_counts_every_setting_of_every_model(tests_plan):
    work = {model: rest for model, *rest in evaluation_work(tests_plan)}
    assert sorted(work) == sorted(f"{m}/seed{s}" for m in tests_plan.methods for s in tests_plan.seeds)
    images, forwards, steps = work["standard/seed0"]
    settings = tests_plan.evaluation_settings("standard", 0)
    assert images == 16 and forwards == len(settings)
    # pgd_restarts (2 restarts of 3 steps) counts 6; fgsm 1; clean 0
    per_setting = [(i["setting"], int(i.get("params", {}).get("steps", 0)) * int(i.get("restarts", 1)))
                   for i in settings]
    assert ("pgd_restarts", 6) in per_setting and ("fgsm", 1) in per_setting and ("clean", 0) in per_setting
    assert steps == sum(n for _, n in per_setting)
    assert work["standard/seed1"][2] < steps  # the sweep and ablation run on seed 0 only


def test_sea_counts_its_iterations_once_per_loss(tmp_path):
    config = (ROOT / "config" / "tests.yaml").read_text().replace(
        "    fgsm: {attack: fgsm}\n", "    fgsm: {attack: fgsm}\n    sea: {attack: sea, steps: 5}\n").replace(
        "  headline: {eps: 8/255, steps: 3}\n", "  headline: {eps: 8/255, steps: 3}\n  sea: sea\n")
    (tmp_path / "sea.yaml").write_text(config)
    with_sea = {m: s for m, _, _, s in evaluation_work(load_plan(tmp_path / "sea.yaml"))}
    without = {m: s for m, _, _, s in evaluation_work(load_plan(ROOT / "config" / "tests.yaml"))}
    assert all(with_sea[m] - without[m] == 4 * 5 for m in without)


def test_split_sizes_take_the_tune_list_out_of_training():
    plan = load_plan(ROOT / "config" / "cityscapes.yaml")
    sizes = split_sizes(plan)
    assert sizes["tune"] == plan.dataset["tune_size"] == 200 and sizes["train"] == 2975 - 200 and sizes["val"] == 500
    models, images, _ = training_work(plan)
    assert images == 2775 and models == len(plan.trained) * len(plan.seeds)


def test_format_plan_prices_the_counted_work(tests_plan):
    text = format_plan(tests_plan, StepSeconds(attack_step=3600.0, forward=0.0, train_step=0.0))
    work = evaluation_work(tests_plan)
    hours = sum(n * s for _, n, _, s in work)  # one hour per image attack step
    line = next(line for line in text.splitlines() if line.startswith("evaluate:"))
    assert line.startswith(f"evaluate: {len(work)} models x 16 images x (clean + ")
    assert f"= {hours:,.2f} device-hours ({hours * 3600:,.0f} s); {len(work)} jobs" in line


def test_sharded_plan_says_shards_and_merges(tmp_path):
    config = (ROOT / "config" / "tests.yaml").read_text().replace("  batch_size: 16\n  attacks:",
                                                                  "  batch_size: 16\n  shards: 4\n  attacks:")
    (tmp_path / "sharded.yaml").write_text(config)
    text = format_plan(load_plan(tmp_path / "sharded.yaml"), StepSeconds(1.0, 1.0, 1.0))
    assert "; 24 jobs (4 shards per model) + 6 merges" in text


def test_benchmark_measures_the_configured_model_here(tests_plan):
    seconds = benchmark(tests_plan, device="cpu", repeats=1)
    values = (seconds.forward, seconds.attack_step, seconds.train_step, seconds.job_start)
    assert all(0 < value < 60 for value in values), seconds


def test_training_counts_the_adversarial_share_and_the_validation(tests_plan):
    train = tests_plan.config["train"]
    epochs, share = int(train["epochs"]), float(train.get("adv_fraction", TrainConfig.adv_fraction))
    expected = 0.0
    for method in tests_plan.trained:  # the attack on the adversarial share; TRADES's own steps on every image
        attack, params = tests_plan.training_attack(method)
        objective = tests_plan.training_objective(method)
        per_epoch = share * int(params["steps"]) if attack else int(objective.get("steps") or 0)
        expected += len(tests_plan.seeds) * epochs * per_epoch
    assert training_attack_steps(tests_plan) == pytest.approx(expected) and expected > 0
    assert "trades_at" in tests_plan.trained and tests_plan.training_objective("trades_at")["steps"] > 0
    forwards, steps = validation_work(tests_plan)
    every = int(train.get("val_every") or 1)
    checks = len(set(range(every, epochs + 1, every)) | {epochs})
    models = len(tests_plan.trained) * len(tests_plan.seeds)
    val_images = split_sizes(tests_plan)[tests_plan.dataset["val_split"]]
    robust_images = min(val_images, int(train.get("val_robust_images") or 0))
    assert forwards == models * checks * val_images
    assert steps == models * checks * robust_images * int(train.get("val_robust_steps") or 0)
