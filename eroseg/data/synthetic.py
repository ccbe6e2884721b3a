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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from eroseg.conventions import flat_palette
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
FORMAT_VERSION = 3

#: Range of the per-pixel Gaussian noise std (drawn per image). 0.002-0.008 is 0.5-2/255, well below an
#: 8/255 budget: with noise as large as eps (0.025-0.06 before format 3), standard training was already noise
#: augmentation and the standard model kept ~20 % mIoU under any 8/255 attack (../docs/measurements.md).
PIXEL_NOISE_STD = (0.002, 0.008)

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
#: Splits in the order they are written; ``val`` is for choices (tuning, per-epoch checks), ``test`` for
#: reported numbers.
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


#: An object's drawing step: paints it with instance id ``k`` (its rank, far to near).
_Draw = Callable[[int], None]


@dataclass(frozen=True)
class _Scene:
    """The background layout that the objects are placed on (drawn first).

    Attributes:
        height: image height in pixels.
        unit: object size unit (``height / 64``): sizes are given in pixels of a 64-pixel-high image.
        horizon_y: horizon row at the image centre.
        slope: horizon tilt (rows per column).
        horizon: horizon row of every column, ``[1, W]``.
        sky: ``[H, W]`` mask of the sky (above the horizon).
        below: ``[H, W]`` mask of the pixels strictly on the ground, not on the horizon line.
        sky_rgb: the sky's base colour (water, windows and car glass mirror it).
    """

    height: int
    unit: float
    horizon_y: float
    slope: float
    horizon: np.ndarray
    sky: np.ndarray
    below: np.ndarray
    sky_rgb: np.ndarray

    def depth(self, base_y: float) -> float:
        """Size factor of an object standing on row ``base_y``: nearer the bottom = nearer the viewer = bigger."""
        return 0.35 + 0.65 * float(np.clip((base_y - self.horizon_y) / (self.height - self.horizon_y), 0, 1))


def _draw_sky(rng: np.random.Generator, canvas: _Canvas) -> _Scene:
    """Sky above a slightly tilted horizon (blue or overcast, hazy, with clouds); returns the layout."""
    h, w, y, x = canvas.h, canvas.w, canvas.yy, canvas.xx
    horizon_y = rng.uniform(0.1, 0.55) * h  # wide range: "the top rows are sky" is a weak cue, not a rule
    slope = rng.uniform(-0.08, 0.08)
    horizon = horizon_y + slope * (x - w / 2)  # [1, W]
    sky = np.broadcast_to(y < horizon, (h, w))
    overcast = rng.random() < 0.5
    if overcast:  # grey sky: overlaps with roads, walls and grey cars
        sky_rgb = _grey(rng.uniform(0.55, 0.8), rng, 0.02)
    else:
        sky_rgb = np.array([0.40, 0.60, 0.90], np.float32) + rng.normal(0, 0.05, 3).astype(np.float32)
    haze = 0.8 + 0.3 * np.clip(y / horizon_y, 0, 1.3)  # lighter towards the horizon
    cloud = np.clip((_smooth_noise(rng, h, w, 0.25 * h) - rng.uniform(0.1, 0.8)) * 1.5, 0, 0.85)[..., None]
    sky_field = (sky_rgb * haze[..., None]) * (1 - cloud) + np.float32(0.92) * cloud
    canvas.paint(sky, SKY, sky_field)
    below = (y > horizon + 1.0) & ~sky  # strictly on the ground, not on the horizon line
    return _Scene(h, h / 64.0, horizon_y, slope, horizon, sky, below, sky_rgb)


def _draw_grass(rng: np.random.Generator, canvas: _Canvas, scene: _Scene) -> None:
    """Grass (green, or dry and yellowish) below the horizon, with blotches of dirt."""
    h, w = canvas.h, canvas.w
    dry = rng.random() < 0.3
    base = [0.55, 0.50, 0.30] if dry else [0.30, 0.52, 0.20]
    grass_rgb = np.array(base, np.float32) + rng.normal(0, 0.04, 3).astype(np.float32)
    texture = 1 + 0.18 * _smooth_noise(rng, h, w, 0.12 * h) + 0.08 * _smooth_noise(rng, h, w, 0.04 * h)
    dirt = np.clip(_smooth_noise(rng, h, w, 0.15 * h) - rng.uniform(0.3, 1.0), 0, 0.7)[..., None]
    grass_field = (grass_rgb * texture[..., None]) * (1 - dirt) + np.float32([0.45, 0.35, 0.22]) * dirt
    canvas.paint(~scene.sky, GRASS, grass_field)


