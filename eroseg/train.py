"""Standard and adversarial training, resumable, with a per-epoch CSV log.

Every method is the same loop with a different :class:`TrainingTask`: the
task gets a batch, replaces a share of its images by adversarial versions
(generated with the model in eval mode, so attack passes never update
batch-norm statistics) and returns the loss of the update, which runs in train
mode. ``standard`` is the task without an attack.

:func:`train` reads as its named steps: :func:`build_optimizer`,
:func:`resume_state` (a partial checkpoint is resumed only when everything
that defines the run matches, see :data:`RUN_IDENTITY`), :func:`train_one_epoch`
(one :func:`train_step` per batch), :func:`validation_row`,
:func:`save_partial` (parameters and buffers checked finite first) and
:func:`finish`.

Determinism and resume: every random number (shuffling, crops, flips, attack
random starts) comes from a generator seeded by
:func:`eroseg.seeds.stream_seed` from ``(seed, purpose, epoch, step, rank)``,
not from a global stream, so a run resumed from a checkpoint (written
atomically at the end of every epoch and every ``checkpoint_every`` steps)
continues exactly where it stopped, with the epoch's running loss sums.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from eroseg import __version__
from eroseg.io import atomic_write_text, exclusive_lock, remove_stale_temps
from eroseg.metrics import IGNORE_INDEX, ConfusionMatrix
from eroseg.models import load_checkpoint, save_checkpoint
from eroseg.seeds import generator, stream_seed

log = logging.getLogger(__name__)


class ConfigTypeError(TypeError, ValueError):
    """A training parameter of the wrong type (a ``ValueError`` too: bad input, reported in one line)."""


class TrainingDivergedError(RuntimeError):
    """Training stopped: a non-finite or exploding loss, or non-finite weights."""


class NonFiniteLossError(TrainingDivergedError):
    """The training loss became NaN or infinite."""


class LossExplosionError(TrainingDivergedError):
    """The training loss rose above ``loss_explosion_factor`` times its running average."""


class NonFiniteWeightsError(TrainingDivergedError):
    """Parameters or buffers became NaN or infinite; no checkpoint was written from them."""


#: What defines a run: a partial checkpoint is resumed only if its metadata
#: agrees on every one of these (the package version included: code that
#: changed may train differently, so a partial from another version starts over).
RUN_IDENTITY = ("model", "train", "method", "attack", "attack_params", "seed", "dataset", "num_classes", "version")

# Types each TrainConfig field accepts (the annotations are strings here).
_FIELD_TYPES = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
    "list": ((list, tuple), "a list"),
    "list | None": ((list, tuple, type(None)), "a list or null"),
    "int | None": ((int, type(None)), "an integer or null"),
}


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
        loss_explosion_factor: stop training when a step's loss exceeds this
            multiple of the running (exponential moving) average of the loss;
            0 disables the check (a non-finite loss always stops training).
        val_batch_size: batch size of the per-epoch validation, which the first
            process runs alone (``None``: the per-process training batch). Validation runs on whole
            images; consecutive images of one size share a batch, so mixed sizes (VOC, ADE20K) work with
            any value; lower it when whole images under attack do not fit.
        val_every: run the per-epoch validation (clean and robust) after every N-th epoch and after the
            last; the other epochs' log rows leave those columns empty.
        val_robust_images: images of the val split used for the per-epoch robust mIoU.
        val_robust_steps: PGD steps of that small robust evaluation (0 disables it).
        amp: bf16 autocast on CUDA.
        channels_last: channels_last memory format for the model and the training batches (CPU and CUDA; on 2
            CPU cores it made a training step of the default's small U-Net 13 % cheaper).
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
    loss_explosion_factor: float = 1000.0
    val_batch_size: int | None = None
    val_every: int = 1
    val_robust_images: int = 32
    val_robust_steps: int = 3
    amp: bool = True
    channels_last: bool = False
    num_workers: int = 0
    deterministic: bool = False

    @classmethod
    def from_dict(cls, d: dict | None) -> TrainConfig:
        d = dict(d or {})
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown training parameter(s) {unknown}; valid: {sorted(valid)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def _check_types(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            types, expected = _FIELD_TYPES[str(f.type)]
            if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
                raise ConfigTypeError(
                    f"training parameter {f.name!r}: expected {expected}, got {value!r} ({type(value).__name__})"
                )
        for name, kind, expected in (("crop_size", int, "integers"), ("scale_range", (int, float), "numbers")):
            value = getattr(self, name)
            if value is not None and any(isinstance(v, bool) or not isinstance(v, kind) for v in value):
                raise ConfigTypeError(f"training parameter {name!r}: expected a list of {expected}, got {value!r}")

    def validate(self) -> None:
        """Check types and ranges; errors name the parameter and what was expected."""
        self._check_types()
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.val_every < 1:
            raise ValueError(f"val_every must be >= 1 (validate after every N-th epoch), got {self.val_every}")
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
        if self.loss_explosion_factor < 0 or (0 < self.loss_explosion_factor <= 1):
            raise ValueError(f"loss_explosion_factor must be 0 (off) or > 1, got {self.loss_explosion_factor}")
        if self.schedule not in ("poly", "constant"):
            raise ValueError(f"schedule must be 'poly' or 'constant', got {self.schedule!r}")


class TrainingTask:
    """One training step's loss: ``task(images, labels, generator) -> {"loss", "output", "adv_mask"}``.

    Args:
        model: the model being trained.
        attack: ``callable(model, images, labels, generator=...) -> adv`` or
            ``None`` for standard training.
        adv_fraction: fraction of the batch replaced by adversarial images;
            the first ``adversarial_counts(adv_fraction, B)[0]`` images of the
            (shuffled) batch are attacked unless the call gives ``n_adv``.
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

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
        n_adv: int | None = None,
    ) -> dict:
        """The update's loss on ``images`` whose first ``n_adv`` are replaced by adversarial versions.

        ``n_adv`` is this process's share of the global batch's adversarial
        images (see :func:`adversarial_counts`); by default the share of a
        single process with this batch.
        """
        b = images.shape[0]
        if self.attack is None:
            n_adv = 0
        elif n_adv is None:
            n_adv = adversarial_counts(self.adv_fraction, b)[0]
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


