"""The shared conventions (eroseg.conventions): palettes with the void colour, image suffixes, autocast."""

import sys

import torch

from eroseg.conventions import IGNORE_INDEX, IMAGE_SUFFIXES, VOID_COLOR, autocast, flat_palette, full_palette
from eroseg.data import voc_palette


def test_full_palette_pads_with_black_and_puts_void_at_255():
    palette = full_palette([(1, 2, 3), (4, 5, 6)])
    assert len(palette) == 256 and palette[:3] == [(1, 2, 3), (4, 5, 6), (0, 0, 0)]
    assert palette[IGNORE_INDEX] == VOID_COLOR == (224, 224, 192)
    assert full_palette([(9, 9, 9)] * 256)[255] == VOID_COLOR  # a 256th class colour gives way to void
    flat = flat_palette([(1, 2, 3)])
    assert len(flat) == 768 and flat[:6] == [1, 2, 3, 0, 0, 0] and flat[-3:] == list(VOID_COLOR)


def test_void_colour_is_pascal_vocs():
    assert voc_palette(256)[IGNORE_INDEX] == VOID_COLOR


def test_image_suffixes_are_lower_case_and_tried_jpeg_first():
    assert IMAGE_SUFFIXES[0] == ".jpg" and all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)
    assert {".png", ".jpeg", ".tif"} <= set(IMAGE_SUFFIXES)


def test_autocast_is_a_no_op_off_cuda():
    layer = torch.nn.Linear(4, 4)
    with autocast("cpu", True):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    with autocast(torch.device("cpu"), False):
        assert not torch.is_autocast_enabled()


def test_importing_conventions_does_not_import_torch():
    import subprocess

    code = "import sys; import eroseg.conventions; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
