"""Checkpoints of a training run: the partial checkpoint, resuming it, and the guards that keep it finite.

A partial checkpoint (``<out>.partial``, written atomically at the end of every epoch and every
``checkpoint_every`` steps) is resumed only when everything that defines the run matches
(:data:`RUN_IDENTITY`); otherwise it is set aside, never deleted. Nothing non-finite is ever written: a NaN or
exploding loss (:func:`check_loss`) or non-finite weights (:func:`save_partial`) stop training with an error
that names the epoch, the step and the last finite checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from eroseg.models import load_checkpoint, save_checkpoint
from eroseg.training.config import TrainConfig

if TYPE_CHECKING:
    from eroseg.training.loop import Run

log = logging.getLogger(__name__)


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
RUN_IDENTITY = ("model", "train", "method", "objective", "attack", "attack_params", "seed", "dataset", "num_classes",
                "version")


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


def _non_finite(tensors: dict) -> list[str]:
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_partial(run: Run, state: TrainState, where: str) -> None:
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


def finish(run: Run, out: Path) -> None:
    """Rename the (checked) partial checkpoint of the last epoch to ``out``."""
    if run.rank == 0:
        os.replace(run.partial, out)
    if run.world > 1:
        dist.barrier()


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


def _why_not_resumable(run: Run) -> tuple[dict | None, str | None]:
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


def resume_state(run: Run) -> TrainState:
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