def adversarial_counts(adv_fraction: float, global_batch: int, world: int = 1) -> list[int]:
    """How many adversarial images each of ``world`` processes puts in its share of a global batch.

    The adversarial share is defined on the global batch: the counts add up to
    exactly ``round(adv_fraction * global_batch)`` (halves rounded up), and to
    at least 1 when ``adv_fraction > 0``, so that adversarial training never
    silently trains on clean images only (a batch of 1 per process used to get
    ``round(0.5) == 0``). The count is spread evenly, lower ranks taking the
    remainder, so that every process attacks about as many images.

    Args:
        adv_fraction: fraction in [0, 1].
        global_batch: images per optimiser step over all processes.
        world: number of processes; ``global_batch`` must be a multiple of it.

    Returns:
        ``world`` counts, each at most ``global_batch // world``.
    """
    if not 0.0 <= adv_fraction <= 1.0:
        raise ValueError(f"adv_fraction must be in [0, 1], got {adv_fraction}")
    if world < 1 or global_batch < 1 or global_batch % world:
        raise ValueError(f"global batch {global_batch} must be a positive multiple of the {world} processes")
    total = math.floor(adv_fraction * global_batch + 0.5)
    if adv_fraction > 0:
        total = max(total, 1)
    return [total // world + (1 if r < total % world else 0) for r in range(world)]


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
        epoch, index = divmod(key, len(self.base))
        return self.make(generator(self.seed, "augment", epoch=epoch, step=index))(image, label)


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
        adv = attack(model, images, labels, generator=generator(seed, "val_robust", step=i, device=device))
        with torch.no_grad():
            cm.update(model(adv).argmax(1), labels)
    return cm.compute()


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


@dataclass
class TrainState:
    """Where a run stands; stored in the partial checkpoint, so that a resumed run continues exactly.

    Attributes:
        epoch: 0-based epoch under way (or next to run).
        step: optimiser steps of that epoch already done.
        rows: log rows of the finished epochs.
        loss_sum: sum of the step losses of the epoch under way.
        loss_n: number of those steps (with ``loss_sum``, the epoch's logged loss
            covers the whole epoch even when it was resumed half-way).
        seen: images of the epoch under way (all processes).
        seconds: training seconds of the epoch under way (without the time a
            run spent stopped).
        running_loss: exponential moving average of the step loss, the
            reference of the loss-explosion check.
    """

    epoch: int = 0
    step: int = 0
    rows: list = field(default_factory=list)
    loss_sum: float = 0.0
    loss_n: int = 0
    seen: int = 0
    seconds: float = 0.0
    running_loss: float | None = None

    def start_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch`` with empty running sums."""
        self.epoch, self.step = epoch, 0
        self.loss_sum, self.loss_n, self.seen, self.seconds = 0.0, 0, 0, 0.0


@dataclass
class _Run:
    """What the steps of one :func:`train` call share; built once by :func:`_build_run`."""

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


def _prepare_model(model: nn.Module, cfg: TrainConfig, device: torch.device, world: int) -> nn.Module:
    if world > 1 and device.type == "cuda":
        # Batch statistics over the global batch, as one process would compute them.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _build_run(model, train_set, num_classes, model_cfg, cfg, attack, out, seed, device, meta, max_steps) -> _Run:
    rank, world = _dist_info()
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
    train_model = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    task = TrainingTask(
        train_model, attack, adv_fraction=cfg.adv_fraction, clean_weight=cfg.clean_weight,
        adv_weight=cfg.adv_weight, amp=cfg.amp,
        attack_model=model,  # attack the plain module: DDP must only see the update's backward
    )
    meta = {**(meta or {}), "model": model_cfg, "num_classes": num_classes, "train": asdict(cfg), "seed": seed,
            "version": __version__}
    return _Run(
        model=model, train_model=train_model, opt=build_optimizer(model, cfg), task=task, cfg=cfg,
        train_set=train_set, seed=seed, device=device, rank=rank, world=world, steps_per_epoch=steps_per_epoch,
        n_adv=adversarial_counts(task.adv_fraction, cfg.batch_size, world)[rank],
        partial=out.with_name(out.name + ".partial"), meta=meta, max_steps=max_steps,
    )


# ------------------------------------------------------------------- resume
def _describe_change(key: str, old, new) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if old.get(k) != new.get(k):
                return _describe_change(f"{key}.{k}", old.get(k), new.get(k))
    return f"{key} differs ({old!r} in the checkpoint, {new!r} now)"


def identity_difference(old_meta: dict, meta: dict) -> str | None:
    """The fields of :data:`RUN_IDENTITY` in which two checkpoints' metadata differ (the first described); else None."""
    differ = [key for key in RUN_IDENTITY if old_meta.get(key) != meta.get(key)]
    if not differ:
        return None
    also = f" (and {', '.join(differ[1:])})" if len(differ) > 1 else ""
    return _describe_change(differ[0], old_meta.get(differ[0]), meta.get(differ[0])) + also


def _set_aside(partial: Path, reason: str) -> None:
    target = partial.with_name(f"{partial.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{target.name.rsplit('~', 1)[0]}~{n}")
    os.replace(partial, target)
    log.warning("%s not resumed: %s; set aside as %s, training starts over", partial, reason, target.name)


def _why_not_resumable(run: _Run) -> tuple[dict | None, str | None]:
    try:
        ckpt = load_checkpoint(run.partial, map_location="cpu")
    except ValueError as err:
        return None, f"not readable ({err})"
    reason = identity_difference(ckpt.get("meta") or {}, run.meta)
    if reason is None and "train_state" not in ckpt:
        reason = "written by an older eroseg without the training state"
    bad = _non_finite(ckpt["state_dict"]) if reason is None else []
    if bad:
        reason = f"its weights are not finite ({', '.join(bad[:3])})"
    return ckpt, reason


def resume_state(run: _Run) -> TrainState:
    """Load ``run``'s partial checkpoint into the model and optimiser if it belongs to this run.

    A partial checkpoint whose metadata differs in any field of
    :data:`RUN_IDENTITY`, or that is unreadable or not finite, is renamed
    (``<partial>.set-aside-<time>``, never deleted) with one log line saying
    why, and the run starts over.
    """
    if not run.partial.exists():
        return TrainState()
    ckpt, reason = _why_not_resumable(run)
    if run.world > 1:
        dist.barrier()  # every process has read the partial before the first one moves it
    if reason is not None:
        if run.rank == 0:
            _set_aside(run.partial, reason)
        return TrainState()
    run.model.load_state_dict(ckpt["state_dict"])
    run.opt.load_state_dict(ckpt["optimizer"])
    state = TrainState(**ckpt["train_state"])
    log.info("resuming %s at epoch %d/%d, step %d/%d", run.partial, state.epoch + 1, run.cfg.epochs,
             state.step + 1, run.steps_per_epoch)
    return state


# ---------------------------------------------------------------- one epoch
def epoch_batches(run: _Run, epoch: int) -> list[list[int]]:
    """This process's sample indices for every step of ``epoch`` (its slice of each global batch)."""
    n = len(run.train_set)
    perm = torch.randperm(n, generator=generator(run.seed, "shuffle", epoch=epoch)).tolist()
    if run.cfg.crop_size is not None:
        perm = [epoch * n + i for i in perm]  # keys of KeyedAugment
    b, lo = run.cfg.batch_size, run.rank * run.local_bs
    return [perm[i * b:(i + 1) * b][lo:lo + run.local_bs] for i in range(run.steps_per_epoch)]


def _flip(run: _Run, epoch: int, step: int, images: torch.Tensor, labels: torch.Tensor):
    # Drawn for the global batch and sliced, so N processes flip what one process would.
    g = generator(run.seed, "flip", epoch=epoch, step=step)
    lo = run.rank * run.local_bs
    flip = (torch.rand(run.cfg.batch_size, generator=g) < run.cfg.hflip)[lo:lo + run.local_bs].to(run.device)
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    labels = torch.where(flip.view(-1, 1, 1), labels.flip(-1), labels)
    return images, labels


def _global_mean(value: torch.Tensor, world: int) -> float:
    if world > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def _last_finite_checkpoint(partial: Path) -> str:
    if partial.exists():
        return f"the last finite checkpoint is kept at {partial}"
    return "no checkpoint was written yet"


def check_loss(loss: float, state: TrainState, cfg: TrainConfig, partial: Path) -> None:
    """Stop training on a non-finite loss or one above ``loss_explosion_factor`` x its running average.

    The running average counts as at least 0.01, so that an ordinary batch
    after a near-perfect fit is not taken for an explosion.

    Raises:
        NonFiniteLossError, LossExplosionError: naming the 1-based epoch and
            step and the last finite checkpoint.
    """
    where = f"epoch {state.epoch + 1}, step {state.step + 1}"
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"non-finite loss ({loss}) at {where}; {_last_finite_checkpoint(partial)}")
    factor = cfg.loss_explosion_factor
    if factor and state.running_loss is not None and loss > factor * max(state.running_loss, 0.01):
        raise LossExplosionError(
            f"loss {loss:.4g} at {where} is above {factor:g} x its running average {state.running_loss:.4g} "
            f"(train.loss_explosion_factor; lower the learning rate, or raise the factor or set it to 0); "
            f"{_last_finite_checkpoint(partial)}"
        )


