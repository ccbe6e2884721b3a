"""Segmentation models and checkpoints.

Models come from segmentation-models-pytorch (any architecture, any encoder it
offers) and are wrapped by :class:`SegmentationModel`, which takes images in
[0, 1] and normalises inside. Attacks therefore work in pixel space and eps is
in pixel units (8/255). The wrapper also pads inputs to the multiple of 32
that the encoders need and crops the logits back, so any image size works.

:func:`wrap_model` puts the same wrapper around a model of the user's own:
a torchvision segmentation model (dict output), a Hugging Face
``transformers`` semantic-segmentation model (output object whose logits are
at a fraction of the input resolution) or any module returning logits.

Checkpoints are plain dicts of tensors and JSON-like metadata, saved
atomically and loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import difflib
import errno
import inspect
import logging
import numbers
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from eroseg import __version__
from eroseg.io import atomic_path

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "eroseg-checkpoint-v1"


class SegmentationModel(nn.Module):
    """Wraps a segmentation network so that it takes images in [0, 1].

    Args:
        net: module mapping normalised images ``[B, 3, H, W]`` to logits
            ``[B, C, h, w]``, or to a dict / output object / tuple holding them
            (see ``output_key``).
        mean: per-channel mean used for normalisation, on the [0, 1] scale.
        std: per-channel standard deviation used for normalisation, on the [0, 1] scale.
        pad_multiple: inputs are padded (replicate) to a multiple of this size
            and the logits are cropped back; 1 (default, as in :func:`wrap_model`)
            disables padding. :func:`create_model` passes 32: smp encoders
            downsample by up to 32 and refuse other input sizes.
        output_key: where the logits are in ``net``'s output: a dict key or an
            attribute name. ``None`` (default) takes a tensor as is, the ``"out"``
            or ``"logits"`` entry of a dict (torchvision, ``transformers``), the
            ``logits`` attribute of an output object, or the first element of a
            tuple.
        num_classes: if given, the logits must have this many channels (checked
            at every call, with a message that names both numbers).

    Logits whose size differs from the (padded) input, such as the 1/4
    resolution logits of SegFormer, are upsampled bilinearly to it.

    Shape:
        - Input: ``[B, 3, H, W]`` float in [0, 1].
        - Output: ``[B, C, H, W]`` logits.
    """

    def __init__(
        self,
        net: nn.Module,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pad_multiple: int = 1,
        *,
        output_key: str | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        if isinstance(pad_multiple, bool) or not isinstance(pad_multiple, numbers.Integral) or pad_multiple < 1:
            raise ValueError(f"pad_multiple must be an integer >= 1, got {pad_multiple!r}")
        self.pad_multiple = int(pad_multiple)
        self.output_key = output_key
        self.num_classes = None if num_classes is None else int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"expected images of shape [B, {self.mean.shape[1]}, H, W] in [0, 1], got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        m = self.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        out = _logits(self.net(x), self.output_key)
        if out.dim() != 4:
            raise ValueError(f"the wrapped model returned logits of shape {tuple(out.shape)}; expected [B, C, h, w]")
        if self.num_classes is not None and out.shape[1] != self.num_classes:
            raise ValueError(
                f"the wrapped model returned {out.shape[1]} channels but num_classes is {self.num_classes}; "
                "give the model's own number of classes (its output channels)"
            )
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out[..., :h, :w] if (ph or pw) else out


def _logits(out: Any, key: str | None) -> torch.Tensor:
    """Pick the logits tensor out of a model's output (see ``SegmentationModel``'s ``output_key``)."""
    if key is not None:
        if isinstance(out, Mapping) and key in out:
            found = out[key]
        elif not isinstance(out, Mapping) and hasattr(out, key):
            found = getattr(out, key)
        else:
            have = list(out.keys()) if isinstance(out, Mapping) else [type(out).__name__]
            raise ValueError(f"output_key {key!r} not in the model's output (it has: {have})")
    elif isinstance(out, torch.Tensor):
        found = out
    elif isinstance(out, Mapping):  # torchvision: OrderedDict(out=..., aux=...); transformers ModelOutput
        for name in ("out", "logits"):
            if name in out:
                found = out[name]
                break
        else:
            raise ValueError(
                f"the model returned a dict with keys {list(out.keys())}; pass output_key= naming the logits"
            )
    elif hasattr(out, "logits"):
        found = out.logits
    elif isinstance(out, (tuple, list)) and out:
        found = out[0]
    else:
        raise TypeError(
            f"cannot find logits in the model's output of type {type(out).__name__}; "
            "expected a tensor, a dict with 'out' or 'logits', an object with .logits, or a tuple (logits first)"
        )
    if not isinstance(found, torch.Tensor):
        raise TypeError(f"the model's logits are a {type(found).__name__}, expected a tensor [B, C, h, w]")
    return found


def _check_stats(name: str, values: Sequence[float] | None) -> tuple[float, ...] | None:
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {values}")
    if any(v > 1 for v in values):
        raise ValueError(
            f"{name}={values} is on the 0-255 scale; give it on the [0, 1] scale of the images "
            f"(e.g. {tuple(round(v / 255, 4) for v in values)})"
        )
    return values


def wrap_model(
    model: nn.Module,
    *,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    output_key: str | None = None,
    num_classes: int | None = None,
    pad_multiple: int = 1,
) -> SegmentationModel:
    """Wrap a segmentation model of your own so that attacks, evaluation and training can use it.

    The result takes images in [0, 1] ``[B, 3, H, W]``, normalises them with
    ``mean``/``std``, calls ``model`` and returns logits ``[B, C, H, W]`` at the
    input size. Works with torchvision segmentation models (dict output,
    ``"out"`` key), Hugging Face ``transformers`` semantic-segmentation models
    (``.logits`` at 1/4 resolution, upsampled bilinearly) and any module that
    returns logits. See ``docs/own_model.md``.

    Args:
        model: the network; it receives normalised images.
        mean: per-channel mean on the [0, 1] scale (default ImageNet's);
            ``None`` together with ``std=None`` passes the [0, 1] images unchanged.
        std: per-channel standard deviation on the [0, 1] scale.
        output_key: dict key or attribute holding the logits; ``None`` guesses
            (tensor, ``"out"``, ``"logits"``, ``.logits``, first tuple element).
        num_classes: if given, checked against the logits' channels.
        pad_multiple: pad inputs to a multiple of this size (e.g. 32 for
            encoders that need it) and crop the logits back; 1 (default) does not pad.

    Returns:
        A :class:`SegmentationModel`; ``model`` itself if it already is one.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``mean``/``std`` malformed or on the 0-255 scale, only one
            of them ``None``, or ``pad_multiple < 1``.
    """
    if isinstance(model, SegmentationModel):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"wrap_model expects a torch.nn.Module, got {type(model).__name__}")
    mean, std = _check_stats("mean", mean), _check_stats("std", std)
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither (None, None: no normalisation)")
    if mean is None:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if std is not None and any(v <= 0 for v in std):
        raise ValueError(f"std must be > 0 for every channel, got {std}")
    return SegmentationModel(model, mean, std, pad_multiple, output_key=output_key, num_classes=num_classes)


def _resolve_encoder_weights(encoder_weights: str | None) -> tuple[str | None, Path | None]:
    """Split ``encoder_weights`` into an smp weights name or a local file."""
    if encoder_weights in (None, "", "none", "None"):
        return None, None
    expanded = os.path.expandvars(os.path.expanduser(str(encoder_weights)))
    if os.sep in expanded or expanded.endswith((".pth", ".pt", ".safetensors", ".bin")):
        path = Path(expanded)
        if not path.is_file():
            raise FileNotFoundError(f"encoder_weights: local weights file {path} not found")
        return None, path
    return str(encoder_weights), None


def create_model(
    arch: str = "Unet",
    encoder: str = "resnet18",
    num_classes: int = 21,
    *,
    encoder_weights: str | None = None,
    pad_multiple: int = 32,
    **arch_kwargs: Any,
) -> SegmentationModel:
    """Create a segmentation-models-pytorch model wrapped to take [0, 1] images.

    Args:
        arch: smp architecture name (``Unet``, ``DeepLabV3``, ``DeepLabV3Plus``,
            ``PSPNet``, ``FPN``, ...), case-insensitive.
        encoder: smp encoder name (``resnet18``, ``resnet50``, ``tu-...``).
        num_classes: number of output classes.
        encoder_weights: ``None`` (default, random init), an smp weights name
            such as ``"imagenet"`` (needs a download or a filled cache), or a
            path to a local encoder state-dict file.
        pad_multiple: see :class:`SegmentationModel`; 32 here (its default is 1)
            because smp encoders downsample by up to 32 and refuse other sizes.
        **arch_kwargs: passed to the smp architecture (e.g. ``decoder_channels``).

    Raises:
        ValueError: unknown architecture or encoder (the message lists the valid ones).
        RuntimeError: pretrained weights were asked for but cannot be downloaded.
    """
    import segmentation_models_pytorch as smp

    archs = {k.lower(): cls.__name__ for k, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}
    if arch.lower() not in archs:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(sorted(archs.values()))}")
    encoders = smp.encoders.get_encoder_names()
    if encoder not in encoders and not encoder.startswith("tu-"):
        raise ValueError(
            f"unknown encoder {encoder!r}; valid: smp encoders such as resnet18, resnet50, mobilenet_v2, "
            f"or any timm model as 'tu-<name>' (full list: segmentation_models_pytorch.encoders.get_encoder_names())"
        )
    weights_name, weights_file = _resolve_encoder_weights(encoder_weights)
    check_arch_kwargs(smp.MODEL_ARCHITECTURES_MAPPING[arch.lower()], arch_kwargs, encoder)
    kwargs = dict(arch_kwargs)
    for key in ("decoder_channels", "encoder_output_stride"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    try:
        net = smp.create_model(
            archs[arch.lower()], encoder_name=encoder, encoder_weights=weights_name, classes=num_classes, **kwargs
        )
    except Exception as err:  # hub clients raise many types; turn them into one actionable message
        if weights_name is None:
            raise
        raise RuntimeError(
            f"could not load pretrained encoder weights {weights_name!r} for encoder {encoder!r} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). This machine may be offline. "
            "Either set encoder_weights to null (random init), or download the encoder's state dict on a "
            "machine with internet and set encoder_weights to that local file path."
        ) from err
    if weights_file is not None:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        own = net.encoder.state_dict()
        matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = sorted(set(own) - set(matching))
        if not matching:
            raise ValueError(f"{weights_file}: no tensor matches encoder {encoder!r}; is it that encoder's state dict?")
        if missing:
            log.warning("%s: %d encoder tensors not in the file (kept random): %s", weights_file, len(missing),
                        missing[:5])
        own.update(matching)
        # smp encoders override load_state_dict (dropping classifier keys); load the full dict.
        net.encoder.load_state_dict(own)
    return SegmentationModel(net, pad_multiple=pad_multiple)


#: Arguments that eroseg sets itself (from model.arch/encoder/encoder_weights and the dataset).
_RESERVED_KWARGS = {"encoder_name": "model.encoder", "encoder_weights": "model.encoder_weights",
                    "classes": "the dataset's class count"}


def check_arch_kwargs(arch_cls: type, kwargs: dict, encoder: str = "") -> None:
    """Refuse ``model.kwargs`` that the smp architecture does not take.

    smp architectures forward unknown keyword arguments to the encoder, whose
    smp implementations drop them silently (a typo such as ``decoder_chanels``
    would train a model with the default). Names are checked against the
    architecture's signature; with a timm encoder (``tu-...``) other names are
    passed on to timm, which checks them itself.

    Raises:
        ValueError: naming the unknown key and the closest valid name.
    """
    params = inspect.signature(arch_cls.__init__).parameters
    valid = sorted(n for n, p in params.items()
                   if n != "self" and n not in _RESERVED_KWARGS and p.kind is not p.VAR_KEYWORD)
    for key in kwargs:
        if key in _RESERVED_KWARGS:
            raise ValueError(f"model.kwargs: {key!r} is set by eroseg from {_RESERVED_KWARGS[key]}; remove it")
        if key in valid or encoder.startswith("tu-"):
            continue
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"model.kwargs: unknown parameter {key!r} for {arch_cls.__name__}; {hint}valid: {', '.join(valid)}"
        )


def model_from_config(cfg: dict, num_classes: int) -> SegmentationModel:
    """Build a model from a model config dict (``arch``, ``encoder``, ``encoder_weights``, ``kwargs``)."""
    return create_model(
        cfg.get("arch", "Unet"),
        cfg.get("encoder", "resnet18"),
        num_classes,
        encoder_weights=cfg.get("encoder_weights"),
        **(cfg.get("kwargs") or {}),
    )


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict, **state: Any) -> None:
    """Save ``model``'s state dict with metadata atomically.

    Args:
        path: target file.
        model: the model (a DDP wrapper is unwrapped).
        meta: JSON-like metadata; must contain ``model`` (the model config)
            and ``num_classes`` so that :func:`load_model` can rebuild it.
        **state: further entries (optimizer state, epoch, RNG states...),
            which must be tensors or plain containers for ``weights_only`` loading.
    """
    net = model.module if hasattr(model, "module") else model
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **state,
    }
    with atomic_path(path) as tmp:
        try:
            torch.save(ckpt, tmp)
        except RuntimeError as err:  # torch reports a full disk as "[enforce fail at inline_container.cc...]"
            raise OSError(
                errno.ENOSPC if _low_on_space(tmp) else errno.EIO,
                f"could not write the checkpoint ({str(err).splitlines()[0]}); is the disk full?",
                str(path),
            ) from err


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict with ``weights_only=True``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an eroseg checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return ckpt


def _low_on_space(path: Path, margin: int = 64 * 2**20) -> bool:
    try:
        return shutil.disk_usage(path.parent).free < margin
    except OSError:
        return False


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[SegmentationModel, dict]:
    """Rebuild the model of a checkpoint; returns ``(model in eval mode, meta)``.

    The checkpoint of an external model (``eroseg import-model``) is rebuilt by
    its factory, which runs only if trusted (see :mod:`eroseg.external`).

    Raises:
        ValueError: naming the file, when the metadata lacks the model config or
            the class count, or when the weights do not fit the model it describes.
    """
    ckpt = load_checkpoint(path, map_location)
    meta = ckpt.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("external"), dict):
        return _load_external(path, ckpt, meta, map_location)
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict) or "num_classes" not in meta:
        have = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(
            f"{path}: checkpoint metadata lacks 'model' (the model config) or 'num_classes' (has: {have}); "
            "write checkpoints with eroseg.models.save_checkpoint / eroseg train"
        )
    model_cfg = dict(meta["model"])
    model_cfg["encoder_weights"] = None  # the trained weights below replace any pretrained ones
    model = model_from_config(model_cfg, int(meta["num_classes"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
        raise ValueError(
            f"{path}: weights do not match the model its metadata describes "
            f"({meta['model'].get('arch', 'Unet')}/{meta['model'].get('encoder', 'resnet18')}, "
            f"{meta['num_classes']} classes): {detail}"
        ) from None
    return model.to(map_location).eval(), meta


def _load_external(path, ckpt: dict, meta: dict, map_location) -> tuple[SegmentationModel, dict]:
    """Rebuild the model of a checkpoint ``eroseg import-model`` wrote (see :mod:`eroseg.external`)."""
    from eroseg.external import rebuild_external

    if "num_classes" not in meta:
        raise ValueError(f"{path}: checkpoint of an external model lacks 'num_classes'; import it again")
    model = rebuild_external(meta["external"], int(meta["num_classes"]), where=str(path))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise ValueError(f"{path}: weights do not match the model its factory {meta['external'].get('factory')!r} "
                         f"builds now (was the factory changed? import the model again): "
                         f"{lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)}") from None
    return model.to(map_location).eval(), meta


def check_checkpoint_matches(meta: dict, dataset_name: str, num_classes: int, path: str | os.PathLike) -> None:
    """Refuse a checkpoint trained for other classes or another dataset than the data at hand.

    Args:
        meta: the checkpoint's metadata (from :func:`load_model`).
        dataset_name: the dataset the checkpoint is about to be used on.
        num_classes: that dataset's class count.
        path: the checkpoint file, named in the error.

    Raises:
        ValueError: naming both datasets and both class counts.
    """
    trained_on = meta.get("dataset")
    classes = int(meta.get("num_classes", -1))
    if classes != int(num_classes) or (trained_on is not None and trained_on != dataset_name):
        raise ValueError(
            f"{path}: checkpoint was trained on {trained_on or 'an unnamed dataset'} with {classes} classes, "
            f"but the data is {dataset_name} with {num_classes} classes; use a checkpoint trained on {dataset_name}"
        )
