"""Evaluate a model on a split: streaming confusion matrix, scores, and ``metrics.json``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from helpers import artifacts, data
from helpers.config import Settings
from helpers.metrics import ConfusionMatrix, SegmentationScores, per_batch_mean_iou
from helpers.predict import predict_scores


@dataclass
class Evaluation:
    scores: SegmentationScores
    confusion: np.ndarray
    per_batch_miou: float
    num_images: int
    split: str
    classes: tuple[str, ...]

    def as_dict(self) -> dict:
        return {
            **self.scores.as_dict(self.classes),
            "split": self.split,
            "num_images": self.num_images,
            "reference_per_batch_miou": self.per_batch_miou,
            "confusion_matrix": self.confusion.tolist(),
            "classes": list(self.classes),
        }


TTA_MODES = {  # test-time augmentation: (horizontal flip?, scales)
    "none": (False, (1.0,)),
    "flip": (True, (1.0,)),
    "multiscale": (True, (0.75, 1.0, 1.25)),
}


def tta_probabilities(model: keras.Model, images, mode: str = "none") -> np.ndarray:
    """Class probabilities for ``images``, averaged over flipped and rescaled copies (``TTA_MODES``).

    Each copy's prediction is mapped back (unflipped, resized to the input's size)
    before averaging, so every view votes on the same pixel. Cost: one forward pass
    per view (1, 2 or 6), at the view's size.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"tta={mode!r} is not a mode; use one of {', '.join(TTA_MODES)}.")
    flip, scales = TTA_MODES[mode]
    images = tf.convert_to_tensor(images, tf.float32)
    height, width = int(images.shape[1]), int(images.shape[2])
    total, views = 0.0, 0
    for scale in scales:
        size = (max(16, round(height * scale)), max(16, round(width * scale)))
        scaled = images if scale == 1.0 else tf.image.resize(images, size, method="bilinear")
        for flipped in (False, True) if flip else (False,):
            view = tf.reverse(scaled, axis=[2]) if flipped else scaled
            probabilities = tf.nn.softmax(predict_scores(model, view))
            if flipped:
                probabilities = tf.reverse(probabilities, axis=[2])
            if scale != 1.0:
                probabilities = tf.image.resize(probabilities, (height, width), method="bilinear")
            total, views = total + probabilities, views + 1
    return (total / views).numpy()


def evaluate_model(
    model: keras.Model, dataset, info: data.DatasetInfo, split: str = "test", tta: str = "none"
) -> Evaluation:
    """Run ``model`` over ``dataset`` once; accumulate one confusion matrix for the whole split.

    Also reports the reference tutorial's per-batch average on the same
    predictions, so the two can be compared. ``tta`` picks test-time augmentation.
    """
    matrix = ConfusionMatrix(info.num_classes, info.ignore_index)
    batch_scores, count = [], 0
    for images, masks in dataset:
        predicted = np.argmax(tta_probabilities(model, images, tta), axis=-1)
        masks = np.asarray(masks)
        matrix.update(masks, predicted)
        batch_scores.append(per_batch_mean_iou(masks, predicted, info.num_classes))
        count += len(masks)
    return Evaluation(matrix.scores(), matrix.matrix.copy(), float(np.mean(batch_scores)), count, split, info.classes)


def evaluate(
    settings: Settings, model: keras.Model | None = None, split: str = "test", write: bool = True, tta: str = "none"
) -> Evaluation:
    """Evaluate the trained model (or ``model``) on ``split`` and write ``metrics.json``."""
    data_dir = data.ensure_data(settings)
    info = data.read_dataset_info(data_dir)
    paths = artifacts.output_paths(settings.output_dir)
    model = model or artifacts.load_model(paths["model"])
    dataset = data.make_dataset(data_dir, split, settings.image_size, settings.batch_size, False, settings.seed, info)
    result = evaluate_model(model, dataset, info, split, tta)
    if write:
        artifacts.write_json(paths["metrics"], {**result.as_dict(), "tta": tta})
    return result


def metrics_path(settings: Settings) -> Path:
    return artifacts.output_paths(settings.output_dir)["metrics"]
