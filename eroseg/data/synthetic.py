"""Generator of the embedded synthetic segmentation dataset (outdoor scenes, PASCAL VOC layout).

Each image is a small outdoor scene: sky above a (slightly tilted) horizon,
grass below it, maybe a lake and a road, and objects standing in the scene
(houses and trees on the grass, cars on the road, people on grass or road),
drawn far-to-near so nearer objects occlude farther ones and scaled with their
distance to the horizon.

The point of the dataset is that a pixel's colour alone does not determine its
class, so a model has to use context (position and surroundings), as on real
data: sky and water share the same blue (water mirrors the sky, and both turn
grey under an overcast sky), grass and tree crowns are both green, roads, house
walls and many cars are grey with heavy per-object jitter; on top come
textures (lane markings, clouds, ripples, leaf and dirt blotches), a random
global colour cast and brightness, and per-pixel Gaussian noise.

As in VOC, a one-pixel void band (label 255) outlines the object classes
(tree, house, car, person): the pixels just outside each object, and those of
an occluded object next to the one in front.

Output layout under ``root`` (read by :class:`eroseg.data.voc.VOCSegmentation`)::

    JPEGImages/<split>_<index>.png          lossless RGB PNG
    SegmentationClass/<split>_<index>.png   palette PNG of class ids (255 void)
    ImageSets/Segmentation/{train,val,test}.txt   (test only when n_test > 0)
    synthetic.json                          generation parameters and class names
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from eroseg.data.errors import IGNORE_INDEX, DatasetError

log = logging.getLogger(__name__)

#: Class names; index = class id in the label PNGs.
SYNTHETIC_CLASSES: tuple[str, ...] = ("sky", "grass", "road", "water", "tree", "house", "car", "person")

#: Display colours for figures and label PNGs, one per class (not the rendering colours).
SYNTHETIC_PALETTE: tuple[tuple[int, int, int], ...] = (
    (135, 206, 235),  # sky: light blue
    (124, 200, 80),  # grass: light green
    (128, 64, 128),  # road: purple (as in Cityscapes)
    (20, 60, 170),  # water: dark blue
    (20, 100, 30),  # tree: dark green
    (190, 110, 60),  # house: brown
    (250, 170, 30),  # car: orange
    (220, 20, 60),  # person: red
)

SKY, GRASS, ROAD, WATER, TREE, HOUSE, CAR, PERSON = range(len(SYNTHETIC_CLASSES))

#: Bumped whenever the drawing code changes what a given seed produces, so an
#: existing dataset made by older code is regenerated rather than reused.
FORMAT_VERSION = 2

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
#: Splits in the order they are written; ``val`` is for choices (tuning, per-epoch checks), ``test`` for reported numbers.
SPLITS = tuple(_SPLIT_CODES)


# ------------------------------------------------------------------- drawing
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smoothly interpolated Gaussian noise with blobs about ``cell`` pixels wide (std about 0.6)."""
    cell = max(1.5, float(cell))
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    ys = (np.arange(h, dtype=np.float32) + 0.5) / cell
    xs = (np.arange(w, dtype=np.float32) + 0.5) / cell
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    # smoothstep weights: no visible grid creases, unlike plain bilinear.
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _grey(level: float, rng: np.random.Generator, tint: float = 0.03) -> np.ndarray:
    return np.float32(level) + rng.normal(0.0, tint, 3).astype(np.float32)


