"""Training objectives: one :class:`TrainingTask` subclass per objective, picked by name from :data:`TASKS`.

A task is called once per optimiser step, ``task(images, labels, generator=..., n_adv=...)``, and returns
``{"loss", "output", "adv_mask"}``; the loop (:mod:`eroseg.training.loop`) does the rest (augmentation,
backward, optimiser, logging), the same for every objective.

- ``adversarial`` (:class:`AdversarialTraining`, the default): a share ``adv_fraction`` of each batch is
  replaced by the method's attack's examples (no attack: standard training); cross-entropy over the mixed
  batch. PGD-AT, SegPGD-AT, CosPGD-AT and EroSeg-AT are this objective with their attacks.
- ``trades`` (:class:`TradesTraining`): TRADES (Zhang et al., ICML 2019, https://arxiv.org/abs/1901.08573)
  per pixel: cross-entropy on the clean images plus ``beta`` times the mean over valid pixels of
  ``KL(p(x) || p(x_adv))``, ``x_adv`` maximising that KL in the eps ball (:func:`trades_adversarial`).

The config names an objective as ``methods.<m>.objective: {name: trades, beta: 6}`` and the CLI as
``eroseg train --objective '{"name": "trades", "beta": 6}'``; :func:`check_objective` validates it and
:func:`create_task` builds it. A new objective is a subclass registered in :data:`TASKS`
(docs/extending.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from eroseg.attacks.core import eval_mode, project
from eroseg.conventions import IGNORE_INDEX, autocast
from eroseg.numbers import resolve_attack_params
from eroseg.training.config import TrainConfig

#: Marks an objective parameter without a default in :attr:`TrainingTask.PARAMS`.
REQUIRED = "<required>"


class TrainingTask:
    """A training objective: ``task(images, labels, generator, n_adv) -> {"loss", "output", "adv_mask"}``.

    Subclasses set :attr:`PARAMS` (the objective's parameters and their defaults)
    and implement :meth:`build` and :meth:`__call__`.

    Attributes:
        adv_fraction: share of each global batch with adversarial examples; the loop passes each process
            its count (:func:`adversarial_counts`) as ``n_adv``.
    """

    #: The objective's parameters (keys of ``methods.<m>.objective`` besides ``name``) with their defaults
    #: (:data:`REQUIRED`: no default; ``None``: left out of the stored objective, the task decides).
    PARAMS: ClassVar[dict[str, Any]] = {}
    adv_fraction: float = 0.0

    @classmethod
    def build(cls, model: nn.Module, *, attack: Callable | None, cfg: TrainConfig, attack_model: nn.Module,
              **params) -> TrainingTask:
        """The task for ``model`` from the method's attack, the shared config and the objective's ``params``."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
                 n_adv: int | None = None) -> dict:
        raise NotImplementedError


class AdversarialTraining(TrainingTask):
    """Adversarial training with the method's attack; standard training without one.

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
        attack_model: the module the attack runs on (the plain module when ``model`` is DDP-wrapped).
    """

    #: ``None``: the value of the shared :class:`TrainConfig` (``train.adv_fraction`` ...).
    PARAMS: ClassVar[dict[str, Any]] = {"adv_fraction": None, "clean_weight": None, "adv_weight": None}

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
        if not 0.0 <= adv_fraction <= 1.0:
            raise ValueError(f"adv_fraction must be in [0, 1], got {adv_fraction}")
        self.model = model
        self.attack_model = attack_model if attack_model is not None else model
        self.attack = attack
        self.adv_fraction = adv_fraction if attack is not None else 0.0
        self.clean_weight = clean_weight
        self.adv_weight = adv_weight
        self.ignore_index = ignore_index
        self.amp = amp

    @classmethod
    def build(cls, model, *, attack, cfg, attack_model, adv_fraction=None, clean_weight=None, adv_weight=None):
        """The task with ``train``'s ``adv_fraction`` and loss weights unless the objective sets its own."""
        def pick(value, default):
            return default if value is None else value

        return cls(model, attack, adv_fraction=pick(adv_fraction, cfg.adv_fraction),
                   clean_weight=pick(clean_weight, cfg.clean_weight), adv_weight=pick(adv_weight, cfg.adv_weight),
                   amp=cfg.amp, attack_model=attack_model)

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
        with autocast(images.device, self.amp):
            output = self.model(images)
        pixel_loss = F.cross_entropy(output.float(), labels, ignore_index=self.ignore_index, reduction="none")
        valid = (labels != self.ignore_index).float()
        w = torch.where(adv_mask, self.adv_weight, self.clean_weight).to(pixel_loss.dtype).view(b, 1, 1)
        loss = (pixel_loss * w).sum() / (valid * w).sum().clamp_min(1.0)
        return {"loss": loss, "output": output, "adv_mask": adv_mask}