def train_step(run: _Run, state: TrainState, images: torch.Tensor, labels: torch.Tensor) -> float:
    """One optimiser step on this process's share of a global batch; returns the global mean loss."""
    cfg, epoch, step = run.cfg, state.epoch, state.step
    # Any global-RNG use (dropout) is a function of the step too, so a resumed run repeats it.
    torch.manual_seed(stream_seed(run.seed, "global", epoch=epoch, step=step, rank=run.rank))
    images = images.to(run.device, non_blocking=True)
    labels = labels.to(run.device, non_blocking=True)
    if cfg.hflip > 0:
        images, labels = _flip(run, epoch, step, images, labels)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    for group in run.opt.param_groups:
        group["lr"] = lr_at(cfg, epoch * run.steps_per_epoch + step, run.total_steps)
    g = generator(run.seed, "attack", epoch=epoch, step=step, rank=run.rank, device=run.device)
    res = run.task(images, labels, generator=g, n_adv=run.n_adv)
    loss = _global_mean(res["loss"].detach(), run.world)
    check_loss(loss, state, cfg, run.partial)
    run.opt.zero_grad(set_to_none=True)
    res["loss"].backward()
    run.opt.step()
    return loss


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not (enabled and sys.stderr.isatty()), leave=False,
                file=sys.stderr, unit="step")


