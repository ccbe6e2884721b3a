"""Attack images and save what a person looks at: adversarial PNGs, predictions, side-by-side pictures.

Used by ``eroseg attack``. Adversarial images are saved as 8-bit PNG
(lossless); note that quantising to 8 bits moves each pixel by at most 0.5/255,
so a saved image is within ``eps + 0.5/255`` of the original in Linf (the
tensors returned by the attacks are within eps).

An image that cannot be read, or that is larger than the pixel budget
(``max_pixels``: an attack keeps several copies of the image's activations, so
a 3000x3000 image on a CPU would take over 10 GB), is skipped with a warning
and listed in the summary; the other images are still attacked.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eroseg.conventions import IMAGE_SUFFIXES, full_palette
from eroseg.io import atomic_path, atomic_write_text
from eroseg.seeds import generator

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["id", "linf", "pixel_acc", "skipped"]

#: Name of the per-image summary that :func:`attack_to_folder` writes in its output folder.
SUMMARY_FILE = "summary.csv"


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
        im.putpalette([c for rgb in palette for c in rgb])
    else:
        im = Image.fromarray(array)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def _title_font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    """``panel`` (uint8 ``[H, W, 3]``) under a white strip holding ``title`` (widened to fit it)."""
    from PIL import ImageDraw

    font = _title_font()
    strip = font.getbbox("Ag")[3] + 4
    width = max(panel.shape[1], int(font.getlength(title)) + 4)
    canvas = Image.new("RGB", (width, panel.shape[0] + strip), "white")
    canvas.paste(Image.fromarray(panel), (0, strip))
    ImageDraw.Draw(canvas).text((2, 1), title, fill="black", font=font)
    return np.asarray(canvas)


def side_by_side(
    x: torch.Tensor, adv: torch.Tensor, clean: np.ndarray, pred: np.ndarray, label: np.ndarray | None, pal: list
) -> np.ndarray:
    """The picture a person looks at: titled panels image | adversarial | perturbation x k | [label] | predictions.

    The perturbation is shown as ``0.5 + k * (adv - x)``, ``k`` chosen so that
    the largest change reaches half the range (and named in the panel title).
    """
    colour = np.asarray(pal, dtype=np.uint8)
    delta = adv - x
    amp = max(1, round(0.5 / max(float(delta.abs().max()), 1e-12)))
    panels = [(_to_uint8(x), "image"), (_to_uint8(adv), "adversarial"),
              (_to_uint8(0.5 + amp * delta), f"perturbation x{amp}")]
    if label is not None:
        panels.append((colour[label.clip(0, 255)], "label"))
    panels += [(colour[clean], "prediction (clean)"), (colour[pred], "prediction (adv)")]
    titled = [_titled(p, t) for p, t in panels]
    gap = np.full((titled[0].shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([p for panel in titled for p in (panel, gap)][:-1], axis=1)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="attack", unit="image", disable=not (enabled and sys.stderr.isatty()),
                file=sys.stderr)


def _skip(name: str, reason: str) -> dict:
    log.warning("%s: skipped (%s)", name, reason)
    return {"id": name, "linf": "", "pixel_acc": "", "skipped": reason}


def attack_and_save(
    model: torch.nn.Module,
    items: Sequence[tuple[str, Callable[[], tuple[torch.Tensor, torch.Tensor | None]]]],
    attack: Callable,
    out_dir: str | Path,
    palette: list,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    max_pixels: int | None = None,
    progress: bool = False,
) -> list[dict]:
    """Attack each image and write ``adv/<id>.png``, ``pred_clean/``, ``pred_adv/`` and ``side_by_side/``.

    Args:
        model: model taking images in [0, 1].
        items: ``(id, load)`` pairs; ``load()`` returns ``(image [3,H,W], label [H,W] or None)``.
            Without a label the clean prediction is attacked (the usual choice
            for unlabelled images). An image whose ``load()`` raises ``OSError``
            or ``ValueError`` (not an image, truncated) is skipped.
        attack: ``callable(model, images, labels, generator=...) -> adv``.
        out_dir: output folder.
        palette: class colours for the prediction PNGs.
        device: torch device.
        seed: seed of the attack's random start.
        max_pixels: images with more pixels (H x W) are skipped; ``None``: no budget.
        progress: show a progress bar (on a terminal).

    Returns:
        One dict per item (columns :data:`SUMMARY_COLUMNS`): id, Linf distance,
        pixel agreement of the adversarial prediction with the label (or with the
        clean prediction), and for a skipped image the reason (else empty).
    """
    out = Path(out_dir)
    pal = full_palette(palette)
    rows = []
    model = model.to(device).eval()
    bar = _progress(len(items), progress)
    for i, (name, load) in enumerate(items):
        bar.update(1)
        try:
            image, label = load()
        except (OSError, ValueError) as err:
            rows.append(_skip(name, f"not readable: {str(err).splitlines()[0]}"))
            continue
        h, w = image.shape[-2:]
        if max_pixels and h * w > max_pixels:
            rows.append(_skip(name, f"{w}x{h} = {h * w / 1e6:.1f} MP, above the budget of {max_pixels / 1e6:.1f} MP "
                                    "(--max-pixels; 0 lifts it)"))
            continue
        rows.append(_attack_one(model, name, image, label, attack, out, pal, device,
                                generator(seed, "export", step=i, device=device)))
    bar.close()
    return rows


def _attack_one(model, name, image, label, attack, out: Path, pal: list, device, g: torch.Generator) -> dict:
    x = image.unsqueeze(0).to(device)
    with torch.no_grad():
        clean = model(x).argmax(1)
    y = label.unsqueeze(0).to(device) if label is not None else clean
    adv = attack(model, x, y, generator=g)
    with torch.no_grad():
        pred = model(adv).argmax(1)
    valid = y != 255
    agree = float(((pred == y) & valid).sum() / valid.sum().clamp_min(1))
    clean_np, pred_np = clean[0].cpu().numpy(), pred[0].cpu().numpy()
    _save_png(_to_uint8(adv[0]), out / "adv" / f"{name}.png")
    _save_png(clean_np, out / "pred_clean" / f"{name}.png", pal)
    _save_png(pred_np, out / "pred_adv" / f"{name}.png", pal)
    label_np = label.cpu().numpy() if label is not None else None
    _save_png(side_by_side(x[0], adv[0], clean_np, pred_np, label_np, pal), out / "side_by_side" / f"{name}.png")
    return {"id": name, "linf": float((adv - x).abs().max()), "pixel_acc": agree, "skipped": ""}


def dataset_items(dataset, max_images: int | None = None) -> list[tuple[str, Callable]]:
    """``(id, load)`` pairs of :func:`attack_and_save` for the first ``max_images`` images of a dataset split.

    The id is the reader's sample id (``dataset.ids``), else the index as five digits.
    """
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    ids = getattr(dataset, "ids", [f"{i:05d}" for i in range(len(dataset))])
    return [(str(ids[i]), lambda i=i: dataset[i]) for i in range(n)]


def folder_items(folder: str | Path, max_images: int | None = None) -> list[tuple[str, Callable]]:
    """``(id, load)`` pairs of :func:`attack_and_save` for the images of a folder (no labels), id = file stem."""
    return [(f.stem, lambda f=f: (load_image(f), None)) for f in folder_images(folder)[:max_images]]


def write_summary(path: str | Path, rows: Sequence[dict]) -> None:
    """The rows of :func:`attack_and_save` as a CSV with columns :data:`SUMMARY_COLUMNS` (atomically)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def attack_to_folder(model: torch.nn.Module, items, attack: Callable, out_dir: str | Path, palette: list,
                     **options) -> list[dict]:
    """:func:`attack_and_save`, then :data:`SUMMARY_FILE` in ``out_dir``; fails when no image could be attacked.

    Args:
        model, items, attack, out_dir, palette: as :func:`attack_and_save`.
        **options: ``device``, ``seed``, ``max_pixels``, ``progress`` of :func:`attack_and_save`.

    Returns:
        The summary's rows.

    Raises:
        ValueError: every image was skipped (the message names the summary that says why).
    """
    summary = Path(out_dir) / SUMMARY_FILE
    rows = attack_and_save(model, items, attack, out_dir, palette, **options)
    write_summary(summary, rows)
    skipped = [r["id"] for r in rows if r["skipped"]]
    if len(skipped) == len(rows):
        raise ValueError(f"{out_dir}: no image attacked; all {len(rows)} skipped (reasons in {summary})")
    log.info("attacked %d images -> %s%s", len(rows) - len(skipped), out_dir,
             f"; skipped {len(skipped)} (listed in {summary}): {', '.join(skipped[:5])}" if skipped else "")
    return rows
