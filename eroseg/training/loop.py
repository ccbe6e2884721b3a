"""The training loop: :func:`train` and its named steps, the same for every objective.

:func:`train` reads as its steps: :func:`build_run` (optimiser, data-parallel wrapper and the objective's
:class:`~eroseg.training.tasks.TrainingTask`), :func:`~eroseg.training.checkpoint.resume_state`,
:func:`train_one_epoch` (one :func:`train_step` per batch), :func:`end_epoch` (log row with
:func:`validation_row`, which calls :func:`eroseg.evaluate.evaluate`, and the checkpoint) and
:func:`~eroseg.training.checkpoint.finish`.

Determinism and resume: every random number (shuffling, crops, flips, attack random starts) comes from a
generator seeded by :func:`eroseg.seeds.stream_seed` from ``(seed, purpose, epoch, step, rank)``, not from a
global stream, so a run resumed from a checkpoint continues exactly where it stopped, with the epoch's running
loss sums.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from eroseg import __version__
from eroseg.io import atomic_write_text, exclusive_lock, remove_stale_temps
from eroseg.seeds import generator, stream_seed
from eroseg.training.augment import KeyedAugment, random_hflip
from eroseg.training.checkpoint import TrainState, check_loss, finish, resume_state, save_partial
from eroseg.training.config import TrainConfig
from eroseg.training.distributed import dist_info, global_mean, sync_batch_norm, wrap_data_parallel
from eroseg.training.tasks import TrainingTask, adversarial_counts, check_objective, create_task

log = logging.getLogger(__name__)

LOG_COLUMNS = ["epoch", "step", "loss", "lr", "val_miou", "val_pixel_acc", "robust_val_miou", "images_per_s", "epoch_s"]


@dataclass
class Run:
    """What the steps of one :func:`train` call share; built once by :func:`build_run`."""

    model: nn.Module  # the plain module: checkpoints, validation and attacks use it
    train_model: nn.Module  # the same module, wrapped in DDP under torchrun
    opt: torch.optim.Optimizer
    task: TrainingTask
    cfg: TrainConfig
    train_set: torch.utils.data.Dataset
    seed: int
    device: torch.device
    rank: int
    world: int
    steps_per_epoch: int
    n_adv: int  # this process's adversarial images per step
    partial: Path
    meta: dict
    max_steps: int | None = None
    steps_done: int = 0  # optimiser steps taken in this call

    @property
    def local_bs(self) -> int:
        return self.cfg.batch_size // self.world

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over the trainable parameters; the lr follows :func:`lr_at`."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(cfg: TrainConfig, it: int, total: int) -> float:
    """Learning rate at iteration ``it`` of ``total``."""
    if cfg.warmup_iters and it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / cfg.warmup_iters
    if cfg.schedule == "constant":
        return cfg.lr
    return cfg.lr * max(0.0, 1.0 - it / max(total, 1)) ** cfg.poly_power


def _prepare_model(model: nn.Module, cfg: TrainConfig, device: torch.device, world: int) -> nn.Module:
    model = sync_batch_norm(model, device, world).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_run(model, train_set, num_classes, model_cfg, cfg, attack, objective, out, seed, device, meta,
              max_steps) -> Run:
    """The :class:`Run` of one :func:`train` call (checks the batch against the data and the processes)."""
    rank, world = dist_info()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"training set has {len(train_set)} images, fewer than one batch of {cfg.batch_size}")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.crop_size is not None:
        train_set = KeyedAugment(train_set, cfg.crop_size, cfg.scale_range, seed)
    model = _prepare_model(model, cfg, device, world)
    train_model = wrap_data_parallel(model, device, world)
    # Attacks run on the plain module: DDP must only see the update's backward.
    task = create_task(objective, train_model, attack=attack, cfg=cfg, attack_model=model)
    meta = {**(meta or {}), "model": model_cfg, "num_classes": num_classes, "train": asdict(cfg), "seed": seed,
            "objective": check_objective(objective), "version": __version__}
    return Run(
        model=model, train_model=train_model, opt=build_optimizer(model, cfg), task=task, cfg=cfg,
        train_set=train_set, seed=seed, device=device, rank=rank, world=world, steps_per_epoch=steps_per_epoch,
        n_adv=adversarial_counts(task.adv_fraction, cfg.batch_size, world)[rank],
        partial=out.with_name(out.name + ".partial"), meta=meta, max_steps=max_steps,
    )


# ---------------------------------------------------------------- one epoch
def _collate(batch):
    images, labels = zip(*batch)
    sizes = {tuple(t.shape[-2:]) for t in labels}
    if len(sizes) > 1:
        raise ValueError(
            f"training images of one batch differ in size ({sorted(sizes)[:3]}...); set train.crop_size "
            "(and train.scale_range) so that every training image is cropped to one size"
        )
    return torch.stack(images), torch.stack(labels)


def epoch_batches(run: Run, epoch: int) -> list[list[int]]:
    """This process's sample indices for every step of ``epoch`` (its slice of each global batch)."""
    n = len(run.train_set)
    perm = torch.randperm(n, generator=generator(run.seed, "shuffle", epoch=epoch)).tolist()
    if run.cfg.crop_size is not None:
        perm = [epoch * n + i for i in perm]  # keys of KeyedAugment
    b, lo = run.cfg.batch_size, run.rank * run.local_bs
    return [perm[i * b:(i + 1) * b][lo:lo + run.local_bs] for i in range(run.steps_per_epoch)]