def _draw_lake(rng: np.random.Generator, canvas: _Canvas, scene: _Scene) -> None:
    """Maybe a lake: the same colour family as the sky (it mirrors it), with ripples."""
    if rng.random() >= 0.45:
        return
    h, w, y, x, unit = canvas.h, canvas.w, canvas.yy, canvas.xx, scene.unit
    ground_h = h - scene.horizon_y
    centre_y, centre_x = scene.horizon_y + rng.uniform(0.2, 0.7) * ground_h, rng.uniform(0.1, 0.9) * w
    radius_y, radius_x = rng.uniform(0.05, 0.14) * h, rng.uniform(0.15, 0.4) * w
    edge = 1 + 0.35 * _smooth_noise(rng, h, w, 0.1 * h)
    lake = ((((y - centre_y) / radius_y) ** 2 + ((x - centre_x) / radius_x) ** 2) < edge) & scene.below
    water_rgb = scene.sky_rgb * rng.uniform(0.75, 1.0) + rng.normal(0, 0.04, 3).astype(np.float32)
    ripple = 1 + 0.07 * np.sin(y * rng.uniform(1.2, 2.5) / unit + rng.uniform(0, 6.3) + 0.4 * np.sin(x * 0.3 / unit))
    canvas.paint(lake, WATER, water_rgb, shade=ripple)


