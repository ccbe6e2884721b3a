"""Benchmark of the minimal-norm attacks: seconds per image of each, beside a 10-step PGD, on the CPU.

Runs every attack wrapped by :mod:`eroseg.minnorm` (``alma_prox``, ``pdpgd``
and ``dag`` in Linf, ``pdgd`` in L2) on the same batch of test images of a
trained checkpoint, and, as the reference, the project's ``pgd`` at the
headline budget (8/255, 10 steps, the config's step size). Settings come from
the config (default ``config/config.yaml``): the ``evaluation.min_norm``
block's ``adv_threshold`` and the steps and parameters of its setting of the
same attack where it has one; an attack the config does not set runs with the
same steps as the first setting (50 in the default) and adv-lib's own
parameters. Prints, per attack: seconds per image, the ratio to PGD-10 per
image, the success rate (share of images with at least ``adv_threshold`` of
the valid pixels fooled, checked by our own forward pass) and the median
minimal norm (failures counted as infinite, as in the ``min_norm`` table;
Linf in /255). The PGD row's success and norm use the same check on PGD's
output.

Method: a warm-up call of every attack (2 images, 2 steps) first, so that
imports, adv-lib's first call and the allocator are not counted; then each
attack once on the whole batch, each preceded by one PGD-10 call on the same
batch; a ratio divides an attack's time by the PGD call just before it (on a
shared machine, the pairs see the same load). The PGD figure printed is the
median of those calls. Torch uses ``--threads`` CPU threads (default 1).

Examples::

    python benchmarks/bench_min_norm.py    # standard seed0 model of the default run, 16 images, 1 thread
    python benchmarks/bench_min_norm.py --checkpoint results/synthetic/models/pgd_at/seed0/model.pt
    python benchmarks/bench_min_norm.py --images 4 --attacks alma_prox,dag --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time

import numpy as np
import torch

from eroseg.attacks import build_attack
from eroseg.costplan import load_plan
from eroseg.data import dataset_info, get_dataset
from eroseg.data.batching import size_bucketed_batches
from eroseg.evaluate import prepare_run
from eroseg.minnorm.attacks import adv_lib_segmentation, run_min_norm, verify_min_norm
from eroseg.minnorm.catalog import MIN_NORM_ATTACKS
from eroseg.models import check_checkpoint_matches, load_model

#: The attacks timed, each with the norm it minimises here.
NORM_OF = {"alma_prox": "linf", "pdpgd": "linf", "dag": "linf", "pdgd": "l2"}


@dataclasses.dataclass(frozen=True)
class CostRow:
    """One attack's figures on the batch.

    Attributes:
        attack: ``pgd`` (the reference) or a name of :data:`MIN_NORM_ATTACKS`.
        norm: ``linf`` or ``l2``.
        seconds_per_image: wall time of the call over the number of images.
        ratio_to_pgd: that time over the time of the PGD-10 call before it (1 for PGD itself).
        success_rate: share of images with valid pixels on which ``adv_threshold`` of them were fooled.
        median_norm: median norm of the perturbation over those images, failures at ``inf`` (pixel units).
    """

    attack: str
    norm: str
    seconds_per_image: float
    ratio_to_pgd: float
    success_rate: float
    median_norm: float


def attack_settings(plan, names: list[str]) -> tuple[float, dict[str, dict]]:
    """``(adv_threshold, {attack: run_min_norm's keyword arguments})`` from the plan's ``evaluation.min_norm``.

    Raises:
        ValueError: the config has no ``evaluation.min_norm`` block.
    """
    if not plan.min_norm:
        raise ValueError("the config has no evaluation.min_norm block: nothing says the steps and adv_threshold")
    configured = {}
    for setting in plan.min_norm["attacks"]:
        args = plan.min_norm_args(setting)
        configured.setdefault(args["attack"], args)
    first = plan.min_norm_args(next(iter(plan.min_norm["attacks"])))
    settings = {}
    for name in names:
        args = configured.get(name, {"steps": first["steps"], "params": {}})
        settings[name] = {"norm": NORM_OF[name], "steps": args["steps"], **args["params"]}
    return float(first["adv_threshold"]), settings


def pgd_reference(plan):
    """The project's ``pgd`` at the headline eps and steps, with the evaluation's step size and best iterate."""
    evaluation = plan.evaluation
    return build_attack("pgd", {"eps": evaluation["headline"]["eps"], "steps": int(evaluation["headline"]["steps"]),
                                "step_size": evaluation["step_size"], "best_iterate": evaluation["best_iterate"]})


def load_batch(plan, checkpoint: str, root: str | None, images: int):
    """``(model, images, labels)``: the checkpoint, checked against the config's dataset, and the first
    ``images`` images of its test split as one batch (they must share one size)."""
    dataset = plan.dataset
    model, meta = load_model(checkpoint, map_location="cpu")
    check_checkpoint_matches(meta, dataset["name"], dataset_info(dataset["name"]).num_classes, checkpoint)
    data = get_dataset(dataset["name"], root or plan.data_root(), dataset["test_split"])
    model, data, _ = prepare_run(model, data, "cpu", images)
    batches = list(size_bucketed_batches(data, images, num_workers=0))
    if len(batches) != 1:
        raise ValueError(f"the first {images} test images have {len(batches)} sizes; give fewer --images")
    _, batch_images, batch_labels = batches[0]
    return model, batch_images, batch_labels


def _median_norm(norms: torch.Tensor) -> float:
    """Median over the images with valid pixels (NaN dropped); ``inf`` where half or more failed."""
    values = norms[~torch.isnan(norms)].double().numpy()
    return float(np.median(values)) if values.size else math.nan


def _row(attack: str, norm: str, seconds: float, pgd_seconds: float, result, count: int) -> CostRow:
    attacked = ~torch.isnan(result.fooled_share)
    success = float(result.success[attacked].float().mean()) if attacked.any() else math.nan
    return CostRow(attack, norm, seconds / count, seconds / pgd_seconds, success, _median_norm(result.norm))


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(model, images: torch.Tensor, labels: torch.Tensor, settings: dict[str, dict], reference, *,
            adv_threshold: float, seed: int = 0) -> list[CostRow]:
    """Time every attack of ``settings`` once on the batch, each after one call of ``reference`` (PGD).

    Args:
        model: segmentation model on the CPU taking images in [0, 1].
        images, labels: ``[B, C, H, W]`` and ``[B, H, W]``.
        settings: attack name -> keyword arguments of :func:`run_min_norm` (``norm``, ``steps``, its params).
        reference: the PGD attack (``reference(model, images, labels, generator=...) -> adv``).
        adv_threshold: share of valid pixels to fool.
        seed: seeds PGD's random start and the minimal-norm attacks' random init.

    Returns:
        The PGD row (median time of its calls), then one row per attack of ``settings`` in order.
    """
    if not settings:
        raise ValueError("measure: no attack to time (settings is empty)")
    count = len(images)
    adv_lib_segmentation()
    warm = slice(0, min(2, count))
    reference(model, images[warm], labels[warm], generator=torch.Generator().manual_seed(seed))
    for name, kwargs in settings.items():
        run_min_norm(name, model, images[warm], labels[warm], adv_threshold=adv_threshold, seed=seed,
                     **{**kwargs, "steps": 2})
    rows, pgd_times = [], []
    for name, kwargs in settings.items():
        pgd_seconds, pgd_adv = _timed(lambda: reference(model, images, labels,
                                                        generator=torch.Generator().manual_seed(seed)))
        pgd_times.append(pgd_seconds)
        seconds, result = _timed(lambda name=name, kwargs=kwargs: run_min_norm(
            name, model, images, labels, adv_threshold=adv_threshold, seed=seed, **kwargs))
        rows.append(_row(name, kwargs["norm"], seconds, pgd_seconds, result, count))
    pgd_result = verify_min_norm(model, images, pgd_adv, labels, adv_threshold=adv_threshold)
    pgd_median = statistics.median(pgd_times)
    return [_row("pgd", "linf", pgd_median, pgd_median, pgd_result, count), *rows]


def format_table(rows: list[CostRow], steps: dict[str, int | None]) -> str:
    """The rows as a fixed-width table; Linf norms in /255, L2 norms as they are."""
    lines = [f"{'attack':<10} {'norm':<5} {'steps':>5} {'s/image':>8} {'x PGD-10':>9} {'success':>8} "
             f"{'median norm':>12}"]
    for row in rows:
        scale, unit = (255, "/255") if row.norm == "linf" else (1, "")
        norm = f"{row.median_norm * scale:.2f}{unit}" if math.isfinite(row.median_norm) else str(row.median_norm)
        lines.append(f"{row.attack:<10} {row.norm:<5} {steps.get(row.attack) or '-':>5} "
                     f"{row.seconds_per_image:8.3f} {row.ratio_to_pgd:9.2f} {row.success_rate:8.0%} {norm:>12}")
    return "\n".join(lines)


def main(argv=None) -> list[CostRow]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/config.yaml", help="workflow config (default: %(default)s)")
    p.add_argument("--checkpoint", default=None,
                   help="model to attack (default: the config run's standard seed0 model, results/<run>/models/...)")
    p.add_argument("--root", default=None, help="dataset root (default: the config's, results/<run>/data/...)")
    p.add_argument("--images", type=int, default=16, help="first N test images, one batch (default: %(default)s)")
    p.add_argument("--attacks", default=",".join(NORM_OF),
                   help="comma-separated subset of: " + ", ".join(NORM_OF) + " (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = [n for n in args.attacks.split(",") if n]
    bad = [n for n in names if n not in NORM_OF]
    if bad or not names:
        p.error(f"--attacks: unknown {bad}; valid: {', '.join(NORM_OF)}")
    if args.images < 1 or args.threads < 1:
        p.error("--images and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    plan = load_plan(args.config)
    adv_threshold, settings = attack_settings(plan, names)
    checkpoint = args.checkpoint or plan.model_path("standard", 0)
    model, images, labels = load_batch(plan, checkpoint, args.root, args.images)
    rows = measure(model, images, labels, settings, pgd_reference(plan), adv_threshold=adv_threshold,
                   seed=args.seed)
    steps = {name: kwargs["steps"] or MIN_NORM_ATTACKS[name].default_steps for name, kwargs in settings.items()}
    steps["pgd"] = int(plan.evaluation["headline"]["steps"])
    print(f"{checkpoint}: {len(images)} test images {tuple(images.shape[2:])}, adv_threshold {adv_threshold}, "
          f"CPU, threads={torch.get_num_threads()}; PGD-10: eps {plan.evaluation['headline']['eps']}, "
          f"step size {plan.evaluation['step_size']}")
    print(format_table(rows, steps))
    return rows


if __name__ == "__main__":
    main()
