"""Evaluate a model, clean or under an attack, and keep what tables and figures need.

One call gives the dataset mIoU (from the accumulated confusion matrix), pixel
accuracy, per-class IoU, and per-image counts (true positives, predicted and
labelled pixels per class), from which the worst case over attacks is
recomputed without attacking again. A few examples (image, adversarial image,
label, clean and adversarial prediction) and, for EroSeg, its per-step masks
are returned as arrays so that figures never need to load a model.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import torch

from eroseg.metrics import IGNORE_INDEX, ConfusionMatrix, PerImageStats, per_image_stats

log = logging.getLogger(__name__)


from eroseg.train import batches_by_size  # noqa: E402  (whole images of mixed sizes batch by size)


def _generator(seed: int, batch_index: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + batch_index)
    return g


def predict(model: torch.nn.Module, images: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """Class map ``[B, H, W]`` of ``images`` (no gradients, eval mode assumed)."""
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and images.is_cuda):
        return model(images).argmax(1)


def _stack_padded(arrays: list, fill) -> np.ndarray:
    """Stack arrays whose last two dims may differ (whole images of mixed sizes), padding bottom-right with ``fill``."""
    h = max(a.shape[-2] for a in arrays)
    w = max(a.shape[-1] for a in arrays)
    out = np.full((len(arrays), *arrays[0].shape[:-2], h, w), fill, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, ..., :a.shape[-2], :a.shape[-1]] = a
    return out


def evaluate(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    num_classes: int,
    *,
    attack: Callable | None = None,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    seed: int = 0,
    amp: bool = False,
    num_samples: int = 0,
    record_steps: bool = False,
    ignore_index: int = IGNORE_INDEX,
    max_images: int | None = None,
) -> dict:
    """Evaluate ``model`` on ``dataset``, clean (``attack=None``) or under ``attack``.

    Args:
        model: model taking images in [0, 1].
        dataset: returns ``(image [3,H,W], label [H,W])``; images of one batch must share a size.
        num_classes: number of classes.
        attack: ``callable(model, images, labels, generator=..., callback=...) -> adv``.
        batch_size: images per batch.
        device: torch device.
        seed: seeds each batch's attack generator, so results are reproducible.
        amp: bf16 autocast for predictions on CUDA.
        num_samples: keep this many examples (first images) for the qualitative figure.
        record_steps: record the attack's per-step masks for the first batch's first
            image (EroSeg's ``attacked``/``fooled`` masks, else the fooled region only).
        ignore_index: void label.
        max_images: evaluate only the first ``max_images`` images.

    Returns:
        dict with ``metrics`` (miou, pixel_acc, per_class_iou), ``per_image``
        (:class:`PerImageStats`), ``samples`` (dict of arrays, possibly empty),
        ``steps`` (dict of arrays, possibly empty) and ``seconds``.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    if max_images is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(max_images, len(dataset))))
    cm = ConfusionMatrix(num_classes, ignore_index)
    parts: list[PerImageStats] = []
    samples: dict[str, list] = {k: [] for k in ("image", "adv", "label", "pred_clean", "pred_adv")}
    steps: dict[str, list] = {}
    t0 = time.perf_counter()
    for bi, (images, labels) in enumerate(batches_by_size(dataset, batch_size)):
        images, labels = images.to(device), labels.to(device)
        adv = images
        if attack is not None:
            callback = None
            if record_steps and bi == 0:
                def callback(info: dict) -> None:
                    for key in ("attacked", "fooled", "sensitive", "front"):
                        if info.get(key) is not None:
                            steps.setdefault(key, []).append(info[key][0].detach().cpu().numpy().astype(bool))
            kwargs = {"generator": _generator(seed, bi, device)}
            if callback is not None:
                kwargs["callback"] = callback
            adv = attack(model, images, labels, **kwargs)
        pred = predict(model, adv, amp)
        cm.update(pred, labels)
        parts.append(per_image_stats(pred, labels, num_classes, ignore_index))
        have = len(samples["image"])
        if have < num_samples:
            k = min(num_samples - have, images.shape[0])
            clean_pred = predict(model, images[:k], amp) if attack is not None else pred[:k]
            samples["image"].extend(images[:k].float().cpu().numpy())
            samples["adv"].extend(adv[:k].float().cpu().numpy())
            samples["label"].extend(labels[:k].cpu().numpy())
            samples["pred_clean"].extend(clean_pred.cpu().numpy())
            samples["pred_adv"].extend(pred[:k].cpu().numpy())
    seconds = time.perf_counter() - t0
    per_image = PerImageStats.concat(parts)
    return {
        "metrics": cm.compute(),
        "per_image": per_image,
        "samples": {k: _stack_padded(v, 0.0 if k in ("image", "adv") else ignore_index)
                    for k, v in samples.items() if v},
        "steps": {k: np.stack(v) for k, v in steps.items()},
        "seconds": seconds,
    }
