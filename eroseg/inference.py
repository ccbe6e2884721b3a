"""How a model is run on a whole image: at once (``whole``) or by sliding windows (``slide``), differentiably.

Models trained on crops (Cityscapes: 512x1024 crops of 1024x2048 images) are
evaluated in the literature with sliding-window inference, as mmsegmentation's
``slide`` test mode does: windows of the crop size at the given stride cover
the image (the last window of a row or column is moved back so that it ends at
the image's edge), the model's logits of every window are summed into an
image-sized map, and each pixel's sum is divided by the number of windows that
covered it. A window larger than the image is cut to the image (mmsegmentation
runs the smaller patch without padding); with ``pad`` it is padded
bottom-right with zeros to the crop size instead and its logits are cut back.

:class:`SlidingWindow` is that inference as one ``nn.Module`` forward, so an
attack on the wrapped model perturbs the whole image and its gradient flows
through every window (each pixel's gradient is the sum over the windows that
cover it, divided by the count). Windows run in chunks of ``windows_per_chunk``
(each chunk one forward over ``windows x batch`` crops); while gradients are
recorded each chunk's forward is checkpointed (:func:`torch.utils.checkpoint.checkpoint`),
so only the crops are kept and the chunk's activations are recomputed one
chunk at a time in the backward pass: the memory of a batch is that of one
chunk's forward and backward plus the crops (the image times the windows'
overlap) and the image-sized logit sums, whatever the number of windows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

#: The inference modes of ``evaluation.inference.mode``.
INFERENCE_MODES = ("whole", "slide")


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """The ``evaluation.inference`` block of a config, checked.

    Attributes:
        mode: ``"whole"`` (the model sees the whole image) or ``"slide"``.
        crop: window ``(height, width)`` in pixels (slide only).
        stride: step between windows ``(height, width)`` (slide only; at most the crop, so windows cover the image).
        windows_per_chunk: windows of every image of the batch run in one forward (slide only).
        pad: pad a window larger than the image to the crop size (zeros, bottom-right) instead of cutting it.
    """

    mode: str = "whole"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    windows_per_chunk: int = 1
    pad: bool = False


def _pair(value, key: str) -> tuple[int, int]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value))
    if not ok:
        raise ValueError(f"config key evaluation.inference.{key}: {value!r}; expected [height, width], two "
                         "integers >= 1 (pixels)")
    return int(value[0]), int(value[1])


def inference_spec(config: Mapping | InferenceSpec | None) -> InferenceSpec:
    """Check an ``evaluation.inference`` block (None or empty: whole-image inference).

    Raises:
        ValueError: an unknown key or mode, a crop or stride that is not two positive integers, a stride
            above the crop, or a chunk size below 1 (each names the key, the value and what was expected).
    """
    if isinstance(config, InferenceSpec):
        return config
    config = dict(config or {})
    unknown = sorted(set(config) - {f.name for f in dataclasses.fields(InferenceSpec)})
    if unknown:
        raise ValueError(f"config key evaluation.inference: unknown keys {unknown}; expected mode, crop, stride, "
                         "windows_per_chunk, pad")
    mode = config.get("mode", "whole")
    if mode not in INFERENCE_MODES:
        raise ValueError(f"config key evaluation.inference.mode: {mode!r}; expected one of {INFERENCE_MODES}")
    chunk = config.get("windows_per_chunk", 1)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"config key evaluation.inference.windows_per_chunk: {chunk!r}; expected an integer >= 1")
    if mode == "whole":
        return InferenceSpec(windows_per_chunk=chunk, pad=bool(config.get("pad", False)))
    if "crop" not in config or "stride" not in config:
        raise ValueError("config key evaluation.inference: mode slide needs crop and stride ([height, width] each)")
    crop, stride = _pair(config["crop"], "crop"), _pair(config["stride"], "stride")
    if stride[0] > crop[0] or stride[1] > crop[1]:
        raise ValueError(f"config key evaluation.inference.stride: {list(stride)} is larger than the crop "
                         f"{list(crop)}; windows would leave pixels uncovered (expected stride <= crop)")
    return InferenceSpec("slide", crop, stride, chunk, bool(config.get("pad", False)))


def _starts(size: int, crop: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride``, the last moved back to end at the edge (0 when crop >= size)."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, size) - crop, 0) for i in range(count)]


def window_grid(height: int, width: int, crop: tuple[int, int],
                stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """The windows ``(top, bottom, left, right)`` covering a ``height x width`` image, row by row."""
    rows = [(top, min(top + crop[0], height)) for top in _starts(height, crop[0], stride[0])]
    cols = [(left, min(left + crop[1], width)) for left in _starts(width, crop[1], stride[1])]
    return [(top, bottom, left, right) for top, bottom in rows for left, right in cols]


class SlidingWindow(nn.Module):
    """Sliding-window inference of ``model`` as one differentiable forward (see the module docstring).

    Args:
        model: takes images ``[N, 3, h, w]`` in [0, 1] and returns logits ``[N, C, h, w]``.
        crop: window ``(height, width)``.
        stride: step between windows ``(height, width)``, at most the crop.
        windows_per_chunk: windows per forward (each with every image of the batch).
        pad: pad windows larger than the image to the crop size instead of cutting them.

    Shape:
        - Input: ``[B, 3, H, W]``.
        - Output: ``[B, C, H, W]``, the logits averaged over the windows covering each pixel.
    """

    def __init__(self, model: nn.Module, crop, stride, windows_per_chunk: int = 1, pad: bool = False):
        super().__init__()
        spec = inference_spec({"mode": "slide", "crop": list(crop), "stride": list(stride),
                               "windows_per_chunk": windows_per_chunk, "pad": pad})
        self.model = model
        self.crop, self.stride, self.windows_per_chunk, self.pad = spec.crop, spec.stride, spec.windows_per_chunk, pad

    def extra_repr(self) -> str:
        return f"crop={self.crop}, stride={self.stride}, windows_per_chunk={self.windows_per_chunk}, pad={self.pad}"

    def _run(self, crops: torch.Tensor) -> torch.Tensor:
        """The model on a chunk's crops (padded to the crop size with ``pad``), logits cut back to the crops."""
        h, w = crops.shape[-2:]
        if self.pad and (h < self.crop[0] or w < self.crop[1]):
            crops = F.pad(crops, (0, self.crop[1] - w, 0, self.crop[0] - h))
        logits = self.model(crops)
        if logits.dim() != 4 or logits.shape[-2:] != crops.shape[-2:]:
            raise ValueError(f"sliding-window inference needs logits of the window's size: the model returned "
                             f"{tuple(logits.shape)} for windows of {tuple(crops.shape)}")
        return logits[..., :h, :w]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        windows = window_grid(height, width, self.crop, self.stride)
        total = count = None
        record = torch.is_grad_enabled()
        for first in range(0, len(windows), self.windows_per_chunk):
            chunk = windows[first:first + self.windows_per_chunk]
            crops = torch.cat([images[..., top:bottom, left:right] for top, bottom, left, right in chunk])
            logits = checkpoint(self._run, crops, use_reentrant=False) if record else self._run(crops)
            if total is None:
                total = logits.new_zeros(batch, logits.shape[1], height, width)
                count = images.new_zeros(1, 1, height, width, dtype=logits.dtype)
            for j, (top, bottom, left, right) in enumerate(chunk):
                total[..., top:bottom, left:right] += logits[j * batch:(j + 1) * batch]
                count[..., top:bottom, left:right] += 1
        return total / count


def wrap_for_inference(model: nn.Module, spec: Mapping | InferenceSpec | None) -> nn.Module:
    """``model`` as the evaluation runs it: itself for ``whole``, a :class:`SlidingWindow` around it for ``slide``.

    Args:
        model: a model taking images in [0, 1] (an :class:`eroseg.models.SegmentationModel`).
        spec: the ``evaluation.inference`` config block (or an :class:`InferenceSpec`); None: whole.
    """
    spec = inference_spec(spec)
    if spec.mode == "whole":
        return model
    return SlidingWindow(model, spec.crop, spec.stride, spec.windows_per_chunk, spec.pad)


__all__ = ["INFERENCE_MODES", "InferenceSpec", "SlidingWindow", "inference_spec", "window_grid", "wrap_for_inference"]
