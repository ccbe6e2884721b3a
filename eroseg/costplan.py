"""What a config will cost before it is submitted: jobs per stage and estimated device-hours (``eroseg plan``).

The work of each stage is counted from the config through :class:`eroseg.plan.EvaluationPlan` (the same
settings the workflow runs) in units of one image through the model:

- an *attack step*: a forward and a backward pass to the input (one iteration of PGD; SEA counts its
  iterations once per loss, restarts multiply);
- a *forward*: a prediction without gradients (the clean evaluation, each setting's final prediction);
- a *training step*: a forward and a backward pass to the weights at the training crop.

Each job also pays a start-up (the interpreter, torch and the model's library imported), measured once in a
subprocess. The seconds of each unit come from a short benchmark of the configured model (``model``, the
dataset's class count, ``evaluation.inference``) on the current device, at the configured batch sizes (at most
2 images on a CPU for images above 256 x 256) and a typical image size of the dataset, with the config's
``resources.threads`` on a CPU; or they are given (``--step-seconds``). Training counts, per image and epoch,
one training step plus its attack's steps on the adversarial share (``adv_fraction``; every image for an
objective that makes its own examples, such as TRADES) and the per-epoch validation (clean forwards on the
validation split, the robust check's attack steps). The estimate leaves out data loading and the merge and
report jobs.
"""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
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
    job_start: float = 0.0


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
    each image costs one training step per epoch."""
    images = split_sizes(plan).get(plan.dataset["train_split"], 0)
    epochs = int(plan.config["train"]["epochs"])
    return len(plan.trained) * len(plan.seeds), images, len(plan.trained) * len(plan.seeds) * epochs


def training_attack_steps(plan: EvaluationPlan) -> float:
    """Attack steps per training image over all epochs, summed over the trained models: the method's attack
    on its adversarial share (``adv_fraction``), or the objective's own examples on every image."""
    from eroseg.training.config import TrainConfig

    epochs, total = int(plan.config["train"]["epochs"]), 0.0
    default_share = plan.config["train"].get("adv_fraction", TrainConfig.adv_fraction)
    for method in plan.trained:
        attack, params = plan.training_attack(method)
        objective = plan.training_objective(method)
        if attack:
            share = float(objective.get("adv_fraction", default_share))
            total += len(plan.seeds) * epochs * share * int(params.get("steps", 1))
        else:
            total += len(plan.seeds) * epochs * int(objective.get("steps", 0) or 0)
    return total


def validation_work(plan: EvaluationPlan) -> tuple[int, int]:
    """``(forwards, attack steps)`` of the per-epoch validation, in images, summed over the trained models:
    clean forwards on the validation split and the robust check's steps after every ``val_every``-th epoch
    and the last."""
    train = plan.config["train"]
    epochs, every = int(train["epochs"]), int(train.get("val_every") or 1)
    checks = len(set(range(every, epochs + 1, every)) | {epochs})
    images = split_sizes(plan).get(plan.dataset["val_split"], 0)
    robust = min(images, int(train.get("val_robust_images") or 0)) * int(train.get("val_robust_steps") or 0)
    models = len(plan.trained) * len(plan.seeds)
    return models * checks * images, models * checks * robust


def min_norm_work(plan: EvaluationPlan) -> tuple[int, int]:
    """``(jobs, attack steps)`` of the minimal-norm runs: each step is one forward and backward per image."""
    jobs = plan.min_norm_jobs()
    if not jobs:
        return 0, 0
    block = plan.min_norm
    images = split_sizes(plan).get(plan.dataset["test_split"], 0)
    if block.get("max_images"):
        images = min(images, int(block["max_images"]))
    steps = sum(int((block["attacks"][a] or {}).get("steps") or 0) for _, _, a in jobs)
    return len(jobs), images * steps


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


