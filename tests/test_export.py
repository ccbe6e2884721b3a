"""Pictures eroseg.export writes: the side-by-side panels of an attacked image."""

import numpy as np
import torch


def test_side_by_side_panels_have_titles():
    from eroseg.export import _title_font, side_by_side

    x = torch.full((3, 20, 20), 0.5)
    adv = x + 4 / 255
    pred = np.zeros((20, 20), dtype=np.int64)
    pic = side_by_side(x, adv, pred, pred, None, [(255, 0, 0)] * 256)
    strip = pic.shape[0] - 20
    titles = ["image", "adversarial", "perturbation x64", "prediction (clean)", "prediction (adv)"]
    left = 0
    for title in titles:  # every panel has dark text in the strip above it
        width = max(20, int(_title_font().getlength(title)) + 4)
        assert (pic[:strip, left:left + width].max(-1) < 100).sum() > 10, title
        left += width + 4
    assert left - 4 == pic.shape[1]
    assert (pic[strip:, :20] == 128).all()  # the image under its title