def train_one_epoch(run: _Run, state: TrainState, progress: bool) -> None:
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


# ------------------------------------------------------- validation, saving
def validation_row(run: _Run, val_set, num_classes: int, robust_attack: Callable | None) -> dict:
    """Clean val mIoU and pixel accuracy, and the small robust val mIoU (first process only)."""
    cfg = run.cfg
    val_bs = cfg.val_batch_size or run.local_bs
    clean = _evaluate_clean(run.model, val_set, val_bs, run.device, num_classes, cfg.amp)
    row = {"val_miou": clean["miou"], "val_pixel_acc": clean["pixel_acc"]}
    if robust_attack is not None and cfg.val_robust_steps > 0 and cfg.val_robust_images > 0:
        subset = torch.utils.data.Subset(val_set, range(min(cfg.val_robust_images, len(val_set))))
        rob = _evaluate_robust(run.model, subset, val_bs, run.device, num_classes, robust_attack, run.seed)
        row["robust_val_miou"] = rob["miou"]
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


def _non_finite(tensors: dict) -> list[str]:
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_partial(run: _Run, state: TrainState, where: str) -> None:
    """Write the partial checkpoint (first process) once every parameter and buffer is checked finite.

    Raises:
        NonFiniteWeightsError: naming ``where`` and the last finite checkpoint, which is left as it is.
    """
    bad = _non_finite(run.model.state_dict())
    n_bad = torch.tensor([len(bad)], device=run.device)
    if run.world > 1:
        dist.all_reduce(n_bad)  # every process stops, not only the one that sees it
    if int(n_bad):
        raise NonFiniteWeightsError(
            f"{len(bad)} parameter/buffer tensors are not finite at {where} ({', '.join(bad[:3])}); "
            f"no checkpoint was written from them; {_last_finite_checkpoint(run.partial)}"
        )
    if run.rank == 0:
        save_checkpoint(run.partial, run.model, run.meta, optimizer=run.opt.state_dict(), train_state=asdict(state))