def adversarial_counts(adv_fraction: float, global_batch: int, world: int = 1) -> list[int]:
    """How many adversarial images each of ``world`` processes puts in its share of a global batch.

    The adversarial share is defined on the global batch: the counts add up to
    exactly ``round(adv_fraction * global_batch)`` (halves rounded up), and to
    at least 1 when ``adv_fraction > 0``, so that adversarial training never
    silently trains on clean images only (a batch of 1 per process would
    otherwise get ``round(0.5) == 0``). The count is spread evenly, lower ranks
    taking the remainder, so that every process attacks about as many images.

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


# --------------------------------------------------------------------------------------------- TRADES
def pixel_kl(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``KL(softmax(clean) || softmax(adv))``, summed over classes.

    Shape:
        logits ``[B, C, H, W]`` -> ``[B, H, W]``.
    """
    clean_log_p = F.log_softmax(clean_logits.float(), dim=1)
    adv_log_p = F.log_softmax(adv_logits.float(), dim=1)
    return (clean_log_p.exp() * (clean_log_p - adv_log_p)).sum(1)


def mean_valid_kl(clean_logits: torch.Tensor, adv_logits: torch.Tensor, labels: torch.Tensor,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """:func:`pixel_kl` averaged over the valid (non-void) pixels of the batch (0 when there are none)."""
    valid = labels != ignore_index
    return (pixel_kl(clean_logits, adv_logits) * valid).sum() / valid.sum().clamp_min(1)


def trades_loss(clean_logits: torch.Tensor, adv_logits: torch.Tensor, labels: torch.Tensor, beta: float,
                ignore_index: int = IGNORE_INDEX) -> dict[str, torch.Tensor]:
    """TRADES per pixel: ``CE(clean, y) + beta * KL(p(clean) || p(adv))``, each averaged over valid pixels.

    Void pixels (``ignore_index``) count in neither term. Gradients flow through both logits (the clean
    distribution of the KL is not detached, as in Zhang et al.'s reference).

    Args:
        clean_logits: logits of the clean images ``[B, C, H, W]``.
        adv_logits: logits of their adversarial versions, same shape.
        labels: ``[B, H, W]`` with ``ignore_index`` for void pixels.
        beta: weight of the KL term (6 in the paper).
        ignore_index: void label.

    Returns:
        ``{"loss", "ce", "kl"}`` (scalars).
    """
    ce = F.cross_entropy(clean_logits.float(), labels, ignore_index=ignore_index, reduction="none")
    valid = labels != ignore_index
    ce = (ce * valid).sum() / valid.sum().clamp_min(1)
    kl = mean_valid_kl(clean_logits, adv_logits, labels, ignore_index)
    return {"loss": ce + beta * kl, "ce": ce, "kl": kl}


def trades_adversarial(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
                       step_size: float, steps: int, generator: torch.Generator | None = None,
                       ignore_index: int = IGNORE_INDEX, amp: bool = False, start_noise: float = 0.001,
                       ) -> torch.Tensor:
    """TRADES' inner maximisation: Linf PGD on the per-pixel KL from the clean prediction.

    Starts at ``images + start_noise * N(0, 1)`` (the clean point has zero KL and zero gradient), then
    ``steps`` signed steps of ``step_size`` on the mean over valid pixels of ``KL(p(x) || p(x_adv))``,
    each projected onto the eps ball and [0, 1]. The model runs in eval mode (restored afterwards) and gets
    no gradients.

    Returns:
        ``x_adv`` (detached), with ``|x_adv - images| <= eps`` and values in [0, 1].
    """
    images = images.detach()
    with eval_mode(model), torch.enable_grad():
        with torch.no_grad(), autocast(images.device, amp):
            clean_logits = model(images).float()
        noise = torch.randn(images.shape, generator=generator, device=generator.device if generator is not None
                            else images.device, dtype=images.dtype).to(images.device)
        delta = project(images, start_noise * noise, eps, "linf")
        for _ in range(steps):
            delta.requires_grad_(True)
            with autocast(images.device, amp):
                adv_logits = model(images + delta)
            kl = mean_valid_kl(clean_logits, adv_logits, labels, ignore_index)
            (grad,) = torch.autograd.grad(kl, delta)
            delta = project(images, delta.detach() + step_size * grad.sign(), eps, "linf")
    return (images + delta).detach()


class TradesTraining(TrainingTask):
    """TRADES for segmentation: every image's clean loss plus ``beta`` x the KL to its adversarial version.

    The adversarial images come from :func:`trades_adversarial` (model in eval mode); the update runs one
    forward pass in train mode over the clean and the adversarial images together (batch norm sees both,
    as in the mixed batches of :class:`AdversarialTraining`; Zhang et al.'s reference runs them as separate
    passes), then :func:`trades_loss`.

    Args:
        model: the model being trained.
        eps, step_size, steps: the inner maximisation's Linf ball, step and steps
            (``adversarial_training`` in the config).
        beta: weight of the KL term (default 6, as in the paper).
        ignore_index: void label.
        amp: bf16 autocast on CUDA.
        attack_model: the module the inner maximisation runs on (the plain module under DDP).
    """

    PARAMS: ClassVar[dict[str, Any]] = {"beta": 6.0, "eps": REQUIRED, "step_size": REQUIRED,
                                             "steps": REQUIRED}
    adv_fraction = 1.0  # every image gets its adversarial version

    def __init__(self, model: nn.Module, *, eps: float, step_size: float, steps: int, beta: float = 6.0,
                 ignore_index: int = IGNORE_INDEX, amp: bool = False, attack_model: nn.Module | None = None):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
            raise ValueError(f"beta must be a number >= 0, got {beta!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        self.model = model
        self.attack_model = attack_model if attack_model is not None else model
        self.eps, self.step_size, self.steps, self.beta = eps, step_size, steps, float(beta)
        self.ignore_index, self.amp = ignore_index, amp

    @classmethod
    def build(cls, model, *, attack, cfg, attack_model, beta=6.0, eps=None, step_size=None, steps=None):
        """The task from the objective's parameters; numbers as ``8/255`` and ``eps/4`` are accepted."""
        if attack is not None:
            raise ValueError("objective trades makes its own adversarial examples; give no training attack "
                             "(--attack none; methods.<m>.attack: null)")
        budget = resolve_attack_params({"eps": eps, "step_size": step_size})
        return cls(model, eps=budget["eps"], step_size=budget["step_size"], steps=steps, beta=beta, amp=cfg.amp,
                   attack_model=attack_model)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None,
                 n_adv: int | None = None) -> dict:
        """The TRADES loss of the batch (``n_adv`` is ignored: every image gets its adversarial version)."""
        b = images.shape[0]
        adv = trades_adversarial(self.attack_model, images, labels, eps=self.eps, step_size=self.step_size,
                                 steps=self.steps, generator=generator, ignore_index=self.ignore_index,
                                 amp=self.amp)
        self.model.train()
        with autocast(images.device, self.amp):
            output = self.model(torch.cat([images, adv]))
        terms = trades_loss(output[:b], output[b:], labels, self.beta, self.ignore_index)
        adv_mask = torch.ones(b, dtype=torch.bool, device=images.device)
        return {"loss": terms["loss"], "output": output[:b], "adv_mask": adv_mask, "ce": terms["ce"],
                "kl": terms["kl"]}


#: Training objectives by name (``methods.<m>.objective.name``, ``eroseg train --objective``).
TASKS: dict[str, type[TrainingTask]] = {"adversarial": AdversarialTraining, "trades": TradesTraining}

#: The objective of a method whose config names none.
DEFAULT_OBJECTIVE = {"name": "adversarial"}


def check_objective(objective: dict | None, where: str = "--objective",
                    tasks: dict[str, type[TrainingTask]] | None = None) -> dict:
    """``objective`` checked against :data:`TASKS` and completed with its defaults.

    Args:
        objective: ``{"name": ..., <parameters>}``; ``None`` or ``{}``: :data:`DEFAULT_OBJECTIVE`.
        where: the flag or config key named in errors.
        tasks: the registry (default :data:`TASKS`).

    Returns:
        ``{"name": ..., **parameters}`` with every parameter present (the run identity stores this).

    Raises:
        ValueError: unknown name (listing the valid ones), unknown or missing parameter.
    """
    tasks = TASKS if tasks is None else tasks
    spec = dict(objective or DEFAULT_OBJECTIVE)
    name = spec.pop("name", None)
    if not isinstance(name, str) or name not in tasks:
        raise ValueError(f"{where}.name: unknown training objective {name!r}; valid: {', '.join(sorted(tasks))}")
    allowed = tasks[name].PARAMS
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: objective {name!r} has no parameter(s) {unknown}; valid: {sorted(allowed)}")
    missing = sorted(k for k, v in allowed.items() if v is REQUIRED and k not in spec)
    if missing:
        raise ValueError(f"{where}: objective {name!r} needs {missing}")
    defaults = {k: v for k, v in allowed.items() if v is not None and v is not REQUIRED}
    return {"name": name, **defaults, **spec}


def create_task(objective: dict | None, model: nn.Module, *, attack: Callable | None, cfg: TrainConfig,
                attack_model: nn.Module | None = None, where: str = "--objective",
                tasks: dict[str, type[TrainingTask]] | None = None) -> TrainingTask:
    """The :class:`TrainingTask` of ``objective`` (see :func:`check_objective`) for ``model``."""
    tasks = TASKS if tasks is None else tasks
    spec = check_objective(objective, where, tasks)
    name = spec.pop("name")
    try:
        return tasks[name].build(model, attack=attack, cfg=cfg,
                                 attack_model=attack_model if attack_model is not None else model, **spec)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: objective {name!r}: {err}") from None