class _Canvas:
    """Image, label and instance maps painted in order (later paint wins).

    ``yy``/``xx`` are pixel-centre coordinates shaped ``[H,1]`` and ``[1,W]``
    so every shape test broadcasts to a full ``[H,W]`` mask in one numpy call.
    """

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.yy = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
        self.xx = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
        self.img = np.zeros((h, w, 3), np.float32)
        self.label = np.zeros((h, w), np.uint8)
        self.inst = np.zeros((h, w), np.int32)  # 0: background "stuff"; objects 1, 2, ... in drawing order

    def paint(self, mask: np.ndarray, cls: int, colour: np.ndarray, inst: int = 0,
              shade: np.ndarray | None = None) -> None:
        """Paint ``mask`` with class ``cls``; ``colour`` is an RGB triple or an ``[H,W,3]`` field."""
        mask = np.broadcast_to(mask, (self.h, self.w))
        if not mask.any():
            return
        colour = np.asarray(colour, np.float32)
        if colour.ndim == 3:
            values = np.broadcast_to(colour, (self.h, self.w, 3))[mask]
        else:
            values = np.broadcast_to(colour, (int(mask.sum()), 3))
        if shade is not None:
            values = values * np.broadcast_to(shade, (self.h, self.w))[mask][:, None]
        self.img[mask] = values
        self.label[mask] = cls
        self.inst[mask] = inst

    def void_band(self) -> np.ndarray:
        """Pixels with a 4-neighbour drawn later as part of an object (the VOC-style outline)."""
        inst = self.inst
        band = np.zeros(inst.shape, bool)
        band[1:, :] |= inst[:-1, :] > inst[1:, :]
        band[:-1, :] |= inst[1:, :] > inst[:-1, :]
        band[:, 1:] |= inst[:, :-1] > inst[:, 1:]
        band[:, :-1] |= inst[:, 1:] > inst[:, :-1]
        return band


