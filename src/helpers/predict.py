"""Predict masks for images of any size and kind, and map them back to the original resolution.

Learners feed the predictor whatever they have: phone photos with an EXIF rotation,
grayscale scans, PNGs with transparency or a palette, 16-bit images, thumbnails,
40-megapixel pictures, and the odd text file in the same folder. Each is either
converted to 8-bit RGB or refused with a message that names the file.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError

# Native-size predictions are bounded: a 4000x6000 photo would need tens of GB of
# feature maps at full resolution. Bigger images are shrunk to this longest side
# for the network (the mask still comes back at full size); tiny ones are enlarged.
MAX_SIDE = 2048
MIN_SIDE = 32


class ImageReadError(ValueError):
    """A file that cannot be used as an input image; the message names it and says why."""


def read_image(path: str | Path) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB, upright.

    EXIF orientation is applied (phone photos come out the right way up); grayscale,
    palette, RGBA and 16-bit images are converted. Anything else raises
    :class:`ImageReadError` naming the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file.") from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"{path} is not an image file (PIL cannot identify it). Predict on PNG, JPEG, BMP, TIFF or WebP images."
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path} could not be decoded ({err}); the file may be truncated or corrupt.") from None
    return to_rgb8(image, path)


def to_rgb8(image: Image.Image, name: str | Path = "image") -> np.ndarray:
    """A PIL image of any common mode as ``(H, W, 3)`` uint8 RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        if image.mode == "F":
            top = max(float(values.max()), 1e-12)
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels become white, as most viewers show them
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    rgb = np.asarray(image.convert("RGB"))
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or min(rgb.shape[:2]) < 1:
        raise ImageReadError(f"{name}: could not convert mode {image.mode} with size {image.size} to RGB.")
    return rgb


def network_size(height: int, width: int, image_size: int | None) -> tuple[int, int]:
    """The size the image is resized to before the network sees it.

    ``image_size`` (the training crop size) scales the shorter side to it, as the
    training pipeline does (:func:`helpers.data.base_shape`); ``None`` keeps the image's
    own size, shrunk to at most ``MAX_SIDE`` and enlarged to at least ``MIN_SIDE``.
    Either way the aspect ratio is kept.
    """
    if image_size is not None:
        scale = image_size / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    scale = min(1.0, MAX_SIDE / max(height, width))
    scale = max(scale, MIN_SIDE / min(height, width))
    return max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale))


_ANY_SIZE_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predict_scores(model: keras.Model, images) -> tf.Tensor:
    """Class scores (float32) for a batch of images of any height and width.

    Runs one graph traced with every dimension unknown, kept per model. Keras's
    ``predict_on_batch`` retraces for a new size with only *some* dimensions unknown,
    and TensorFlow's dilated depthwise conv (ASPP's atrous separable convs) then pads
    with the wrong amount and fails ("padded_shape ... is not divisible by block_shape").
    """
    function = _ANY_SIZE_FUNCTIONS.get(model)
    if function is None:
        spec = tf.TensorSpec((None, None, None, 3), tf.float32)
        function = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        _ANY_SIZE_FUNCTIONS[model] = function
    return tf.cast(function(tf.convert_to_tensor(images, tf.float32)), tf.float32)


def predict_mask(model: keras.Model, image: np.ndarray, image_size: int | None = None) -> np.ndarray:
    """Class index per pixel of ``image`` (``(H, W, 3)``, 0-255), at the image's own size.

    The image is resized to :func:`network_size`, and the *scores* are resized back
    to ``H x W`` bilinearly before the argmax: resizing the argmax'ed mask instead
    gives blocky, shifted edges. The scores are enlarged one class at a time, so a
    40-megapixel photo needs a few hundred MB, not gigabytes.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Expected an (H, W, 3) RGB image, got shape {image.shape}. Use read_image() to convert.")
    height, width = image.shape[:2]
    batch = tf.convert_to_tensor(image[None], tf.float32)
    size = network_size(height, width, image_size)
    if size != (height, width):
        batch = tf.image.resize(batch, size, method="bilinear", antialias=size[0] < height)
    scores = predict_scores(model, batch)
    if tuple(scores.shape[1:3]) == (height, width):
        return np.argmax(scores[0].numpy(), axis=-1).astype(np.uint8)
    best = np.full((height, width), -np.inf, np.float32)
    labels = np.zeros((height, width), np.uint8)
    for c in range(scores.shape[-1]):
        channel = tf.image.resize(scores[..., c : c + 1], (height, width), method="bilinear")[0, ..., 0].numpy()
        better = channel > best
        best[better], labels[better] = channel[better], c
    return labels


@dataclass
class PredictionReport:
    """What :func:`predict_folder` wrote, and every file it skipped with the reason."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def format(self) -> str:
        lines = [f"Wrote {len(self.written)} mask(s)."]
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} file(s):")
            lines += [f"  - {reason}" for _, reason in self.skipped]
        return "\n".join(lines)


def predict_folder(
    model: keras.Model, input_dir: str | Path, output_dir: str | Path, image_size: int | None = None
) -> PredictionReport:
    """Write one single-channel PNG mask per image in ``input_dir``, with the same stem.

    Every visible file is tried. Those that are not usable images are skipped and
    reported, not fatal: one stray file should not cost the other predictions.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir} is not a folder of images.")
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{input_dir} is empty: put the images to predict in it.")
    report = PredictionReport()
    for path in files:
        if path.stem in {done.stem for done in report.written}:
            report.skipped.append((path, f"{path}: another image with the stem {path.stem!r} was already predicted."))
            continue
        try:
            image = read_image(path)
        except ImageReadError as err:
            report.skipped.append((path, str(err)))
            continue
        mask = predict_mask(model, image, image_size)
        output_dir.mkdir(parents=True, exist_ok=True)
        target = output_dir / f"{path.stem}.png"
        tmp = target.with_name(f".{target.stem}-partial.png")
        Image.fromarray(mask).save(tmp, format="PNG")
        tmp.replace(target)
        report.written.append(target)
    return report