def job_start_seconds() -> float:
    """Seconds a job spends before its first image: a fresh interpreter importing torch, the model library and
    eroseg's evaluation (measured in a subprocess)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import eroseg.evaluate, eroseg.models, eroseg.training"], check=True)
    return time.perf_counter() - start


def _batch(size: int, image_size: tuple[int, int], device) -> int:
    return min(size, 2) if device.type == "cpu" and image_size[0] * image_size[1] > 256 * 256 else size


def benchmark(plan: EvaluationPlan, device: str = "auto", repeats: int = 2) -> StepSeconds:
    """Seconds per image of an attack step, a forward and a training step of the configured model here, and a
    job's start-up."""
    import torch

    from eroseg.data import dataset_info
    from eroseg.device import select_device
    from eroseg.inference import wrap_for_inference
    from eroseg.models import model_from_config

    device = select_device(device)
    if device.type == "cpu":
        torch.set_num_threads(int(plan.config.get("resources", {}).get("threads") or torch.get_num_threads()))
    classes = dataset_info(plan.dataset["name"]).num_classes
    model = model_from_config(plan.config["model"], classes).to(device)
    evaluated = wrap_for_inference(model, plan.evaluation.get("inference")).eval()
    batch = _batch(int(plan.evaluation["batch_size"]), _image_size(plan), device)
    images = torch.rand(batch, 3, *_image_size(plan), device=device)
    crop = plan.config["train"].get("crop_size") or list(_image_size(plan))
    train_batch = _batch(int(plan.config["train"]["batch_size"]), tuple(crop), device)
    crops = torch.rand(train_batch, 3, *crop, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

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
        model(crops).logsumexp(1).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()
        _sync(device)

    return StepSeconds(_timed(attack_step, repeats) / batch, _timed(forward, repeats) / batch,
                       _timed(train_step, repeats) / train_batch, job_start_seconds())


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.2f} device-hours ({seconds:,.0f} s)"


def _training_line(plan: EvaluationPlan, seconds: StepSeconds) -> str:
    models, images, steps = training_work(plan)
    attack_steps = images * training_attack_steps(plan)
    val_forwards, val_steps = validation_work(plan)
    total = (images * steps * seconds.train_step + attack_steps * seconds.attack_step
             + val_forwards * seconds.forward + val_steps * seconds.attack_step + models * seconds.job_start)
    seeds = f"{len(plan.seeds)} seed" + ("s" if len(plan.seeds) != 1 else "")
    return (f"train: {models} jobs ({len(plan.trained)} methods x {seeds}); {images:,} images x "
            f"{steps:,} epochs (summed over models) training steps, {attack_steps:,.0f} image attack steps, "
            f"validation {val_forwards:,} forwards + {val_steps:,} attack steps = {_hours(total)}")


def format_plan(plan: EvaluationPlan, seconds: StepSeconds) -> str:
    """The cost plan as lines of text: jobs per stage and their estimated device-hours."""
    evaluations = evaluation_work(plan)
    tuning = tuning_work(plan)
    lines = ["prepare: 1 job", _training_line(plan, seconds)]
    tune_seconds = tuning * seconds.attack_step + len(plan.tuned_families) * seconds.job_start
    lines.append(f"tune: {len(plan.tuned_families)} jobs; {tuning:,} image attack steps = {_hours(tune_seconds)}")
    total = (sum(n * (f * seconds.forward + s * seconds.attack_step) for _, n, f, s in evaluations)
             + len(evaluations) * plan.shards * seconds.job_start)
    steps = sorted({s for _, _, _, s in evaluations})
    step_text = f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,} to {steps[-1]:,}"
    images = evaluations[0][1] if evaluations else 0
    lines.append(f"evaluate: {len(evaluations)} models x {images:,} images x (clean + {step_text} attack steps) = "
                 f"{_hours(total)}; {len(evaluations) * plan.shards} jobs"
                 + (f" ({plan.shards} shards per model) + {len(evaluations)} merges" if plan.shards > 1 else ""))
    jobs, steps = min_norm_work(plan)
    if jobs:
        lines.append(f"min_norm: {jobs} jobs; {steps:,} image attack steps = "
                     f"{_hours(steps * seconds.attack_step + jobs * seconds.job_start)}")
    lines.append("samples: 1 job")
    lines.append(f"per image: attack step {seconds.attack_step:.4g} s, forward {seconds.forward:.4g} s, training "
                 f"step {seconds.train_step:.4g} s; per job: start-up {seconds.job_start:.3g} s")
    return "\n".join(lines)


__all__ = ["KNOWN_SPLIT_SIZES", "StepSeconds", "benchmark", "evaluation_work", "format_plan", "job_start_seconds",
           "load_plan", "min_norm_work", "split_sizes", "training_attack_steps", "training_work", "tuning_work",
           "validation_work"]
