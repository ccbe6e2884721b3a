"""The shared training hyper-parameters: :class:`TrainConfig`, its defaults and its checks.

Every training method gets the same :class:`TrainConfig` (optimiser, schedule, epochs, augmentation,
validation), so a comparison of methods is fair; ``config/config.yaml``'s ``train`` section and
``eroseg train --train`` take their defaults from here, and each field's range from its ``metadata``. The
workflow's schema states the same keys and ranges (a test compares them); the checks here serve the
package's own callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


class ConfigTypeError(TypeError, ValueError):
    """A training parameter of the wrong type (a ``ValueError`` too: bad input, reported in one line)."""


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

    epochs: int = field(default=10, metadata={"minimum": 1})
    batch_size: int = field(default=16, metadata={"minimum": 1})
    optimizer: str = field(default="sgd", metadata={"enum": ["sgd", "adamw"]})
    lr: float = field(default=0.01, metadata={"exclusiveMinimum": 0})
    momentum: float = field(default=0.9, metadata={"minimum": 0, "maximum": 1})
    weight_decay: float = field(default=1e-4, metadata={"minimum": 0})
    schedule: str = field(default="poly", metadata={"enum": ["poly", "constant"]})
    poly_power: float = field(default=0.9, metadata={"minimum": 0})
    warmup_iters: int = field(default=0, metadata={"minimum": 0})
    adv_fraction: float = field(default=0.5, metadata={"minimum": 0, "maximum": 1})
    clean_weight: float = field(default=1.0, metadata={"minimum": 0})
    adv_weight: float = field(default=1.0, metadata={"minimum": 0})
    hflip: float = field(default=0.5, metadata={"minimum": 0, "maximum": 1})
    crop_size: list | None = None
    scale_range: list = field(default_factory=lambda: [1.0, 1.0])
    checkpoint_every: int = field(default=0, metadata={"minimum": 0})
    loss_explosion_factor: float = field(default=1000.0, metadata={"minimum": 0})
    val_batch_size: int | None = field(default=None, metadata={"minimum": 1})
    val_every: int = field(default=1, metadata={"minimum": 1})
    val_robust_images: int = field(default=32, metadata={"minimum": 0})
    val_robust_steps: int = field(default=3, metadata={"minimum": 0})
    amp: bool = True
    channels_last: bool = False
    num_workers: int = field(default=0, metadata={"minimum": 0})
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
        """Check types and ranges; errors name the parameter and what was expected.

        Each field's range is its ``metadata`` (JSON-Schema words: ``minimum``, ``exclusiveMinimum``,
        ``maximum``, ``enum``), the same rules as the workflow schema's ``train`` part (a test compares them).
        """
        self._check_types()
        for f in fields(self):
            _check_range(f.name, getattr(self, f.name), f.metadata)
        if self.crop_size is not None and (len(self.crop_size) != 2 or min(self.crop_size) < 1):
            raise ValueError(f"crop_size must be [height, width] of positive integers, got {self.crop_size!r}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {self.scale_range!r}")
        if 0 < self.loss_explosion_factor <= 1:
            raise ValueError(f"loss_explosion_factor must be 0 (off) or > 1, got {self.loss_explosion_factor}")


def _check_range(name: str, value, rules) -> None:
    """``value`` against the JSON-Schema words of ``rules`` (``None`` passes: the type check allowed it)."""
    if value is None:
        return
    if "enum" in rules and value not in rules["enum"]:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, rules['enum']))}, got {value!r}")
    for word, fails, relation in (("minimum", lambda v, b: v < b, ">="), ("exclusiveMinimum", lambda v, b: v <= b, ">"),
                                  ("maximum", lambda v, b: v > b, "<=")):
        if word in rules and fails(value, rules[word]):
            raise ValueError(f"{name} must be {relation} {rules[word]}, got {value}")