def _ellipse(cv: _Canvas, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((cv.yy - cy) / ry) ** 2 + ((cv.xx - cx) / rx) ** 2 < 1.0


def _rect(cv: _Canvas, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    return (cv.yy >= y0) & (cv.yy < y1) & (cv.xx >= x0) & (cv.xx < x1)


def _pick(rng: np.random.Generator, where: np.ndarray) -> tuple[float, float] | None:
    """A random pixel centre ``(y, x)`` of a boolean map, or None if it is empty."""
    idx = np.flatnonzero(where)
    if idx.size == 0:
        return None
    k = int(idx[rng.integers(idx.size)])
    w = where.shape[1]
    return k // w + 0.5, k % w + 0.5


def _render(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene; returns ``(uint8 [H,W,3] image, uint8 [H,W] label)``."""
    cv = _Canvas(h, w)
    yy, xx = cv.yy, cv.xx
    u = h / 64.0  # object size unit: sizes below are in pixels of a 64-pixel-high image

    # ---- sky above a slightly tilted horizon
    hy = rng.uniform(0.1, 0.55) * h  # wide range: "the top rows are sky" is a weak cue, not a rule
    slope = rng.uniform(-0.08, 0.08)
    horizon = hy + slope * (xx - w / 2)  # [1, W]
    sky = np.broadcast_to(yy < horizon, (h, w))
    overcast = rng.random() < 0.5
    if overcast:  # grey sky: overlaps with roads, walls and grey cars
        sky_rgb = _grey(rng.uniform(0.55, 0.8), rng, 0.02)
    else:
        sky_rgb = np.array([0.40, 0.60, 0.90], np.float32) + rng.normal(0, 0.05, 3).astype(np.float32)
    haze = 0.8 + 0.3 * np.clip(yy / hy, 0, 1.3)  # lighter towards the horizon
    cloud = np.clip((_smooth_noise(rng, h, w, 0.25 * h) - rng.uniform(0.1, 0.8)) * 1.5, 0, 0.85)[..., None]
    sky_field = (sky_rgb * haze[..., None]) * (1 - cloud) + np.float32(0.92) * cloud
    cv.paint(sky, SKY, sky_field)

    # ---- grass (green, or dry and yellowish) below it, with blotches of dirt
    dry = rng.random() < 0.3
    base = [0.55, 0.50, 0.30] if dry else [0.30, 0.52, 0.20]
    grass_rgb = np.array(base, np.float32) + rng.normal(0, 0.04, 3).astype(np.float32)
    tex = 1 + 0.18 * _smooth_noise(rng, h, w, 0.12 * h) + 0.08 * _smooth_noise(rng, h, w, 0.04 * h)
    dirt = np.clip(_smooth_noise(rng, h, w, 0.15 * h) - rng.uniform(0.3, 1.0), 0, 0.7)[..., None]
    grass_field = (grass_rgb * tex[..., None]) * (1 - dirt) + np.float32([0.45, 0.35, 0.22]) * dirt
    cv.paint(~sky, GRASS, grass_field)
    below = (yy > horizon + 1.0) & ~sky  # strictly on the ground, not on the horizon line

    # ---- a lake: the same colour family as the sky (it mirrors it), with ripples
    if rng.random() < 0.45:
        gh = h - hy
        cy, cx = hy + rng.uniform(0.2, 0.7) * gh, rng.uniform(0.1, 0.9) * w
        ry, rx = rng.uniform(0.05, 0.14) * h, rng.uniform(0.15, 0.4) * w
        edge = 1 + 0.35 * _smooth_noise(rng, h, w, 0.1 * h)
        lake = ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) < edge) & below
        water_rgb = sky_rgb * rng.uniform(0.75, 1.0) + rng.normal(0, 0.04, 3).astype(np.float32)
        ripple = 1 + 0.07 * np.sin(yy * rng.uniform(1.2, 2.5) / u + rng.uniform(0, 6.3) + 0.4 * np.sin(xx * 0.3 / u))
        cv.paint(lake, WATER, water_rgb, shade=ripple)

    # ---- a road: perspective (towards a vanishing point) or a band across the view
    if rng.random() < 0.8:
        road_rgb = _grey(rng.uniform(0.3, 0.6), rng)
        mark_rgb = np.float32([0.9, 0.9, 0.85]) if rng.random() < 0.7 else np.float32([0.9, 0.8, 0.3])
        if rng.random() < 0.55:
            vx = rng.uniform(0.15, 0.85) * w
            vy = hy + slope * (vx - w / 2)
            bx, half_bottom = vx + rng.uniform(-0.35, 0.35) * w, rng.uniform(0.18, 0.45) * w
            t = np.clip((yy - vy) / (h - vy), 0, None)  # 0 at the vanishing point, 1 at the bottom
            centre, half = vx + t * (bx - vx), t * half_bottom
            road = (yy > vy + 1.0) & (np.abs(xx - centre) < half)
            dashes = (np.floor(6 * np.log(t + 0.02)) % 2 == 0)
            marking = road & (np.abs(xx - centre) < np.maximum(0.5, 0.04 * half)) & dashes
        else:
            gh = h - hy
            y0 = hy + rng.uniform(0.2, 0.6) * gh
            thick = rng.uniform(0.12, 0.25) * h
            yrel = yy - rng.uniform(-0.1, 0.1) * (xx - w / 2) - y0
            road = (yrel >= 0) & (yrel < thick) & below
            period = max(4.0, 6 * u)
            marking = road & (np.abs(yrel - thick / 2) < max(0.5, 0.6 * u)) & ((xx // period) % 2 == 0)
        road_tex = 1 + 0.08 * _smooth_noise(rng, h, w, 0.06 * h)
        cv.paint(road, ROAD, road_rgb, shade=road_tex)
        cv.paint(marking, ROAD, mark_rgb)

    stuff = cv.label.copy()  # placement reads the background, not objects drawn so far

    def depth(yb: float) -> float:
        # nearer the bottom of the image = nearer the viewer = bigger
        return 0.35 + 0.65 * float(np.clip((yb - hy) / (h - hy), 0, 1))

    objects: list[tuple[float, Callable[[int], None]]] = []
    grass_far = (stuff == GRASS) & below & (yy < hy + 0.5 * (h - hy))

    # ---- houses: wall + roof (+ windows, door), on the far part of the grass
    for _ in range(rng.integers(0, 3)):
        at = _pick(rng, grass_far)
        if at is None:
            break
        yb, xc = at
        s = depth(yb)
        ww, wh = rng.uniform(12, 24) * u * s, rng.uniform(8, 14) * u * s
        rh, over = rng.uniform(0.35, 0.7) * wh, rng.uniform(0, 0.15) * ww
        wall_rgb = _grey(rng.uniform(0.4, 0.85), rng, 0.04)
        roof_rgb = (np.float32([0.55, 0.22, 0.15]) if rng.random() < 0.6 else _grey(0.3, rng)) \
            + rng.normal(0, 0.04, 3).astype(np.float32)
        win_rgb = sky_rgb * 0.8 if rng.random() < 0.4 else np.float32([0.15, 0.18, 0.25])
        n_win = int(rng.integers(1, 4))

        def house(k, yb=yb, xc=xc, ww=ww, wh=wh, rh=rh, over=over, wall_rgb=wall_rgb, roof_rgb=roof_rgb,
                  win_rgb=win_rgb, n_win=n_win):
            top = yb - wh
            cv.paint(_rect(cv, top, yb, xc - ww / 2, xc + ww / 2), HOUSE, wall_rgb, k)
            apex = top - rh
            roof = (yy >= apex) & (yy < top) & (np.abs(xx - xc) < (ww / 2 + over) * (yy - apex) / rh)
            cv.paint(roof, HOUSE, roof_rgb, k)
            for j in range(n_win):
                wx = xc - ww / 2 + ww * (j + 0.5) / n_win
                cv.paint(_rect(cv, top + 0.25 * wh, top + 0.5 * wh, wx - 0.09 * ww, wx + 0.09 * ww),
                         HOUSE, win_rgb, k)
            cv.paint(_rect(cv, yb - 0.45 * wh, yb, xc - 0.07 * ww, xc + 0.07 * ww), HOUSE, roof_rgb * 0.7, k)

        objects.append((yb, house))

    # ---- trees: trunk + crown (round or conifer), crowns green like the grass
    on_grass = (stuff == GRASS) & below
    for _ in range(rng.integers(0, 5)):
        at = _pick(rng, on_grass)
        if at is None:
            break
        yb, xc = at
        s = depth(yb)
        tw, th = max(1.0, rng.uniform(1.5, 2.5) * u * s), rng.uniform(4, 8) * u * s
        crown_rgb = (np.float32([0.30, 0.52, 0.20]) * rng.uniform(0.7, 1.05)
                     + rng.normal(0, 0.04, 3).astype(np.float32))
        trunk_rgb = np.float32([0.38, 0.26, 0.16]) + rng.normal(0, 0.03, 3).astype(np.float32)
        conifer = rng.random() < 0.35
        r = rng.uniform(4, 8) * u * s
        stretch = rng.uniform(0.9, 1.3)
        leaves = 1 + 0.2 * _smooth_noise(rng, h, w, max(1.5, 0.05 * h))
        wobble = 0.15 * _smooth_noise(rng, h, w, max(1.5, 0.08 * h))

        def tree(k, yb=yb, xc=xc, tw=tw, th=th, crown_rgb=crown_rgb, trunk_rgb=trunk_rgb, conifer=conifer,
                 r=r, stretch=stretch, leaves=leaves, wobble=wobble):
            cv.paint(_rect(cv, yb - th, yb, xc - tw / 2, xc + tw / 2), TREE, trunk_rgb, k)
            if conifer:
                ch = 2.2 * r * stretch
                bottom, apex = yb - 0.5 * th, yb - 0.5 * th - ch
                crown = (yy >= apex) & (yy < bottom) & (np.abs(xx - xc) < 0.8 * r * (yy - apex) / ch)
            else:
                ry = r * stretch
                cy = yb - th - 0.7 * ry
                crown = ((yy - cy) / ry) ** 2 + ((xx - xc) / r) ** 2 < 1 + wobble
            cv.paint(crown, TREE, crown_rgb, k, shade=leaves)

        objects.append((yb, tree))

    # ---- cars: only on the road, sized to fit the road's width at their row
    on_road = stuff == ROAD
    if on_road.any():
        for _ in range(rng.integers(0, 4)):
            at = _pick(rng, on_road & below)
            if at is None:
                break
            yb, _x = at
            cols = np.flatnonzero(on_road[int(yb)])
            left, right = float(cols.min()), float(cols.max()) + 1.0
            s = depth(yb)
            cw = min(rng.uniform(11, 17) * u * s, 0.9 * (right - left))
            if cw < 3:
                continue
            xc = rng.uniform(left + cw / 2, right - cw / 2)
            kind = rng.random()
            if kind < 0.45:  # grey like the road and the walls
                body_rgb = _grey(rng.uniform(0.2, 0.85), rng)
            elif kind < 0.65:  # blue like the sky and the water
                body_rgb = np.float32([0.25, 0.40, 0.75]) + rng.normal(0, 0.05, 3).astype(np.float32)
            elif kind < 0.8:
                body_rgb = np.float32([0.70, 0.15, 0.12]) + rng.normal(0, 0.05, 3).astype(np.float32)
            elif kind < 0.9:  # green like the grass and the trees
                body_rgb = np.float32([0.28, 0.50, 0.22]) + rng.normal(0, 0.05, 3).astype(np.float32)
            else:
                body_rgb = np.float32([0.85, 0.75, 0.30]) + rng.normal(0, 0.05, 3).astype(np.float32)
            bh, ch = cw * rng.uniform(0.28, 0.36), cw * rng.uniform(0.2, 0.28)
            cab_w, cab_dx = cw * rng.uniform(0.5, 0.65), cw * rng.uniform(-0.1, 0.1)
            glass_rgb = sky_rgb * 0.7 if rng.random() < 0.5 else np.float32([0.2, 0.24, 0.3])

            def car(k, yb=yb, xc=xc, cw=cw, bh=bh, ch=ch, cab_w=cab_w, cab_dx=cab_dx, body_rgb=body_rgb,
                    glass_rgb=glass_rgb):
                wr = max(0.7, 0.12 * cw)
                body_bottom = yb - 0.6 * wr
                body_top = body_bottom - bh
                cv.paint(_rect(cv, body_top, body_bottom, xc - cw / 2, xc + cw / 2), CAR, body_rgb, k)
                cab_top = body_top - ch
                cab = (yy >= cab_top) & (yy < body_top) & \
                    (np.abs(xx - xc - cab_dx) < cab_w / 2 - 0.5 * (body_top - yy))
                cv.paint(cab, CAR, body_rgb, k)
                glass = (yy >= cab_top + 0.25 * ch) & (yy < body_top) & \
                    (np.abs(xx - xc - cab_dx) < cab_w / 2 - 0.5 * (body_top - yy) - 0.12 * cab_w)
                cv.paint(glass, CAR, glass_rgb, k)
                for side in (-1, 1):
                    cv.paint(_ellipse(cv, yb - wr, xc + side * 0.3 * cw, wr, wr), CAR,
                             np.float32([0.08, 0.08, 0.08]), k)

            objects.append((yb, car))

    # ---- people: small, standing on grass or road, clothes of any colour
    on_foot = ((stuff == GRASS) | (stuff == ROAD)) & below
    for _ in range(rng.integers(0, 4)):
        at = _pick(rng, on_foot)
        if at is None:
            break
        yb, xc = at
        s = depth(yb)
        ph = max(5.0, rng.uniform(10, 15) * u * s)
        pw = max(2.0, 0.33 * ph)
        shirt = rng.uniform(0.1, 0.9, 3).astype(np.float32)
        legs_rgb = np.float32([0.15, 0.2, 0.4]) if rng.random() < 0.5 else _grey(rng.uniform(0.1, 0.4), rng)
        skin = np.float32([0.85, 0.65, 0.5]) * rng.uniform(0.6, 1.05)

        def person(k, yb=yb, xc=xc, ph=ph, pw=pw, shirt=shirt, legs_rgb=legs_rgb, skin=skin):
            hr = max(0.8, 0.13 * ph)
            cv.paint(_rect(cv, yb - 0.45 * ph, yb, xc - 0.4 * pw, xc + 0.4 * pw), PERSON, legs_rgb, k)
            cv.paint(_rect(cv, yb - ph + 1.8 * hr, yb - 0.45 * ph, xc - pw / 2, xc + pw / 2), PERSON, shirt, k)
            cv.paint(_ellipse(cv, yb - ph + hr, xc, hr, hr), PERSON, skin, k)

        objects.append((yb, person))

    # far to near, so nearer objects occlude farther ones (stable sort keeps the draw order reproducible)
    objects.sort(key=lambda o: o[0])
    for k, (_yb, draw) in enumerate(objects, 1):
        draw(k)

    label = cv.label
    label[cv.void_band()] = IGNORE_INDEX

    # ---- photometric: colour cast, brightness, contrast (haze, dusk), per-pixel noise.
    # Low contrast in part of the scenes keeps the class colours within a few multiples of an
    # 8/255 perturbation of each other, as in real dim or hazy photographs, so that a standard
    # model is clearly vulnerable (DESIGN.md: PGD-20 at 8/255 must remove half its mIoU).
    img = cv.img * (1 + rng.normal(0, 0.05, 3)).astype(np.float32) * np.float32(rng.uniform(0.75, 1.2))
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = mean + np.float32(rng.uniform(0.4, 1.0)) * (img - mean)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(0.025, 0.06))
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image, label


def render_scene(seed: int, split: str, index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one sample exactly as :func:`generate_synthetic` writes it.

    The random stream depends on ``(seed, split, index)`` only, so a sample
    does not change when the number of samples of any split does.

    Args:
        seed: dataset seed (non-negative).
        split: ``"train"``, ``"val"`` or ``"test"``.
        index: sample index within the split.
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        ``(image uint8 [H,W,3], label uint8 [H,W])``.
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"render_scene: split {split!r}; expected one of {sorted(_SPLIT_CODES)}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODES[split], int(index)]))
    return _render(rng, int(height), int(width))


# ------------------------------------------------------------------- writing
def _save_image(path: Path, image: np.ndarray) -> None:
    # compress_level fixed so the bytes do not depend on Pillow's default.
    Image.fromarray(image).save(path, format="PNG", compress_level=6)


def _save_label(path: Path, label: np.ndarray) -> None:
    h, w = label.shape
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(label, np.uint8).tobytes())
    pal = [c for rgb in SYNTHETIC_PALETTE for c in rgb]
    pal += [0] * (768 - len(pal))
    pal[3 * IGNORE_INDEX:3 * IGNORE_INDEX + 3] = [224, 224, 192]  # void drawn as in VOC
    im.putpalette(pal)
    im.save(path, format="PNG", compress_level=6)


def _params(n_train: int, n_val: int, height: int, width: int, seed: int, n_test: int = 0) -> dict:
    checks = {"n_train": (n_train, 1), "n_val": (n_val, 1), "n_test": (n_test, 0), "height": (height, 16),
              "width": (width, 16), "seed": (seed, 0)}
    for key, (value, low) in checks.items():
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"generate_synthetic: {key}={value!r}; expected an integer >= {low}")
    params = {"n_train": int(n_train), "n_val": int(n_val), "height": int(height), "width": int(width),
              "seed": int(seed)}
    if n_test:  # absent when 0, so datasets written before the test split existed stay valid
        params["n_test"] = int(n_test)
    return params


def _metadata(params: dict) -> dict:
    return {
        "generator": "eroseg.data.synthetic",
        "format_version": FORMAT_VERSION,
        "params": params,
        "classes": list(SYNTHETIC_CLASSES),
        "palette": [list(c) for c in SYNTHETIC_PALETTE],
        "ignore_index": IGNORE_INDEX,
        "splits": {s: params[f"n_{s}"] for s in SPLITS if params.get(f"n_{s}")},
    }


def _is_complete(root: Path, meta: dict) -> bool:
    """Cheap check that an existing dataset matches ``meta`` (same metadata, full split lists)."""
    try:
        on_disk = json.loads((root / "synthetic.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if on_disk != meta:
        return False
    for split, n in meta["splits"].items():
        lst = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not lst.is_file() or len(lst.read_text().split()) != n:
            return False
    return True


def _write_dataset(out: Path, params: dict) -> None:
    h, w, seed = params["height"], params["width"], params["seed"]
    img_dir, lbl_dir, list_dir = out / "JPEGImages", out / "SegmentationClass", out / "ImageSets" / "Segmentation"
    for d in (img_dir, lbl_dir, list_dir):
        d.mkdir(parents=True)
    # Files are written directly: ``out`` is a private temporary folder that
    # becomes visible only through the final rename, which is the atomic step.
    for split in SPLITS:
        if not params.get(f"n_{split}"):
            continue
        ids = []
        for i in range(params[f"n_{split}"]):
            sample_id = f"{split}_{i:05d}"
            image, label = render_scene(seed, split, i, h, w)
            _save_image(img_dir / f"{sample_id}.png", image)
            _save_label(lbl_dir / f"{sample_id}.png", label)
            ids.append(sample_id)
        (list_dir / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (out / "synthetic.json").write_text(json.dumps(_metadata(params), indent=2) + "\n")


def generate_synthetic(
    root: str | os.PathLike, *, n_train: int, n_val: int, height: int, width: int, seed: int, n_test: int = 0
) -> Path:
    """Generate the synthetic dataset at ``root`` in the PASCAL VOC layout.

    Same arguments give byte-identical files. The dataset is written to a
    temporary sibling folder and renamed onto ``root`` at the end, so ``root``
    is never half-written. An existing ``root`` made with the same parameters
    (and generator version) is returned untouched; one made with other
    parameters is replaced.

    Args:
        root: output folder.
        n_train: number of training images (>= 1).
        n_val: number of validation images (>= 1): the split for choices (tuning, per-epoch checks).
        n_test: number of test images (>= 0): the split whose numbers are reported; 0 writes no test split.
        height: image height in pixels (>= 16).
        width: image width in pixels (>= 16).
        seed: generator seed (>= 0).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: an argument is out of range.
        DatasetError: ``root`` exists but is not a synthetic dataset (it is
            never deleted then, since it may hold someone's data).
    """
    root = Path(root)
    params = _params(n_train, n_val, height, width, seed, n_test)
    meta = _metadata(params)
    if root.exists():
        if not root.is_dir():
            raise DatasetError(f"{root}: exists and is not a folder; expected a synthetic dataset folder or nothing")
        if (root / "synthetic.json").is_file():
            if _is_complete(root, meta):
                log.info("%s: synthetic dataset with these parameters already exists; kept", root)
                return root
            log.info("%s: synthetic dataset with other parameters; regenerating", root)
        elif any(root.iterdir()):
            raise DatasetError(
                f"{root}: exists, is not empty and has no synthetic.json, so it is not a synthetic dataset; "
                "refusing to replace it. Remove it or choose another root."
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # A plain mkdir (not mkdtemp, which makes it 0700) so the dataset gets the usual umask permissions.
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        _write_dataset(tmp, params)
        if root.exists():
            # Move the old one aside first: a directory cannot be renamed onto a non-empty one.
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.replace(tmp, root)
            except OSError:
                # Another process finished the same dataset first; keep its copy if it matches.
                if _is_complete(root, meta):
                    return root
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: wrote %d train + %d val + %d test synthetic images (%dx%d) in %.1f s", root, params["n_train"],
             params["n_val"], params.get("n_test", 0), width, height, time.perf_counter() - start)
    return root


def dataset_crc(root: str | os.PathLike) -> int:
    """CRC32 over every file of a dataset folder (names and bytes, sorted); for determinism checks."""
    crc = 0
    root = Path(root)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        crc = zlib.crc32(path.relative_to(root).as_posix().encode(), crc)
        crc = zlib.crc32(path.read_bytes(), crc)
    return crc


__all__ = ["FORMAT_VERSION", "SPLITS", "SYNTHETIC_CLASSES", "SYNTHETIC_PALETTE", "dataset_crc", "generate_synthetic",
           "render_scene"]