def train_step(run: Run, state: TrainState, images: torch.Tensor, labels: torch.Tensor) -> float:
    """One optimiser step on this process's share of a global batch; returns the global mean loss."""
    cfg, epoch, step = run.cfg, state.epoch, state.step
    # Any global-RNG use (dropout) is a function of the step too, so a resumed run repeats it.
    torch.manual_seed(stream_seed(run.seed, "global", epoch=epoch, step=step, rank=run.rank))
    images = images.to(run.device, non_blocking=True)
    labels = labels.to(run.device, non_blocking=True)
    if cfg.hflip > 0:
        images, labels = random_hflip(images, labels, probability=cfg.hflip, seed=run.seed, epoch=epoch, step=step,
                                      global_batch=cfg.batch_size, lo=run.rank * run.local_bs)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    for group in run.opt.param_groups:
        group["lr"] = lr_at(cfg, epoch * run.steps_per_epoch + step, run.total_steps)
    g = generator(run.seed, "attack", epoch=epoch, step=step, rank=run.rank, device=run.device)
    res = run.task(images, labels, generator=g, n_adv=run.n_adv)
    loss = global_mean(res["loss"].detach(), run.world)
    check_loss(loss, state, cfg, run.partial)
    run.opt.zero_grad(set_to_none=True)
    res["loss"].backward()
    run.opt.step()
    return loss


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), leave=False,
                file=sys.stderr, unit="step")


def train_one_epoch(run: Run, state: TrainState, progress: bool) -> None:
    """Run the steps of epoch ``state.epoch`` from ``state.step`` on (until ``run.max_steps``), updating ``state``."""
    cfg = run.cfg
    local = epoch_batches(run, state.epoch)[state.step:]
    loader = torch.utils.data.DataLoader(
        run.train_set, batch_sampler=local, num_workers=cfg.num_workers, collate_fn=_collate,
        persistent_workers=False, pin_memory=run.device.type == "cuda",
    )
    bar = _progress_bar(len(local), f"epoch {state.epoch + 1}/{cfg.epochs}", progress and run.rank == 0)
    t0, seconds_before = time.perf_counter(), state.seconds
    try:
        for images, labels in loader:
            loss = train_step(run, state, images, labels)
            state.running_loss = loss if state.running_loss is None else 0.9 * state.running_loss + 0.1 * loss
            state.step += 1
            state.loss_sum += loss
            state.loss_n += 1
            state.seen += cfg.batch_size
            state.seconds = seconds_before + time.perf_counter() - t0
            run.steps_done += 1
            bar.update(1)
            bar.set_postfix_str(f"loss {state.loss_sum / state.loss_n:.4f}", refresh=False)
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < run.steps_per_epoch:
                save_partial(run, state, f"epoch {state.epoch + 1}, step {state.step}")
            if run.max_steps is not None and run.steps_done >= run.max_steps:
                break
    finally:
        bar.close()


# ------------------------------------------------------- validation, logging
def validation_row(run: Run, val_set, num_classes: int, robust_attack: Callable | None) -> dict:
    """Clean val mIoU and pixel accuracy, and the small robust val mIoU (first process only).

    Both are :func:`eroseg.evaluate.evaluate` on whole images (equal sizes batched together), the robust
    one on the first ``val_robust_images`` images, its attack seeded from the run seed per batch.
    """
    from eroseg.evaluate import evaluate

    cfg = run.cfg
    shared = dict(batch_size=cfg.val_batch_size or run.local_bs, device=run.device, amp=cfg.amp)
    clean = evaluate(run.model, val_set, num_classes, **shared)["metrics"]
    row = {"val_miou": clean["miou"], "val_pixel_acc": clean["pixel_acc"]}
    if robust_attack is not None and cfg.val_robust_steps > 0 and cfg.val_robust_images > 0:
        robust = evaluate(run.model, val_set, num_classes, attack=robust_attack, seed=run.seed,
                          max_images=cfg.val_robust_images, **shared)["metrics"]
        row["robust_val_miou"] = robust["miou"]
    return row


def format_row(row: dict, epochs: int) -> str:
    """One log line per epoch: ``epoch 2/10: loss 0.4512, lr 0.0045, val mIoU 0.6123, ..., 12.3 s``."""
    parts = [f"loss {row['loss']:.4f}", f"lr {row['lr']:.4g}"]
    for key, label in (("val_miou", "val mIoU"), ("val_pixel_acc", "val pixel acc"),
                       ("robust_val_miou", "robust val mIoU")):
        if key in row:
            parts.append(f"{label} {row[key]:.4f}")
    parts += [f"{row['images_per_s']:.1f} img/s", f"{row['epoch_s']:.1f} s"]
    return f"epoch {row['epoch']}/{epochs}: " + ", ".join(parts)


