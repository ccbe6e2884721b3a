"""What a config will cost before it is submitted: jobs per stage and estimated device-hours (``eroseg plan``).

The work of each stage is counted from the config through :class:`eroseg.plan.EvaluationPlan` (the same
settings the workflow runs) in units of one image through the model:

- an *attack step*: a forward and a backward pass to the input (one iteration of PGD; SEA counts its
  iterations once per loss, restarts multiply);
- a *forward*: a prediction without gradients (the clean evaluation, each setting's final prediction);
- a *training step*: a forward and a backward pass to the weights at the training crop.

The seconds of each unit come from a short benchmark of the configured model (``model``, the dataset's class
count, ``evaluation.inference``) on the current device, at the evaluation batch size (1 on a CPU) and a
typical image size of the dataset, or are given (``--step-seconds``). The estimate leaves out data loading,
start-up and the merge and report jobs, and prices a training attack step as a training step.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

from eroseg.plan import EvaluationPlan

#: Images per split of the real datasets (their official releases), used when no data manifest exists yet.
KNOWN_SPLIT_SIZES = {("voc", "train_aug"): 10582, ("voc", "train"): 1464, ("voc", "val"): 1449,
                     ("cityscapes", "train"): 2975, ("cityscapes", "val"): 500,
                     ("ade20k", "train"): 20210, ("ade20k", "val"): 2000}
#: A typical image (height, width) of each real dataset, at which the benchmark runs.
TYPICAL_IMAGE_SIZE = {"voc": (375, 500), "cityscapes": (1024, 2048), "ade20k": (512, 683)}
#: Losses SEA runs its iterations for (eroseg.attacks.sea).
SEA_LOSSES = 4


@dataclasses.dataclass(frozen=True)
class StepSeconds:
    """Seconds per image of each unit of work (see the module docstring)."""

    attack_step: float
    forward: float
    train_step: float


def load_plan(configfile: str | Path) -> EvaluationPlan:
    """The :class:`EvaluationPlan` of a config file, validated by the workflow's schema (defaults filled)."""
    import tempfile

    import yaml
    from snakemake.utils import validate

    from eroseg.plan import attack_registry

    config = yaml.safe_load(Path(configfile).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{configfile}: expected a config mapping (as config/config.yaml)")
    validate(config, str(Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"))
    with tempfile.TemporaryDirectory() as cache:
        return EvaluationPlan(config, attack_registry(Path(cache), "plan"))


def split_sizes(plan: EvaluationPlan) -> dict[str, int]:
    """Images per split: counted in the run's data manifest when it exists, else the datasets' known sizes
    (the synthetic set's from its config), with the tune list taken out of the training split."""
    dataset, manifest = plan.dataset, Path(plan.manifest_path())
    if manifest.is_file():
        sizes: dict[str, int] = {}
        with manifest.open(newline="") as fh:
            for row in csv.DictReader(fh):
                sizes[row["split"]] = sizes.get(row["split"], 0) + 1
        return sizes
    if plan.synthetic:
        synthetic = dataset["synthetic"]
        sizes = {"train": synthetic["n_train"], "val": synthetic["n_val"], "test": synthetic["n_test"]}
    else:
        sizes = {split: n for (name, split), n in KNOWN_SPLIT_SIZES.items() if name == dataset["name"]}
    tune = int(dataset.get("tune_size") or 0)
    if tune and dataset["train_split"] in sizes:
        sizes = {**sizes, "tune": tune, dataset["train_split"]: sizes[dataset["train_split"]] - tune}
    return sizes


def _image_size(plan: EvaluationPlan) -> tuple[int, int]:
    if plan.synthetic:
        return int(plan.dataset["synthetic"]["height"]), int(plan.dataset["synthetic"]["width"])
    return TYPICAL_IMAGE_SIZE.get(plan.dataset["name"], (512, 512))


def _setting_steps(item: dict) -> int:
    """Attack steps per image of one evaluation setting (0 for clean)."""
    if item["attack"] == "none":
        return 0
    steps = int(item["params"].get("steps", 1)) * int(item.get("restarts", 1))
    return steps * SEA_LOSSES if item["attack"] == "sea" else steps


def evaluation_work(plan: EvaluationPlan) -> list[tuple[str, int, int, int]]:
    """Per evaluated model: ``(model, images, forwards per image, attack steps per image)``."""
    images = split_sizes(plan).get(plan.dataset["test_split"], 0)
    if plan.evaluation.get("max_images"):
        images = min(images, int(plan.evaluation["max_images"]))
    out = []
    for method in plan.methods:
        for seed in plan.seeds_of(method):
            settings = plan.evaluation_settings(method, seed)
            out.append((f"{method}/seed{seed}", images, len(settings), sum(_setting_steps(i) for i in settings)))
    return out


def training_work(plan: EvaluationPlan) -> tuple[int, int, int]:
    """``(models, images per epoch, training steps per image over all epochs)`` summed over the trained models:
    each image costs one training step plus its training attack's steps per epoch."""
    images = split_sizes(plan).get(plan.dataset["train_split"], 0)
    epochs, total = int(plan.config["train"]["epochs"]), 0
    for method in plan.trained:
        attack, params = plan.training_attack(method)
        objective = plan.training_objective(method)
        attack_steps = int(params.get("steps", 1)) if attack else int(objective.get("steps", 0) or 0)
        total += len(plan.seeds) * epochs * (1 + attack_steps)
    return len(plan.trained) * len(plan.seeds), images, total


def tuning_work(plan: EvaluationPlan) -> int:
    """Attack steps per image summed over every tuning candidate and model, times the images each uses."""
    from eroseg.tune import grid_candidates

    if not plan.tuned_families or not plan.tuning.get("models"):
        return 0
    images = split_sizes(plan).get(plan.dataset["val_split"], 0)
    if plan.tuning.get("max_images"):
        images = min(images, int(plan.tuning["max_images"]))
    steps = int(plan.tuning["steps"])
    candidates = sum(len(grid_candidates(plan.tuning["grids"][f])) for f in plan.tuned_families)
    return candidates * len(plan.tuning["models"]) * images * steps


def _timed(run, repeats: int) -> float:
    run()  # warm-up (allocations, cudnn autotuning)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def benchmark(plan: EvaluationPlan, device: str = "auto", repeats: int = 2) -> StepSeconds:
    """Seconds per image of an attack step, a forward and a training step of the configured model here."""
    import torch

    from eroseg.data import dataset_info
    from eroseg.device import select_device
    from eroseg.inference import wrap_for_inference
    from eroseg.models import model_from_config

    device = select_device(device)
    classes = dataset_info(plan.dataset["name"]).num_classes
    model = model_from_config(plan.config["model"], classes).to(device)
    evaluated = wrap_for_inference(model, plan.evaluation.get("inference")).eval()
    batch = int(plan.evaluation["batch_size"]) if device.type == "cuda" else 1
    images = torch.rand(batch, 3, *_image_size(plan), device=device)
    crop = plan.config["train"].get("crop_size") or list(_image_size(plan))
    crops = torch.rand(batch, 3, *crop, device=device)

    def attack_step():
        x = images.clone().requires_grad_(True)
        torch.autograd.grad(evaluated(x).logsumexp(1).mean(), x)
        _sync(device)

    def forward():
        with torch.no_grad():
            evaluated(images)
        _sync(device)

    def train_step():
        model.train()
        model(crops).mean().backward()
        model.zero_grad(set_to_none=True)
        model.eval()
        _sync(device)

    return StepSeconds(*(_timed(run, repeats) / batch for run in (attack_step, forward, train_step)))


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _hours(units: float, seconds: float) -> str:
    return f"{units * seconds / 3600:,.2f} device-hours"


def format_plan(plan: EvaluationPlan, seconds: StepSeconds) -> str:
    """The cost plan as lines of text: jobs per stage and their estimated device-hours."""
    models, train_images, train_steps = training_work(plan)
    evaluations = evaluation_work(plan)
    tuning = tuning_work(plan)
    lines = ["prepare: 1 job"]
    lines.append(f"train: {models} jobs ({len(plan.trained)} methods x {len(plan.seeds)} seeds); {train_images:,} "
                 f"images x {train_steps:,} steps per image (epochs x (1 + attack steps), summed over models) = "
                 f"{_hours(train_images * train_steps, seconds.train_step)}")
    lines.append(f"tune: {len(plan.tuned_families)} jobs; {tuning:,} image attack steps = "
                 f"{_hours(tuning, seconds.attack_step)}")
    total = sum(n * (f * seconds.forward + s * seconds.attack_step) for _, n, f, s in evaluations)
    steps = sorted({s for _, _, _, s in evaluations})
    step_text = f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,} to {steps[-1]:,}"
    images = evaluations[0][1] if evaluations else 0
    lines.append(f"evaluate: {len(evaluations)} models x {images:,} images x (clean + {step_text} attack steps) = "
                 f"{total / 3600:,.2f} device-hours; {len(evaluations) * plan.shards} jobs"
                 + (f" ({plan.shards} shards per model) + {len(evaluations)} merges" if plan.shards > 1 else ""))
    lines.append("samples: 1 job")
    lines.append(f"per image: attack step {seconds.attack_step:.4g} s, forward {seconds.forward:.4g} s, training "
                 f"step {seconds.train_step:.4g} s")
    return "\n".join(lines)


__all__ = ["KNOWN_SPLIT_SIZES", "StepSeconds", "benchmark", "evaluation_work", "format_plan", "load_plan",
           "split_sizes", "training_work", "tuning_work"]
