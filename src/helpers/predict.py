"""Predict masks for images of any size and map them back to the original resolution."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from helpers import data


def predict_mask(model: keras.Model, image: np.ndarray, image_size: int | None = None) -> np.ndarray:
    """Class index per pixel of ``image`` (``(H, W, 3)``, 0-255), at the image's own size.

    The image is resized to ``image_size`` (the scale the model was trained at),
    and the *scores* are resized back to ``H x W`` bilinearly before the argmax:
    resizing the argmax'ed mask instead would give blocky, shifted edges.
    With ``image_size=None`` the image goes in at its own size (the model takes any size).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Expected an (H, W, 3) RGB image, got shape {image.shape}.")
    height, width = image.shape[:2]
    batch = tf.convert_to_tensor(image[None], tf.float32)
    if image_size is not None:
        batch = tf.image.resize(batch, (image_size, image_size), method="bilinear")
    scores = model.predict_on_batch(batch)
    scores = tf.image.resize(scores, (height, width), method="bilinear")
    return np.argmax(scores[0], axis=-1).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB (grayscale and RGBA are converted)."""
    return data.load_image(str(path)).numpy()


def predict_folder(
    model: keras.Model, input_dir: str | Path, output_dir: str | Path, image_size: int | None = None
) -> list[Path]:
    """Write one single-channel PNG mask per image in ``input_dir``, with the same stem."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir} is not a folder of images.")
    files = sorted(p for p in input_dir.iterdir() if p.suffix.lower() in data.IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{input_dir} holds no .png or .jpg images.")
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        mask = predict_mask(model, read_image(path), image_size)
        target = output_dir / f"{path.stem}.png"
        tmp = target.with_name(f".{target.stem}-partial.png")
        Image.fromarray(mask).save(tmp, format="PNG")
        tmp.replace(target)
        written.append(target)
    return written