def write_log(path: Path, rows: list[dict]) -> None:
    """The per-epoch CSV log (:data:`LOG_COLUMNS`; columns a row lacks are left empty), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in LOG_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def end_epoch(run: Run, state: TrainState, val_set, num_classes: int, robust_attack, log_path: Path) -> None:
    """Log the finished epoch (row, log line, CSV) and checkpoint the start of the next one."""
    epoch = state.epoch
    row = {
        "epoch": epoch + 1,
        "step": (epoch + 1) * run.steps_per_epoch,
        "loss": state.loss_sum / max(state.loss_n, 1),
        "lr": run.opt.param_groups[0]["lr"],
        "images_per_s": state.seen / max(state.seconds, 1e-9),
        "epoch_s": state.seconds,
    }
    validate = (epoch + 1) % run.cfg.val_every == 0 or epoch + 1 == run.cfg.epochs
    if val_set is not None and run.rank == 0 and validate:
        row.update(validation_row(run, val_set, num_classes, robust_attack))
    state.rows.append(row)
    if run.rank == 0:
        log.info("%s", format_row(row, run.cfg.epochs))
        write_log(log_path, state.rows)
    state.start_epoch(epoch + 1)
    save_partial(run, state, f"the end of epoch {epoch + 1}")


def train(
    model: nn.Module,
    *,
    train_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset | None,
    num_classes: int,
    model_cfg: dict,
    cfg: TrainConfig,
    attack: Callable | None,
    out: str | os.PathLike,
    log_path: str | os.PathLike,
    seed: int = 0,
    device: torch.device | str = "cpu",
    meta: dict | None = None,
    robust_attack: Callable | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    objective: dict | None = None,
) -> dict:
    """Train ``model`` (resuming from ``out``'s partial checkpoint if it belongs to this run).

    Args:
        model: the model to train, freshly built (e.g. by
            :func:`eroseg.models.model_from_config` after seeding with
            ``stream_seed(seed, "init")``); it is moved to ``device``.
        train_set: training dataset returning ``(image [3,H,W] in [0,1], label [H,W])``.
        val_set: validation dataset for the per-epoch log (or ``None``).
        num_classes: number of classes.
        model_cfg: the model's config, stored in the checkpoint so that
            :func:`eroseg.models.load_model` can rebuild it.
        cfg: shared training hyper-parameters.
        attack: the training attack, ``callable(model, images, labels, generator=...)``,
            or ``None`` for standard training (and for objectives that make their own examples).
        out: final checkpoint path. The partial checkpoint ``<out>.partial``
            is written every epoch (and every ``checkpoint_every`` steps) and
            renamed to ``out`` when training ends, so ``out`` exists only for a
            finished run. ``<out>.lock`` keeps a second writer out.
        log_path: per-epoch CSV log.
        seed: run seed (shuffling, augmentation, attacks), in [0, 2**32).
        device: torch device.
        meta: extra metadata stored in the checkpoint (method, attack,
            attack_params, dataset, classes); part of the run's identity.
        robust_attack: attack for the small per-epoch robust val mIoU.
        progress: show a progress bar (on a terminal).
        max_steps: stop after this many optimiser steps in this call (tests
            use it to simulate an interruption); the partial checkpoint is kept.
        objective: the training objective, ``{"name": ..., <parameters>}`` of
            :data:`eroseg.training.tasks.TASKS` (default: adversarial training
            with ``attack``); stored, completed, in the checkpoint and part of the run's identity.

    Returns:
        The final log row (``{"interrupted": True, ...}`` when stopped by ``max_steps``).

    Raises:
        OutputLockedError: another process is writing ``out``.
        TrainingDivergedError: non-finite or exploding loss, or non-finite weights.
    """
    out, log_path = Path(out), Path(log_path)
    with contextlib.ExitStack() as stack:
        if dist_info()[0] == 0:
            stack.enter_context(exclusive_lock(out))
            for path in (out, out.with_name(out.name + ".partial"), log_path):
                remove_stale_temps(path)  # left by killed writers; the lock says none is alive
        run = build_run(model, train_set, num_classes, model_cfg, cfg, attack, objective, out, seed,
                        torch.device(device), meta, max_steps)
        state = resume_state(run)
        while state.epoch < cfg.epochs:
            train_one_epoch(run, state, progress)
            if state.step < run.steps_per_epoch:  # stopped by max_steps half-way
                save_partial(run, state, f"epoch {state.epoch + 1}, step {state.step}")
                return {"interrupted": True, "epoch": state.epoch, "step": state.step}
            end_epoch(run, state, val_set, num_classes, robust_attack, log_path)
            if run.max_steps is not None and run.steps_done >= run.max_steps and state.epoch < cfg.epochs:
                return {"interrupted": True, "epoch": state.epoch, "step": 0}
        finish(run, out)
    return state.rows[-1]
