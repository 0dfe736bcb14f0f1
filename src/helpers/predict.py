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
from PIL import Image

from helpers.config import TTA_MODES
from helpers.data import scale_image, scaled_shape
from helpers.imageio import ImageReadError, read_image, to_rgb8

__all__ = [
    "ImageReadError",
    "read_image",
    "to_rgb8",
    "predict_mask",
    "predict_folder",
    "predict_scores",
    "tta_probabilities",
    "TTA_MODES",
]

# Native-size predictions are bounded: a 4000x6000 photo would need tens of GB of
# feature maps at full resolution. Bigger images are shrunk to this longest side
# for the network (the mask still comes back at full size); tiny ones are enlarged.
MAX_SIDE = 2048
MIN_SIDE = 32


def network_size(height: int, width: int, image_size: int | None) -> tuple[int, int]:
    """The size the image is resized to before the network sees it.

    ``image_size`` (the training crop size) scales the shorter side to it, as the
    training and evaluation pipelines do (:func:`helpers.data.scaled_shape`); ``None``
    keeps the image's own size, shrunk to at most ``MAX_SIDE`` and enlarged to at least
    ``MIN_SIDE``. Either way the aspect ratio is kept.
    """
    if image_size is not None:
        return scaled_shape(height, width, image_size)
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


def tta_probabilities(model: keras.Model, images, mode: str = "none") -> tf.Tensor:
    """Class probabilities for a batch, averaged over the flipped and rescaled views of ``mode``.

    Each view's prediction is mapped back (unflipped, resized to the input's size)
    before averaging, so every view votes on the same pixel. Cost: one forward pass
    per view (:func:`helpers.config.tta_passes`), at the view's size.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"tta={mode!r} is not a mode; use one of {', '.join(TTA_MODES)}.")
    images = tf.convert_to_tensor(images, tf.float32)
    flip, scales = TTA_MODES[mode]
    height, width = int(images.shape[1]), int(images.shape[2])
    total, views = 0.0, 0
    for scale in scales:
        size = (max(16, round(height * scale)), max(16, round(width * scale)))
        scaled = images if scale == 1.0 else scale_image(images, size)
        for flipped in (False, True) if flip else (False,):
            view = tf.reverse(scaled, axis=[2]) if flipped else scaled
            probabilities = tf.nn.softmax(predict_scores(model, view))
            if flipped:
                probabilities = tf.reverse(probabilities, axis=[2])
            if scale != 1.0:
                probabilities = tf.image.resize(probabilities, (height, width), method="bilinear")
            total, views = total + probabilities, views + 1
    return total / views


def predict_mask(model: keras.Model, image: np.ndarray, image_size: int | None = None, tta: str = "none") -> np.ndarray:
    """Class index per pixel of ``image`` (``(H, W, 3)``, 0-255), at the image's own size.

    The image is resized to :func:`network_size` with :func:`helpers.data.scale_image`
    (the resize training and evaluation use), and the *scores* are resized back to
    ``H x W`` bilinearly before the argmax: resizing the argmax'ed mask instead gives
    blocky, shifted edges. The scores are enlarged one class at a time, so a
    40-megapixel photo needs a few hundred MB, not gigabytes. Evaluation scores masks
    made by this very function, so what is measured is what a user gets.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Expected an (H, W, 3) RGB image, got shape {image.shape}. Use read_image() to convert.")
    height, width = image.shape[:2]
    size = network_size(height, width, image_size)
    batch = scale_image(image[None], size) if size != (height, width) else tf.constant(image[None], tf.float32)
    scores = tta_probabilities(model, batch, tta)
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
    model: keras.Model, input_dir: str | Path, output_dir: str | Path, image_size: int | None = None, tta: str = "none"
) -> PredictionReport:
    """Write one single-channel PNG mask per image in ``input_dir`` (same stem), made by :func:`predict_mask`.

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
        mask = predict_mask(model, image, image_size, tta)
        output_dir.mkdir(parents=True, exist_ok=True)
        target = output_dir / f"{path.stem}.png"
        tmp = target.with_name(f".{target.stem}-partial.png")
        Image.fromarray(mask).save(tmp, format="PNG")
        tmp.replace(target)
        report.written.append(target)
    return report
