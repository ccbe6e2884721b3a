"""Cost of the object summaries (eroseg.objects) that an evaluation keeps per image for the size table.

Per image and evaluated setting, ``eroseg evaluate`` with ``objects`` finds the ground-truth connected components
once (:class:`eroseg.objects.LabelObjects`), then scores the clean prediction and each attacked prediction (the
result and, for SEA or restarts, each component). This prints, for label maps of the embedded default's size up to
Cityscapes' full 1024x2048, the seconds per image of finding the components, of one clean summary and of one
attacked summary, and the number of components, on label maps made like real ones: a coarse grid of random
classes blown up to the full size (regions of many pixels that touch their neighbours), a void border between
regions, and predictions that differ from the label in random blocks.

    python benchmarks/bench_objects.py [--sizes 32x32 512x1024 1024x2048] [--classes 19] [--repeats 3]

Figures are wall seconds (numpy, one thread); the size table's cost is the sum over images and settings.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from eroseg.objects import LabelObjects


def label_map(h: int, w: int, classes: int, rng: np.random.Generator, cell: int) -> np.ndarray:
    """Random classes on a grid of ``cell``-pixel squares, void (255) on the grid lines between squares."""
    coarse = rng.integers(0, classes, size=(-(-h // cell), -(-w // cell)))
    label = np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:h, :w].astype(np.int64)
    if cell >= 8:
        label[::cell, :] = 255
        label[:, ::cell] = 255
    return label


def prediction(label: np.ndarray, classes: int, rng: np.random.Generator, share: float, block: int) -> np.ndarray:
    """``label`` (void as class 0) with about ``share`` of its ``block``-pixel squares set to another class."""
    pred = np.where(label == 255, 0, label)
    h, w = label.shape
    flip = rng.random((-(-h // block), -(-w // block))) < share
    wrong = np.repeat(np.repeat(flip, block, 0), block, 1)[:h, :w]
    return np.where(wrong, (pred + 1) % classes, pred)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall seconds of ``repeats`` calls of ``fn`` and its last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def measure(h: int, w: int, classes: int, repeats: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    cell = max(4, min(h, w) // 16)
    label = label_map(h, w, classes, rng, cell)
    clean = prediction(label, classes, rng, 0.1, max(2, cell // 2))
    attacked = prediction(label, classes, rng, 0.6, max(2, cell // 2))
    find, objects = timed(lambda: LabelObjects(label), repeats)
    clean_s, _ = timed(lambda: objects.clean_summary(clean), repeats)
    adv_s, _ = timed(lambda: objects.attacked_summary(clean, attacked), repeats)
    return {"size": f"{h}x{w}", "components": objects.n, "find_s": find, "clean_s": clean_s, "attacked_s": adv_s}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["32x32", "512x512", "512x1024", "1024x2048"],
                        help="label map sizes HxW (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=19, help="classes (default: %(default)s, Cityscapes)")
    parser.add_argument("--repeats", type=int, default=3, help="calls per figure, median kept (default: %(default)s)")
    args = parser.parse_args(argv)
    print(f"{'size':>10} {'components':>10} {'find (s)':>9} {'clean (s)':>9} {'attacked (s)':>12}")
    for text in args.sizes:
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            parser.error(f"--sizes: expected HxW such as 512x1024, got {text!r}")
        row = measure(h, w, args.classes, args.repeats)
        print(f"{row['size']:>10} {row['components']:>10} {row['find_s']:>9.4f} {row['clean_s']:>9.4f} "
              f"{row['attacked_s']:>12.4f}")


if __name__ == "__main__":
    main()