def _draw_road(rng: np.random.Generator, canvas: _Canvas, scene: _Scene) -> None:
    """Maybe a road with lane markings: perspective (towards a vanishing point) or a band across the view."""
    if rng.random() >= 0.8:
        return
    h, w, y, x, unit = canvas.h, canvas.w, canvas.yy, canvas.xx, scene.unit
    road_rgb = _grey(rng.uniform(0.3, 0.6), rng)
    mark_rgb = np.float32([0.9, 0.9, 0.85]) if rng.random() < 0.7 else np.float32([0.9, 0.8, 0.3])
    if rng.random() < 0.55:
        vanish_x = rng.uniform(0.15, 0.85) * w
        vanish_y = scene.horizon_y + scene.slope * (vanish_x - w / 2)
        bottom_x, half_bottom = vanish_x + rng.uniform(-0.35, 0.35) * w, rng.uniform(0.18, 0.45) * w
        t = np.clip((y - vanish_y) / (h - vanish_y), 0, None)  # 0 at the vanishing point, 1 at the bottom
        centre, half = vanish_x + t * (bottom_x - vanish_x), t * half_bottom
        road = (y > vanish_y + 1.0) & (np.abs(x - centre) < half)
        dashes = (np.floor(6 * np.log(t + 0.02)) % 2 == 0)
        marking = road & (np.abs(x - centre) < np.maximum(0.5, 0.04 * half)) & dashes
    else:
        ground_h = h - scene.horizon_y
        top = scene.horizon_y + rng.uniform(0.2, 0.6) * ground_h
        thick = rng.uniform(0.12, 0.25) * h
        yrel = y - rng.uniform(-0.1, 0.1) * (x - w / 2) - top
        road = (yrel >= 0) & (yrel < thick) & scene.below
        period = max(4.0, 6 * unit)
        marking = road & (np.abs(yrel - thick / 2) < max(0.5, 0.6 * unit)) & ((x // period) % 2 == 0)
    road_texture = 1 + 0.08 * _smooth_noise(rng, h, w, 0.06 * h)
    canvas.paint(road, ROAD, road_rgb, shade=road_texture)
    canvas.paint(marking, ROAD, mark_rgb)


def _plan_house(rng: np.random.Generator, canvas: _Canvas, scene: _Scene, base_y: float, centre_x: float) -> _Draw:
    """A house standing at ``(base_y, centre_x)``: wall + roof (+ windows, door)."""
    y, x, unit = canvas.yy, canvas.xx, scene.unit
    scale = scene.depth(base_y)
    wall_w, wall_h = rng.uniform(12, 24) * unit * scale, rng.uniform(8, 14) * unit * scale
    roof_h, over = rng.uniform(0.35, 0.7) * wall_h, rng.uniform(0, 0.15) * wall_w
    wall_rgb = _grey(rng.uniform(0.4, 0.85), rng, 0.04)
    roof_rgb = (np.float32([0.55, 0.22, 0.15]) if rng.random() < 0.6 else _grey(0.3, rng)) \
        + rng.normal(0, 0.04, 3).astype(np.float32)
    win_rgb = scene.sky_rgb * 0.8 if rng.random() < 0.4 else np.float32([0.15, 0.18, 0.25])
    n_win = int(rng.integers(1, 4))

    def house(k: int) -> None:
        top = base_y - wall_h
        canvas.paint(_rect(canvas, top, base_y, centre_x - wall_w / 2, centre_x + wall_w / 2), HOUSE, wall_rgb, k)
        apex = top - roof_h
        roof = (y >= apex) & (y < top) & (np.abs(x - centre_x) < (wall_w / 2 + over) * (y - apex) / roof_h)
        canvas.paint(roof, HOUSE, roof_rgb, k)
        for j in range(n_win):
            window_x = centre_x - wall_w / 2 + wall_w * (j + 0.5) / n_win
            canvas.paint(_rect(canvas, top + 0.25 * wall_h, top + 0.5 * wall_h, window_x - 0.09 * wall_w,
                               window_x + 0.09 * wall_w), HOUSE, win_rgb, k)
        canvas.paint(_rect(canvas, base_y - 0.45 * wall_h, base_y, centre_x - 0.07 * wall_w, centre_x + 0.07 * wall_w),
                     HOUSE, roof_rgb * 0.7, k)

    return house


def _plan_tree(rng: np.random.Generator, canvas: _Canvas, scene: _Scene, base_y: float, centre_x: float) -> _Draw:
    """A tree standing at ``(base_y, centre_x)``: trunk + crown (round or conifer), the crown green like the grass."""
    h, w, y, x, unit = canvas.h, canvas.w, canvas.yy, canvas.xx, scene.unit
    scale = scene.depth(base_y)
    trunk_w, trunk_h = max(1.0, rng.uniform(1.5, 2.5) * unit * scale), rng.uniform(4, 8) * unit * scale
    crown_rgb = (np.float32([0.30, 0.52, 0.20]) * rng.uniform(0.7, 1.05)
                 + rng.normal(0, 0.04, 3).astype(np.float32))
    trunk_rgb = np.float32([0.38, 0.26, 0.16]) + rng.normal(0, 0.03, 3).astype(np.float32)
    conifer = rng.random() < 0.35
    radius = rng.uniform(4, 8) * unit * scale
    stretch = rng.uniform(0.9, 1.3)
    leaves = 1 + 0.2 * _smooth_noise(rng, h, w, max(1.5, 0.05 * h))
    wobble = 0.15 * _smooth_noise(rng, h, w, max(1.5, 0.08 * h))

    def tree(k: int) -> None:
        canvas.paint(_rect(canvas, base_y - trunk_h, base_y, centre_x - trunk_w / 2, centre_x + trunk_w / 2), TREE,
                     trunk_rgb, k)
        if conifer:
            crown_h = 2.2 * radius * stretch
            bottom, apex = base_y - 0.5 * trunk_h, base_y - 0.5 * trunk_h - crown_h
            crown = (y >= apex) & (y < bottom) & (np.abs(x - centre_x) < 0.8 * radius * (y - apex) / crown_h)
        else:
            radius_y = radius * stretch
            centre_y = base_y - trunk_h - 0.7 * radius_y
            crown = ((y - centre_y) / radius_y) ** 2 + ((x - centre_x) / radius) ** 2 < 1 + wobble
        canvas.paint(crown, TREE, crown_rgb, k, shade=leaves)

    return tree


def _car_colour(rng: np.random.Generator) -> np.ndarray:
    """A car body colour, most often one the background also has (grey road, blue sky, green grass)."""
    kind = rng.random()
    if kind < 0.45:  # grey like the road and the walls
        return _grey(rng.uniform(0.2, 0.85), rng)
    if kind < 0.65:  # blue like the sky and the water
        return np.float32([0.25, 0.40, 0.75]) + rng.normal(0, 0.05, 3).astype(np.float32)
    if kind < 0.8:
        return np.float32([0.70, 0.15, 0.12]) + rng.normal(0, 0.05, 3).astype(np.float32)
    if kind < 0.9:  # green like the grass and the trees
        return np.float32([0.28, 0.50, 0.22]) + rng.normal(0, 0.05, 3).astype(np.float32)
    return np.float32([0.85, 0.75, 0.30]) + rng.normal(0, 0.05, 3).astype(np.float32)


def _plan_car(rng: np.random.Generator, canvas: _Canvas, scene: _Scene, on_road: np.ndarray,
              base_y: float) -> _Draw | None:
    """A car on row ``base_y`` of the road, sized to fit the road's width there; None where the road is too narrow."""
    y, x, unit = canvas.yy, canvas.xx, scene.unit
    cols = np.flatnonzero(on_road[int(base_y)])
    left, right = float(cols.min()), float(cols.max()) + 1.0
    scale = scene.depth(base_y)
    car_w = min(rng.uniform(11, 17) * unit * scale, 0.9 * (right - left))
    if car_w < 3:
        return None
    centre_x = rng.uniform(left + car_w / 2, right - car_w / 2)
    body_rgb = _car_colour(rng)
    body_h, cab_h = car_w * rng.uniform(0.28, 0.36), car_w * rng.uniform(0.2, 0.28)
    cab_w, cab_dx = car_w * rng.uniform(0.5, 0.65), car_w * rng.uniform(-0.1, 0.1)
    glass_rgb = scene.sky_rgb * 0.7 if rng.random() < 0.5 else np.float32([0.2, 0.24, 0.3])

    def car(k: int) -> None:
        wheel_r = max(0.7, 0.12 * car_w)
        body_bottom = base_y - 0.6 * wheel_r
        body_top = body_bottom - body_h
        canvas.paint(_rect(canvas, body_top, body_bottom, centre_x - car_w / 2, centre_x + car_w / 2), CAR, body_rgb,
                     k)
        cab_top = body_top - cab_h
        cab = (y >= cab_top) & (y < body_top) & \
            (np.abs(x - centre_x - cab_dx) < cab_w / 2 - 0.5 * (body_top - y))
        canvas.paint(cab, CAR, body_rgb, k)
        glass = (y >= cab_top + 0.25 * cab_h) & (y < body_top) & \
            (np.abs(x - centre_x - cab_dx) < cab_w / 2 - 0.5 * (body_top - y) - 0.12 * cab_w)
        canvas.paint(glass, CAR, glass_rgb, k)
        for side in (-1, 1):
            canvas.paint(_ellipse(canvas, base_y - wheel_r, centre_x + side * 0.3 * car_w, wheel_r, wheel_r), CAR,
                         np.float32([0.08, 0.08, 0.08]), k)

    return car


#: Person height range in pixels of a 64-pixel-high image (before the depth factor).
PERSON_HEIGHT = (14.0, 20.0)


def _plan_person(rng: np.random.Generator, canvas: _Canvas, scene: _Scene, base_y: float, centre_x: float) -> _Draw:
    """A small person standing at ``(base_y, centre_x)``: legs, shirt of any colour, head."""
    scale = scene.depth(base_y)
    person_h = max(6.0, rng.uniform(PERSON_HEIGHT[0], PERSON_HEIGHT[1]) * scene.unit * scale)
    person_w = max(2.5, 0.4 * person_h)
    shirt = rng.uniform(0.1, 0.9, 3).astype(np.float32)
    legs_rgb = np.float32([0.15, 0.2, 0.4]) if rng.random() < 0.5 else _grey(rng.uniform(0.1, 0.4), rng)
    skin = np.float32([0.85, 0.65, 0.5]) * rng.uniform(0.6, 1.05)

    def person(k: int) -> None:
        head_r = max(0.8, 0.13 * person_h)
        canvas.paint(_rect(canvas, base_y - 0.45 * person_h, base_y, centre_x - 0.4 * person_w,
                           centre_x + 0.4 * person_w), PERSON, legs_rgb, k)
        canvas.paint(_rect(canvas, base_y - person_h + 1.8 * head_r, base_y - 0.45 * person_h,
                           centre_x - person_w / 2, centre_x + person_w / 2), PERSON, shirt, k)
        canvas.paint(_ellipse(canvas, base_y - person_h + head_r, centre_x, head_r, head_r), PERSON, skin, k)

    return person


def _plan_objects(rng: np.random.Generator, canvas: _Canvas, scene: _Scene) -> list[tuple[float, _Draw]]:
    """Place the objects on the background; returns ``(base row, draw)`` pairs in placement order.

    Houses stand on the far part of the grass, trees on the grass, cars only
    on the road, people on grass or road.
    """
    y = canvas.yy
    stuff = canvas.label.copy()  # placement reads the background, not objects drawn so far
    objects: list[tuple[float, _Draw]] = []
    grass_far = (stuff == GRASS) & scene.below & (y < scene.horizon_y + 0.5 * (canvas.h - scene.horizon_y))
    for _ in range(rng.integers(0, 3)):
        at = _pick(rng, grass_far)
        if at is None:
            break
        objects.append((at[0], _plan_house(rng, canvas, scene, *at)))
    on_grass = (stuff == GRASS) & scene.below
    for _ in range(rng.integers(0, 5)):
        at = _pick(rng, on_grass)
        if at is None:
            break
        objects.append((at[0], _plan_tree(rng, canvas, scene, *at)))
    on_road = stuff == ROAD
    if on_road.any():
        for _ in range(rng.integers(0, 4)):
            at = _pick(rng, on_road & scene.below)
            if at is None:
                break
            car = _plan_car(rng, canvas, scene, on_road, at[0])
            if car is not None:
                objects.append((at[0], car))
    on_foot = ((stuff == GRASS) | (stuff == ROAD)) & scene.below
    for _ in range(rng.integers(0, 4)):
        at = _pick(rng, on_foot)
        if at is None:
            break
        objects.append((at[0], _plan_person(rng, canvas, scene, *at)))
    return objects


def _photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Colour cast, brightness, contrast (haze, dusk) and per-pixel noise; returns the uint8 image.

    Low contrast in part of the scenes keeps the class colours within a few
    multiples of an 8/255 perturbation of each other, as in real dim or hazy
    photographs, so that a standard model is clearly vulnerable (DESIGN.md:
    PGD-20 at 8/255 must remove half its mIoU).
    """
    img = img * (1 + rng.normal(0, 0.05, 3)).astype(np.float32) * np.float32(rng.uniform(0.75, 1.2))
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = mean + np.float32(rng.uniform(0.4, 1.0)) * (img - mean)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(*PIXEL_NOISE_STD))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _render(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene; returns ``(uint8 [H,W,3] image, uint8 [H,W] label)``.

    Every step draws from ``rng`` in a fixed order, so the order of the calls
    below is part of what a seed produces (see :data:`FORMAT_VERSION`).
    """
    canvas = _Canvas(h, w)
    scene = _draw_sky(rng, canvas)
    _draw_grass(rng, canvas, scene)
    _draw_lake(rng, canvas, scene)
    _draw_road(rng, canvas, scene)
    objects = _plan_objects(rng, canvas, scene)
    # far to near, so nearer objects occlude farther ones (stable sort keeps the draw order reproducible)
    objects.sort(key=lambda o: o[0])
    for k, (_base_y, draw) in enumerate(objects, 1):
        draw(k)
    label = canvas.label
    label[canvas.void_band()] = IGNORE_INDEX
    return _photometric(rng, canvas.img), label


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
    im.putpalette(flat_palette(SYNTHETIC_PALETTE))
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


__all__ = ["FORMAT_VERSION", "SPLITS", "SYNTHETIC_CLASSES", "SYNTHETIC_PALETTE", "generate_synthetic", "render_scene"]
