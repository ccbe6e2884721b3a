"""Attack images and save what a person looks at: adversarial PNGs, predictions, side-by-side pictures.

Used by ``eroseg attack``. Adversarial images are saved as 8-bit PNG
(lossless); note that quantising to 8 bits moves each pixel by at most 0.5/255,
so a saved image is within ``eps + 0.5/255`` of the original in Linf (the
tensors returned by the attacks are within eps).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image

from eroseg.io import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def load_image(path: str | Path) -> torch.Tensor:
    """Read an RGB image as a float tensor ``[3, H, W]`` in [0, 1]."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def folder_images(folder: str | Path) -> list[Path]:
    """Image files of a folder, sorted; a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path, palette: list | None = None) -> None:
    if palette is not None:
        im = Image.fromarray(array.astype(np.uint8), mode="P")
        flat = [c for rgb in palette for c in rgb]
        im.putpalette(flat + [0] * (768 - len(flat)))
    else:
        im = Image.fromarray(array)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def _full_palette(palette: list) -> list:
    pal = [tuple(c) for c in palette] + [(0, 0, 0)] * (256 - len(palette))
    pal[255] = (224, 224, 192)
    return pal


def attack_and_save(
    model: torch.nn.Module,
    items: Iterable[tuple[str, torch.Tensor, torch.Tensor | None]],
    attack: Callable,
    out_dir: str | Path,
    palette: list,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    target_from_prediction: bool = True,
) -> list[dict]:
    """Attack each image and write ``adv/<id>.png``, ``pred_clean/``, ``pred_adv/`` and ``side_by_side/``.

    Args:
        model: model taking images in [0, 1].
        items: ``(id, image [3,H,W], label [H,W] or None)``. Without a label
            the clean prediction is attacked (the usual choice for unlabelled images).
        attack: ``callable(model, images, labels, generator=...) -> adv``.
        out_dir: output folder.
        palette: class colours for the prediction PNGs.
        device: torch device.
        seed: seed of the attack's random start.

    Returns:
        One dict per image: id, Linf distance, pixel agreement of the adversarial
        prediction with the label (or with the clean prediction).
    """
    out = Path(out_dir)
    pal = _full_palette(palette)
    rows = []
    model = model.to(device).eval()
    for i, (name, image, label) in enumerate(items):
        x = image.unsqueeze(0).to(device)
        with torch.no_grad():
            clean = model(x).argmax(1)
        y = label.unsqueeze(0).to(device) if label is not None else clean
        g = torch.Generator(device=torch.device(device)).manual_seed(seed * 1_000_003 + i)
        adv = attack(model, x, y, generator=g)
        with torch.no_grad():
            pred = model(adv).argmax(1)
        valid = y != 255
        agree = float(((pred == y) & valid).sum() / valid.sum().clamp_min(1))
        _save_png(_to_uint8(adv[0]), out / "adv" / f"{name}.png")
        _save_png(clean[0].cpu().numpy(), out / "pred_clean" / f"{name}.png", pal)
        _save_png(pred[0].cpu().numpy(), out / "pred_adv" / f"{name}.png", pal)
        colour = np.asarray(pal, dtype=np.uint8)
        panels = [_to_uint8(x[0]), _to_uint8(adv[0]), colour[clean[0].cpu().numpy()], colour[pred[0].cpu().numpy()]]
        if label is not None:
            panels.insert(2, colour[label.cpu().numpy().clip(0, 255)])
        gap = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
        row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
        _save_png(row, out / "side_by_side" / f"{name}.png")
        rows.append({"id": name, "linf": float((adv - x).abs().max()), "pixel_acc": agree})
    return rows
