"""A deterministic generator of small street scenes, written as real PNG files.

Each scene has sky and pavement (background), a road in perspective, buildings
with windows, cars and pedestrians that occlude each other, and unlabelled
"void" objects (poles, trees) marked with the ignore index, as real datasets do.
Colours, sizes, positions, lighting and noise vary, and the class frequencies are
imbalanced like real data: lots of road and background, few pedestrian pixels.
Same seed, same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["background", "road", "car", "pedestrian", "building"]
IGNORE_INDEX = 255
HEIGHT, WIDTH = 240, 320
SPLITS = ("train", "val", "test")
BACKGROUND, ROAD, CAR, PEDESTRIAN, BUILDING = range(5)


def _colour(rng: np.random.Generator, base: tuple[int, int, int], spread: int) -> tuple[int, int, int]:
    jitter = rng.integers(-spread, spread + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(base) + jitter, 0, 255))


class _Canvas:
    """Draws every shape twice: in colour on the image, as a class index on the mask."""

    def __init__(self, height: int, width: int) -> None:
        self.image = Image.new("RGB", (width, height))
        self.mask = Image.new("L", (width, height))
        self._img = ImageDraw.Draw(self.image)
        self._msk = ImageDraw.Draw(self.mask)

    def polygon(self, points, colour, label) -> None:
        self._img.polygon(points, fill=colour)
        self._msk.polygon(points, fill=label)

    def rectangle(self, box, colour, label) -> None:
        self._img.rectangle(box, fill=colour)
        self._msk.rectangle(box, fill=label)

    def ellipse(self, box, colour, label) -> None:
        self._img.ellipse(box, fill=colour)
        self._msk.ellipse(box, fill=label)

    def paint(self, box, colour) -> None:
        """Colour only (windows, lane marks, wheels' hubs): the label does not change."""
        self._img.rectangle(box, fill=colour)


def _draw_buildings(c: _Canvas, rng: np.random.Generator, horizon: int, width: int) -> None:
    x = int(rng.integers(-40, 20))
    while x < width:
        w = int(rng.integers(35, 110))
        if rng.random() < 0.25:  # a gap between buildings shows the sky
            x += w // 2
            continue
        top = int(rng.integers(max(5, horizon - 170), max(6, horizon - 25)))
        wall = _colour(rng, [(150, 80, 60), (170, 170, 160), (110, 120, 140), (200, 180, 140)][rng.integers(4)], 25)
        c.rectangle((x, top, x + w, horizon + 2), wall, BUILDING)
        window = _colour(rng, (50, 60, 80), 20) if rng.random() < 0.7 else _colour(rng, (220, 210, 150), 20)
        for wy in range(top + 6, horizon - 8, int(rng.integers(12, 20))):
            for wx in range(x + 5, x + w - 8, int(rng.integers(10, 16))):
                c.paint((wx, wy, wx + 5, wy + 6), window)
        x += w + int(rng.integers(0, 15))


def _draw_road(c: _Canvas, rng: np.random.Generator, horizon: int, height: int, width: int) -> tuple[float, float]:
    """A trapezoid from a vanishing point to the bottom edge; returns its bottom-edge centre and half width."""
    vanish_x = width * rng.uniform(0.3, 0.7)
    bottom_centre = width * rng.uniform(0.3, 0.7)
    half_bottom = width * rng.uniform(0.3, 0.6)
    half_top = width * rng.uniform(0.01, 0.05)
    asphalt = _colour(rng, (85, 85, 90), 20)
    points = [
        (vanish_x - half_top, horizon),
        (vanish_x + half_top, horizon),
        (bottom_centre + half_bottom, height),
        (bottom_centre - half_bottom, height),
    ]
    c.polygon(points, asphalt, ROAD)
    if rng.random() < 0.8:  # dashed centre line: still road
        line = _colour(rng, (230, 230, 220), 15)
        for t in np.arange(0.05, 1.0, 0.12):
            y = horizon + t * (height - horizon)
            x = vanish_x + t * (bottom_centre - vanish_x)
            size = 1 + 3 * t
            c.paint((x - size, y, x + size, y + 6 * t + 1), line)
    return vanish_x, bottom_centre, half_top, half_bottom


def _road_x(rng, horizon, height, road, y: float) -> float:
    vanish_x, bottom_centre, half_top, half_bottom = road
    t = (y - horizon) / max(1.0, height - horizon)
    centre = vanish_x + t * (bottom_centre - vanish_x)
    half = half_top + t * (half_bottom - half_top)
    return float(centre + rng.uniform(-0.8, 0.8) * half)


def _car(c: _Canvas, rng, x: float, y: float, scale: float) -> None:
    w, h = 60 * scale, 26 * scale
    body = _colour(
        rng, [(180, 30, 30), (30, 60, 160), (220, 220, 220), (30, 30, 30), (200, 170, 40)][rng.integers(5)], 30
    )
    c.rectangle((x - w / 2, y - h, x + w / 2, y - h * 0.25), body, CAR)
    c.polygon(
        [(x - w * 0.3, y - h), (x - w * 0.2, y - h * 1.6), (x + w * 0.2, y - h * 1.6), (x + w * 0.3, y - h)], body, CAR
    )
    c.paint((x - w * 0.17, y - h * 1.5, x + w * 0.17, y - h * 1.05), _colour(rng, (60, 80, 100), 15))
    for wx in (x - w * 0.3, x + w * 0.3):
        c.ellipse((wx - h * 0.3, y - h * 0.55, wx + h * 0.3, y), (20, 20, 20), CAR)


def _pedestrian(c: _Canvas, rng, x: float, y: float, scale: float) -> None:
    h = 55 * scale
    w = h * 0.28
    skin = _colour(rng, [(230, 190, 160), (150, 100, 70), (90, 60, 40)][rng.integers(3)], 15)
    shirt = _colour(rng, tuple(int(v) for v in rng.integers(20, 235, 3)), 10)
    trousers = _colour(rng, [(40, 40, 70), (60, 60, 60), (120, 100, 70)][rng.integers(3)], 15)
    c.rectangle((x - w * 0.35, y - h * 0.45, x - w * 0.05, y), trousers, PEDESTRIAN)
    c.rectangle((x + w * 0.05, y - h * 0.45, x + w * 0.35, y), trousers, PEDESTRIAN)
    c.rectangle((x - w / 2, y - h * 0.82, x + w / 2, y - h * 0.42), shirt, PEDESTRIAN)
    c.ellipse((x - w * 0.3, y - h, x + w * 0.3, y - h * 0.8), skin, PEDESTRIAN)


def _void_object(c: _Canvas, rng, x: float, y: float, scale: float) -> None:
    """Things the dataset does not label (poles, trees): drawn, but marked with the ignore index."""
    if rng.random() < 0.5:
        h = 110 * scale
        c.rectangle((x - 2 * scale, y - h, x + 2 * scale, y), _colour(rng, (120, 120, 120), 20), IGNORE_INDEX)
        c.rectangle(
            (x - 9 * scale, y - h, x + 9 * scale, y - h + 14 * scale), _colour(rng, (30, 90, 200), 30), IGNORE_INDEX
        )
    else:
        h = 90 * scale
        c.rectangle((x - 4 * scale, y - h * 0.5, x + 4 * scale, y), _colour(rng, (100, 70, 40), 15), IGNORE_INDEX)
        c.ellipse((x - 25 * scale, y - h, x + 25 * scale, y - h * 0.4), _colour(rng, (50, 120, 50), 30), IGNORE_INDEX)


def render_scene(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """One scene: an ``(H, W, 3)`` uint8 image and its ``(H, W)`` uint8 mask."""
    c = _Canvas(height, width)
    horizon = int(height * rng.uniform(0.3, 0.55))
    top_sky, low_sky = _colour(rng, (90, 140, 210), 40), _colour(rng, (190, 210, 230), 25)
    for y in range(horizon):  # sky gradient
        t = y / max(1, horizon)
        c.paint((0, y, width, y), tuple(int((1 - t) * a + t * b) for a, b in zip(top_sky, low_sky)))
    ground = _colour(rng, [(150, 150, 140), (90, 130, 60), (160, 140, 110)][rng.integers(3)], 20)
    c.paint((0, horizon, width, height), ground)
    if rng.random() < 0.85:
        _draw_buildings(c, rng, horizon, width)
    road = _draw_road(c, rng, horizon, height, width)

    objects = []  # (foot y, kind, x, scale): drawn far to near so near ones occlude
    for _ in range(int(rng.integers(0, 5))):
        y = rng.uniform(horizon + 8, height + 10)
        objects.append((y, "car", _road_x(rng, horizon, height, road, y)))
    for _ in range(int(rng.integers(0, 6))):
        y = rng.uniform(horizon + 5, height + 5)
        objects.append((y, "pedestrian", rng.uniform(0, width)))
    for _ in range(int(rng.integers(0, 3))):
        y = rng.uniform(horizon + 5, height)
        objects.append((y, "void", rng.uniform(0, width)))
    for y, kind, x in sorted(objects, key=lambda o: o[0]):
        scale = 0.25 + 1.6 * (y - horizon) / (height - horizon)
        {"car": _car, "pedestrian": _pedestrian, "void": _void_object}[kind](c, rng, x, y, scale)

    image = np.asarray(c.image, dtype=np.float32)
    # Lighting: a brightness ramp across the image, then sensor noise.
    ramp = np.linspace(rng.uniform(0.7, 1.1), rng.uniform(0.8, 1.2), width, dtype=np.float32)
    image = image * ramp[None, :, None] * rng.uniform(0.8, 1.15)
    image += rng.normal(0.0, rng.uniform(2.0, 10.0), image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), np.asarray(c.mask, dtype=np.uint8)


def _write_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def generate_dataset(
    data_dir: str | Path,
    num_train: int = 96,
    num_val: int = 24,
    num_test: int = 24,
    seed: int = 42,
    height: int = HEIGHT,
    width: int = WIDTH,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic dataset to ``data_dir`` in the course layout and return its path.

    The files are written to a temporary folder next to ``data_dir`` and moved
    into place at the end, so an interrupted run never leaves half a dataset.
    """
    data_dir = Path(data_dir)
    if data_dir.exists() and any(data_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{data_dir} already exists and is not empty; pass overwrite=True to replace it.")
        if not (data_dir / "classes.json").is_file():
            raise FileExistsError(f"Refusing to overwrite {data_dir}: it does not look like a course dataset.")
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}-", dir=data_dir.parent))
    try:
        counts = {"train": num_train, "val": num_val, "test": num_test}
        for split_id, split in enumerate(SPLITS):
            (staging / split / "images").mkdir(parents=True)
            (staging / split / "masks").mkdir(parents=True)
            for i in range(counts[split]):
                rng = np.random.default_rng([seed, split_id, i])
                image, mask = render_scene(rng, height, width)
                _write_png(image, staging / split / "images" / f"{split}_{i:04d}.png")
                _write_png(mask, staging / split / "masks" / f"{split}_{i:04d}.png")
        info = {"classes": CLASSES, "ignore_index": IGNORE_INDEX, "source": f"helpers.synthetic seed={seed}"}
        (staging / "classes.json").write_text(json.dumps(info, indent=2) + "\n")
        if data_dir.exists():
            shutil.rmtree(data_dir)
        os.replace(staging, data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return data_dir