def end_epoch(run: _Run, state: TrainState, val_set, num_classes: int, robust_attack, log_path: Path) -> None:
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
        _write_log(log_path, state.rows)
    state.start_epoch(epoch + 1)
    save_partial(run, state, f"the end of epoch {epoch + 1}")


def finish(run: _Run, out: Path) -> None:
    """Rename the (checked) partial checkpoint of the last epoch to ``out``."""
    if run.rank == 0:
        os.replace(run.partial, out)
    if run.world > 1:
        dist.barrier()


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
            or ``None`` for standard training.
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

    Returns:
        The final log row (``{"interrupted": True, ...}`` when stopped by ``max_steps``).

    Raises:
        OutputLockedError: another process is writing ``out``.
        TrainingDivergedError: non-finite or exploding loss, or non-finite weights.
    """
    out, log_path = Path(out), Path(log_path)
    with contextlib.ExitStack() as stack:
        if _dist_info()[0] == 0:
            stack.enter_context(exclusive_lock(out))
            for path in (out, out.with_name(out.name + ".partial"), log_path):
                remove_stale_temps(path)  # left by killed writers; the lock says none is alive
        run = _build_run(model, train_set, num_classes, model_cfg, cfg, attack, out, seed, torch.device(device),
                         meta, max_steps)
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
