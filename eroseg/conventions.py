"""Facts that several modules share, each stated once: the void label and colour, image suffixes, attack defaults,
mixed precision.

The module imports nothing at import time (torch only inside
:func:`autocast`), so every module, the data readers included, can use it.
Numbers as text (budgets such as ``"8/255"``, their file-name tags and table
labels, ``eps`` in 1/255 units) are :mod:`eroseg.numbers`'s; random streams
are :mod:`eroseg.seeds`'s.
"""

from __future__ import annotations

import contextlib

#: Label of void pixels (unlabelled, object borders): never scored, never attacked.
IGNORE_INDEX = 255

#: Colour of void pixels in label and prediction images (PASCAL VOC's colour of index 255).
VOID_COLOR = (224, 224, 192)

#: Image file suffixes read (lower case), in the order a reader tries them for one image id.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".png", ".jpeg", ".bmp", ".tif", ".tiff")

#: Budget of every attack when none is given: 8/255 (Linf, pixel units).
DEFAULT_EPS = 8 / 255

#: Iterations of every iterative attack when none are given.
DEFAULT_STEPS = 10


def full_palette(palette) -> list[tuple[int, int, int]]:
    """The 256 colours of a label PNG: the class colours, black up to index 254, :data:`VOID_COLOR` at 255.

    Args:
        palette: one ``(r, g, b)`` per class; a colour at index 255 or above is dropped (255 is void).
    """
    colours = [tuple(int(v) for v in c) for c in palette][:256]
    colours += [(0, 0, 0)] * (256 - len(colours))
    colours[IGNORE_INDEX] = VOID_COLOR
    return colours


def flat_palette(palette) -> list[int]:
    """:func:`full_palette` as the 768 integers ``r0, g0, b0, r1, ...`` of ``PIL.Image.putpalette``."""
    return [v for rgb in full_palette(palette) for v in rgb]


def autocast(device, enabled: bool):
    """bf16 autocast of the forward passes on CUDA when ``enabled``; a no-op context elsewhere.

    ``amp`` is a CUDA-only option: on a CPU it changes nothing (no CPU autocast).

    Args:
        device: ``torch.device`` or its name, where the forward passes run.
        enabled: the ``amp`` option.
    """
    import torch  # here, so that the readers and the command-line parser can import this module without torch

    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
