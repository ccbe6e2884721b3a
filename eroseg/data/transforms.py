"""Joint augmentations that move an image and its label map together.

Each transform is called as ``transform(image, label)`` with an image
float tensor ``[3, H, W]`` and a label int64 tensor ``[H, W]``, and returns
both. Geometric changes use bilinear interpolation for the image and nearest
for the label, so labels stay class ids and never blend into other classes.

Each transform draws from its own optional :class:`torch.Generator`, so a
run can be reproduced without touching the global RNG. Note that DataLoader
workers each get a copy of the transform: with a generator and
``num_workers > 0`` every worker replays the same draws, so reseed per worker
(``worker_init_fn``) or leave the generator out there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from eroseg.data.errors import IGNORE_INDEX

JointTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _check_pair(image: torch.Tensor, label: torch.Tensor, who: str) -> None:
    if image.dim() != 3 or label.dim() != 2 or tuple(image.shape[1:]) != tuple(label.shape):
        raise ValueError(
            f"{who}: image {tuple(image.shape)} and label {tuple(label.shape)}; expected [C,H,W] and [H,W] "
            "with the same H and W"
        )


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator))


class Compose:
    """Apply joint transforms in order.

    Args:
        transforms: the transforms, each ``(image, label) -> (image, label)``.
    """

    def __init__(self, transforms: Sequence[JointTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for t in self.transforms:
            image, label = t(image, label)
        return image, label

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomHorizontalFlip:
    """Mirror image and label left-right with probability ``p``.

    Args:
        p: flip probability in [0, 1].
        generator: random source (the global one if None).
    """

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p={p}; expected a probability in [0, 1]")
        self.p = float(p)
        self.generator = generator

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, label, "RandomHorizontalFlip")
        # Draw even when p is 0 or 1 so the generator's stream does not depend on p.
        if float(torch.rand((), generator=self.generator)) < self.p:
            return image.flip(-1), label.flip(-1)
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomScaleCrop:
    """Rescale by a random factor, pad if needed, then crop a random window.

    The image is resized bilinearly and the label with nearest neighbour.
    Where the scaled pair is smaller than the crop it is padded at the
    bottom/right with 0 (image) and ``ignore_index`` (label), so padding never
    counts as a class.

    Args:
        scale_range: ``(low, high)`` scale factors, drawn uniformly.
        crop_size: output ``(height, width)``, or one int for a square crop.
        ignore_index: label value of padded pixels.
        generator: random source (the global one if None).
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.5, 2.0),
        crop_size: int | tuple[int, int] = 64,
        ignore_index: int = IGNORE_INDEX,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        low, high = (float(v) for v in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"RandomScaleCrop: scale_range={scale_range}; expected 0 < low <= high")
        size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(int(v) for v in crop_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"RandomScaleCrop: crop_size={crop_size}; expected a positive int or (height, width)")
        self.scale_range = (low, high)
        self.crop_size: tuple[int, int] = size  # type: ignore[assignment]
        self.ignore_index = int(ignore_index)
        self.generator = generator

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, label, "RandomScaleCrop")
        h, w = label.shape
        scale = _uniform(*self.scale_range, self.generator)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            image = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
            # nearest on a float copy: interpolate does not take integer tensors.
            label = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].to(label.dtype)
        ch, cw = self.crop_size
        pad_h, pad_w = max(0, ch - nh), max(0, cw - nw)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        H, W = label.shape
        top = int(torch.randint(0, H - ch + 1, (), generator=self.generator))
        left = int(torch.randint(0, W - cw + 1, (), generator=self.generator))
        return image[:, top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]

    def __repr__(self) -> str:
        return (f"RandomScaleCrop(scale_range={self.scale_range}, crop_size={self.crop_size}, "
                f"ignore_index={self.ignore_index})")


__all__ = ["Compose", "JointTransform", "RandomHorizontalFlip", "RandomScaleCrop"]
