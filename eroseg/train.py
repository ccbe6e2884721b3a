"""Standard and adversarial training, resumable, with a per-epoch CSV log.

Every method is the same loop with a different :class:`TrainingTask`: the
task gets a batch, replaces a fraction ``adv_fraction`` of its images by
adversarial versions (generated with the model in eval mode, so attack passes
never update batch-norm statistics) and returns the loss of the update, which
runs in train mode. ``standard`` is the task without an attack.

Determinism and resume: the shuffling of epoch ``e`` and the random numbers of
step ``s`` (flips, attack random starts) come from generators seeded by
``(seed, e)`` and ``(seed, e, s)``, not from a global stream, so a run resumed
from a checkpoint (written atomically at the end of every epoch and every
``checkpoint_every`` steps) continues exactly where it stopped.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from eroseg import __version__
from eroseg.io import atomic_write_text
from eroseg.metrics import IGNORE_INDEX, ConfusionMatrix
from eroseg.models import load_checkpoint, model_from_config, save_checkpoint

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


@dataclass
class TrainConfig:
    """Hyper-parameters shared by every training method (one place, so comparisons are fair).

    Attributes:
        epochs: number of epochs.
        batch_size: global batch size (split across processes under torchrun).
        optimizer: ``sgd`` or ``adamw``.
        lr: base learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.
        schedule: ``poly`` (lr * (1 - it/total)^poly_power) or ``constant``.
        poly_power: exponent of the poly schedule.
        warmup_iters: linear warm-up iterations.
        adv_fraction: fraction of each batch replaced by adversarial images
            (0.5 as in SegPGD-AT and DDC-AT, 1.0 as in PIR-AT).
        clean_weight: loss weight of the clean images of the batch.
        adv_weight: loss weight of the adversarial images of the batch.
        hflip: random horizontal flip probability.
        crop_size: ``[height, width]`` of random training crops (after a random
            rescale by a factor from ``scale_range``; padding is void). ``None``
            trains on whole images, which must then share one size.
        scale_range: ``[low, high]`` random rescale factors (with ``crop_size``).
        checkpoint_every: also checkpoint every N optimiser steps (0: epoch ends only).
        val_batch_size: batch size of the per-epoch validation, which the first
            process runs alone (``None``: the per-process training batch). Validation runs on whole images; consecutive images
            of one size share a batch, so mixed sizes (VOC, ADE20K) work with
            any value; lower it when whole images under attack do not fit.
        val_robust_images: images of the val split used for the per-epoch robust mIoU.
        val_robust_steps: PGD steps of that small robust evaluation (0 disables it).
        amp: bf16 autocast on CUDA.
        channels_last: channels_last memory format on CUDA.
        num_workers: DataLoader workers.
        deterministic: ask torch for deterministic algorithms.
    """

    epochs: int = 10
    batch_size: int = 16
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "poly"
    poly_power: float = 0.9
    warmup_iters: int = 0
    adv_fraction: float = 0.5
    clean_weight: float = 1.0
    adv_weight: float = 1.0
    hflip: float = 0.5
    crop_size: list | None = None
    scale_range: list = field(default_factory=lambda: [1.0, 1.0])
    checkpoint_every: int = 0
    val_batch_size: int | None = None
    val_robust_images: int = 32
    val_robust_steps: int = 3
    amp: bool = True
    channels_last: bool = False
    num_workers: int = 0
    deterministic: bool = False

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        d = dict(d or {})
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown training parameter(s) {unknown}; valid: {sorted(valid)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise ValueError(f"val_batch_size must be >= 1 or null (= batch_size), got {self.val_batch_size}")
        if not 0.0 <= self.adv_fraction <= 1.0:
            raise ValueError(f"adv_fraction must be in [0, 1], got {self.adv_fraction}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.crop_size is not None and (len(self.crop_size) != 2 or min(self.crop_size) < 1):
            raise ValueError(f"crop_size must be [height, width] of positive integers, got {self.crop_size!r}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {self.scale_range!r}")
        if self.schedule not in ("poly", "constant"):
            raise ValueError(f"schedule must be 'poly' or 'constant', got {self.schedule!r}")


class TrainingTask:
    """One training step's loss: ``task(images, labels, generator) -> {"loss", "output", "adv_mask"}``.

    Args:
        model: the model being trained.
        attack: ``callable(model, images, labels, generator=...) -> adv`` or
            ``None`` for standard training.
        adv_fraction: fraction of the batch replaced by adversarial images;
            the first ``round(adv_fraction * B)`` images of the (shuffled)
            batch are attacked.
        clean_weight: loss weight of clean images.
        adv_weight: loss weight of adversarial images.
        ignore_index: void label.
        amp: bf16 autocast for the update's forward pass on CUDA.
    """

    def __init__(
        self,
        model: nn.Module,
        attack: Callable | None = None,
        *,
        adv_fraction: float = 0.5,
        clean_weight: float = 1.0,
        adv_weight: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        amp: bool = False,
        attack_model: nn.Module | None = None,
    ):
        self.model = model
        self.attack_model = attack_model if attack_model is not None else model
        self.attack = attack
        self.adv_fraction = adv_fraction if attack is not None else 0.0
        self.clean_weight = clean_weight
        self.adv_weight = adv_weight
        self.ignore_index = ignore_index
        self.amp = amp

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        b = images.shape[0]
        n_adv = int(round(self.adv_fraction * b))
        adv_mask = torch.zeros(b, dtype=torch.bool, device=images.device)
        if n_adv > 0:
            # The attack sets eval mode itself (and restores train mode in
            # `finally`), so BN running statistics see only the update pass.
            adv = self.attack(self.attack_model, images[:n_adv], labels[:n_adv], generator=generator)
            images = torch.cat([adv.detach(), images[n_adv:]])
            adv_mask[:n_adv] = True
        self.model.train()
        with _autocast(images.device, self.amp):
            output = self.model(images)
        pixel_loss = F.cross_entropy(output.float(), labels, ignore_index=self.ignore_index, reduction="none")
        valid = (labels != self.ignore_index).float()
        w = torch.where(adv_mask, self.adv_weight, self.clean_weight).to(pixel_loss.dtype).view(b, 1, 1)
        loss = (pixel_loss * w).sum() / (valid * w).sum().clamp_min(1.0)
        return {"loss": loss, "output": output, "adv_mask": adv_mask}


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def _step_generator(seed: int, epoch: int, step: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch * 10_007 + step) % (2**63))
    return g


def lr_at(cfg: TrainConfig, it: int, total: int) -> float:
    """Learning rate at iteration ``it`` of ``total``."""
    if cfg.warmup_iters and it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / cfg.warmup_iters
    if cfg.schedule == "constant":
        return cfg.lr
    return cfg.lr * max(0.0, 1.0 - it / max(total, 1)) ** cfg.poly_power


def _collate(batch):
    images, labels = zip(*batch)
    sizes = {tuple(t.shape[-2:]) for t in labels}
    if len(sizes) > 1:
        raise ValueError(
            f"training images of one batch differ in size ({sorted(sizes)[:3]}...); set train.crop_size "
            "(and train.scale_range) so that every training image is cropped to one size"
        )
    return torch.stack(images), torch.stack(labels)


def batches_by_size(dataset, batch_size: int):
    """Yield ``(images, labels)`` batches of up to ``batch_size`` consecutive images of one size.

    Evaluation runs on whole images, which in real datasets differ in size
    (PASCAL VOC, ADE20K): a batch is closed early where the size changes, so
    the order of the images is kept (per-image results stay aligned with the
    dataset) and any ``batch_size`` works. Equal-size datasets give the usual
    full batches.
    """
    images: list = []
    labels: list = []
    for i in range(len(dataset)):
        image, label = dataset[i]
        if labels and (len(labels) == batch_size or label.shape[-2:] != labels[0].shape[-2:]):
            yield torch.stack(images), torch.stack(labels)
            images, labels = [], []
        images.append(image)
        labels.append(label)
    if labels:
        yield torch.stack(images), torch.stack(labels)


class KeyedAugment(torch.utils.data.Dataset):
    """Random scale + crop whose randomness depends only on ``(seed, key)``.

    The loader asks for key ``epoch * n + i`` (sample ``i`` in epoch
    ``epoch``), so an augmentation is the same in a resumed run, in any
    DataLoader worker and in any process of a data-parallel run.
    """

    def __init__(self, base, crop_size, scale_range, seed: int):
        from eroseg.data.transforms import RandomScaleCrop

        self.base, self.seed = base, seed
        self.make = lambda g: RandomScaleCrop(tuple(scale_range), tuple(crop_size), generator=g)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int):
        image, label = self.base[key % len(self.base)]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + 7_919 * key) % (2**63))
        return self.make(g)(image, label)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


LOG_COLUMNS = ["epoch", "step", "loss", "lr", "val_miou", "val_pixel_acc", "robust_val_miou", "images_per_s", "epoch_s"]


def _write_log(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in LOG_COLUMNS})
    atomic_write_text(path, buf.getvalue())


@torch.no_grad()
def _evaluate_clean(model, dataset, batch_size, device, num_classes, amp) -> dict:
    cm = ConfusionMatrix(num_classes)
    model.eval()
    for images, labels in batches_by_size(dataset, batch_size):
        images, labels = images.to(device), labels.to(device)
        with _autocast(device, amp):
            pred = model(images).argmax(1)
        cm.update(pred, labels)
    return cm.compute()


def _evaluate_robust(model, dataset, batch_size, device, num_classes, attack, seed) -> dict:
    cm = ConfusionMatrix(num_classes)
    for i, (images, labels) in enumerate(batches_by_size(dataset, batch_size)):
        images, labels = images.to(device), labels.to(device)
        adv = attack(model, images, labels, generator=_step_generator(seed, -1, i, device))
        with torch.no_grad():
            cm.update(model(adv).argmax(1), labels)
    return cm.compute()


class _Progress:
    """A progress line on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.n = 0

    def update(self, loss: float, ips: float) -> None:
        self.n += 1
        if not self.enabled:
            return
        msg = f"{self.desc} {self.n}/{self.total} loss {loss:.4f} {ips:.1f} img/s"
        if self.tty:
            sys.stderr.write("\r" + msg)
            sys.stderr.flush()
        elif self.n == self.total or self.n % max(1, self.total // 4) == 0:
            log.info(msg)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    NCCL on CUDA, gloo on CPU. Returns ``(rank, world_size)``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return _dist_info()


def train(
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
) -> dict:
    """Train a model (resuming from ``out``'s partial checkpoint if one exists).

    Args:
        train_set: training dataset returning ``(image [3,H,W] in [0,1], label [H,W])``.
        val_set: validation dataset for the per-epoch log (or ``None``).
        num_classes: number of classes.
        model_cfg: model config (see :func:`eroseg.models.model_from_config`).
        cfg: shared training hyper-parameters.
        attack: the training attack, ``callable(model, images, labels, generator=...)``,
            or ``None`` for standard training.
        out: final checkpoint path. The partial checkpoint ``<out>.partial``
            is written every epoch (and every ``checkpoint_every`` steps) and
            renamed to ``out`` when training ends, so ``out`` exists only for a
            finished run.
        log_path: per-epoch CSV log.
        seed: run seed (model init, shuffling, augmentation, attacks).
        device: torch device.
        meta: extra metadata stored in the checkpoint (method name, attack...).
        robust_attack: attack for the small per-epoch robust val mIoU.
        progress: show progress.
        max_steps: stop after this many optimiser steps in this call (tests
            use it to simulate an interruption); the partial checkpoint is kept.

    Returns:
        The final log row.
    """
    device = torch.device(device)
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    log_path = Path(log_path)
    rank, world = _dist_info()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
    local_bs = cfg.batch_size // world
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    torch.manual_seed(seed)
    model = model_from_config(model_cfg, num_classes)
    if world > 1 and device.type == "cuda":
        # Batch statistics over the global batch, as one process would compute them.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    n = len(train_set)
    if cfg.crop_size is not None:
        train_set = KeyedAugment(train_set, cfg.crop_size, cfg.scale_range, seed)
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"training set has {n} images, fewer than one batch of {cfg.batch_size}")
    total = steps_per_epoch * cfg.epochs
    meta = {
        **(meta or {}),
        "model": model_cfg,
        "num_classes": num_classes,
        "train": asdict(cfg),
        "seed": seed,
        "version": __version__,
    }

    start_epoch, start_step, rows = 0, 0, []
    if partial.exists():
        ckpt = load_checkpoint(partial, map_location="cpu")
        if ckpt["meta"].get("train") != meta["train"] or ckpt["meta"].get("model") != model_cfg:
            raise ValueError(
                f"{partial}: partial checkpoint was written with other settings; delete it to start over"
            )
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, start_step = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
        rows = [dict(zip(LOG_COLUMNS, r)) for r in ckpt.get("log_rows", [])]
        rows = [{k: (float(v) if k not in ("epoch", "step") else int(v)) for k, v in r.items()} for r in rows]
        log.info("resuming %s from epoch %d step %d", partial, start_epoch, start_step)

    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    task = TrainingTask(
        train_model,
        attack,
        adv_fraction=cfg.adv_fraction,
        clean_weight=cfg.clean_weight,
        adv_weight=cfg.adv_weight,
        amp=cfg.amp,
        attack_model=model,  # attack the plain module: DDP must only see the update's backward
    )

    def save(epoch: int, step_in_epoch: int) -> None:
        if rank != 0:
            return
        log_rows = [[float(r.get(k, float("nan")) if r.get(k, "") != "" else float("nan")) for k in LOG_COLUMNS] for r in rows]
        save_checkpoint(
            partial, model, meta,
            optimizer=opt.state_dict(), epoch=epoch, step_in_epoch=step_in_epoch, log_rows=log_rows,
        )

    steps_this_call = 0
    last_row: dict = rows[-1] if rows else {}
    for epoch in range(start_epoch, cfg.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        if cfg.crop_size is not None:
            perm = [epoch * n + i for i in perm]  # keys of KeyedAugment
        batches = [perm[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(steps_per_epoch)]
        first = start_step if epoch == start_epoch else 0
        local = [b[rank * local_bs:(rank + 1) * local_bs] for b in batches[first:]]
        loader = torch.utils.data.DataLoader(
            train_set, batch_sampler=local, num_workers=cfg.num_workers, collate_fn=_collate,
            persistent_workers=False, pin_memory=device.type == "cuda",
        )
        bar = _Progress(len(local), f"epoch {epoch + 1}/{cfg.epochs}", progress and rank == 0)
        t0, seen, loss_sum, loss_n = time.perf_counter(), 0, 0.0, 0
        for step, (images, labels) in enumerate(loader, start=first):
            it = epoch * steps_per_epoch + step
            # Flips are drawn for the global batch and sliced, so that N processes
            # see the same augmentation as one process with the same global batch.
            g_flip = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 10_007 + step) % (2**63))
            g = _step_generator(seed + 7 * rank, epoch, step, device)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if cfg.hflip > 0:
                flip = (torch.rand(cfg.batch_size, generator=g_flip) < cfg.hflip)[rank * local_bs:(rank + 1) * local_bs]
                flip = flip.to(device)
                images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
                labels = torch.where(flip.view(-1, 1, 1), labels.flip(-1), labels)
            if cfg.channels_last and device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, it, total)
            res = task(images, labels, generator=g)
            loss = res["loss"]
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                    f"the last good checkpoint is kept at {partial if partial.exists() else '(none yet)'}"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += images.shape[0] * world
            loss_sum += float(loss.detach())
            loss_n += 1
            steps_this_call += 1
            bar.update(loss_sum / loss_n, seen / max(time.perf_counter() - t0, 1e-9))
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                save(epoch, step + 1)
            if max_steps is not None and steps_this_call >= max_steps:
                bar.close()
                save(epoch, step + 1) if step + 1 < steps_per_epoch else save(epoch + 1, 0)
                return {"interrupted": True, "epoch": epoch, "step": step + 1}
        bar.close()
        epoch_s = time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * steps_per_epoch,
            "loss": loss_sum / max(loss_n, 1),
            "lr": opt.param_groups[0]["lr"],
            "images_per_s": seen / max(epoch_s, 1e-9),
            "epoch_s": epoch_s,
        }
        if val_set is not None and rank == 0:
            val_bs = cfg.val_batch_size or local_bs
            clean = _evaluate_clean(model, val_set, val_bs, device, num_classes, cfg.amp)
            row.update(val_miou=clean["miou"], val_pixel_acc=clean["pixel_acc"])
            if robust_attack is not None and cfg.val_robust_steps > 0 and cfg.val_robust_images > 0:
                subset = torch.utils.data.Subset(val_set, range(min(cfg.val_robust_images, len(val_set))))
                rob = _evaluate_robust(model, subset, val_bs, device, num_classes, robust_attack, seed)
                row["robust_val_miou"] = rob["miou"]
        rows.append(row)
        last_row = row
        if rank == 0:
            log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            _write_log(log_path, rows)
        save(epoch + 1, 0)
    if rank == 0:
        os.replace(partial, out) if partial.exists() else save_checkpoint(out, model, meta)
    if world > 1:
        dist.barrier()
    return last_row
