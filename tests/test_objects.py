"""Size statistics: connected components, per-component scores and the size table on hand-made label maps."""

import numpy as np
import pandas as pd
import pytest

from eroseg.objects import component_frame, component_summary, connected_components, size_table, tercile_of

# Class 1: a 2x2 square (top left) and a single pixel (bottom right); class 2: an L of 5 pixels;
# class 0 the rest; one void pixel (255) between.
LABEL = np.array([
    [1, 1, 0, 0, 2],
    [1, 1, 0, 0, 2],
    [0, 0, 255, 0, 2],
    [0, 0, 0, 2, 2],
    [2, 0, 0, 0, 1],
])


def test_connected_components_of_hand_made_map():
    components, n = connected_components(np.where(LABEL == 255, -1, LABEL))
    # class 1: square + pixel; class 2: L + corner pixel; class 0: cut in two by the void pixel and the L
    assert n == 6
    areas = sorted(np.bincount(components.ravel())[1:].tolist())
    assert areas == [1, 1, 4, 5, 5, 8]
    assert components[2, 2] == 0
    assert components[0, 0] == components[1, 1] != components[4, 4]
    # with corners, the two class-0 parts join at (2, 3)-(3, 2)
    _, n8 = connected_components(np.where(LABEL == 255, -1, LABEL), connectivity=8)
    assert n8 == 5


def test_diagonal_joins_only_with_eight_connectivity():
    regions = np.array([[1, 0], [0, 1]])
    assert connected_components(regions, 4)[1] == 4
    assert connected_components(regions, 8)[1] == 2


def test_spiral_is_one_component():
    """A long winding region needs many hooking rounds: checks that union-find converges to one id."""
    grid = np.zeros((9, 9), dtype=int)
    grid[0, :] = grid[:, 8] = grid[8, :] = grid[2:, 0] = grid[2, :7] = grid[2:7, 6] = grid[6, 2:7] = 1
    components, _ = connected_components(np.where(grid == 1, 1, -1))
    assert len(np.unique(components[grid == 1])) == 1


def _flood_fill(regions: np.ndarray, connectivity: int) -> np.ndarray:
    """Reference labelling: breadth-first flood fill from each unlabelled pixel in raster order (slow, plain)."""
    h, w = regions.shape
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)] if connectivity == 8 else []
    out = np.zeros((h, w), dtype=np.int64)
    n = 0
    for y in range(h):
        for x in range(w):
            if regions[y, x] < 0 or out[y, x]:
                continue
            n += 1
            out[y, x] = n
            queue = [(y, x)]
            while queue:
                cy, cx = queue.pop()
                for dy, dx in steps:
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and not out[ny, nx] and regions[ny, nx] == regions[y, x]:
                        out[ny, nx] = n
                        queue.append((ny, nx))
    return out


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("shape, classes, seed", [((1, 9), 2, 0), ((9, 1), 2, 1), ((13, 17), 3, 2),
                                                  ((20, 20), 2, 3), ((16, 24), 5, 4)])
def test_connected_components_equal_a_flood_fill(shape, classes, seed, connectivity):
    rng = np.random.default_rng(seed)
    regions = rng.integers(-1, classes, size=shape)  # -1: void, scattered
    components, n = connected_components(regions, connectivity)
    expected = _flood_fill(regions, connectivity)
    assert n == expected.max()
    assert np.array_equal(components, expected)  # same ids too: numbered in order of first pixel


def test_component_summary_scores():
    clean = LABEL.copy()
    clean[clean == 255] = 0
    adv = clean.copy()
    adv[0, 0] = 0      # one pixel of the square flipped
    adv[4, 4] = 2      # the single pixel of class 1 flipped
    adv[0, 2] = 1      # class 1 spills out of the square: IoU below recall
    summary = component_summary(LABEL, clean, adv)
    rows = pd.DataFrame(summary)
    square = rows[(rows["class"] == 1) & (rows["area"] == 4)].iloc[0]
    assert square["correct_clean"] == 4 and square["correct_adv"] == 3 and square["flipped"] == 1
    assert square["union_clean"] == 4
    assert square["union_adv"] == 5  # 4 square pixels + the spilled one (the flipped one stays in the union)
    single = rows[(rows["class"] == 1) & (rows["area"] == 1)].iloc[0]
    assert single["correct_adv"] == 0 and single["flipped"] == 1 and single["union_adv"] == 1
    assert rows["area"].sum() == (LABEL != 255).sum()


def test_size_table_on_hand_made_components():
    clean = np.where(LABEL == 255, 0, LABEL)
    adv = clean.copy()
    adv[4, 4] = 0
    adv[0, 4] = 0
    summaries = [{"method": "standard", "seed": s, "image": 0, **component_summary(LABEL, clean, adv)}
                 for s in (0, 1)]
    frame = component_frame(summaries)
    assert len(frame) == 12
    table = size_table(frame, class_names=["bg", "car", "tree"])
    overall = table[table["class"] == "all"].set_index("tercile")
    # areas 1, 1, 4, 5, 5, 8 (twice): quantile edges 3 and 5 -> small {1, 1}, medium {4, 5, 5}, large {8}
    assert overall.loc["small", "components"] == 4
    assert overall.loc["small", "flipped_share"] == pytest.approx(50.0)  # the single car pixel flipped, the tree not
    assert overall.loc["medium", "flipped_share"] == pytest.approx(100 * (0 + 1 / 5 + 0) / 3)
    assert overall.loc["large", "iou_clean"] == pytest.approx(100.0)
    # every component is right on the clean image: one flipped pixel of medium's 4 + 5 + 5 right pixels
    assert overall.loc["medium", "flipped_of_right"] == pytest.approx(100 / 14)
    assert list(table["tercile"].drop_duplicates()) == ["small", "medium", "large"]
    assert set(table["class"]) == {"all", "bg", "car", "tree"}


def test_tercile_edges():
    assert list(tercile_of([1, 2, 3, 4], (2.0, 3.0))) == ["small", "small", "medium", "large"]
