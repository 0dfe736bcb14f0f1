"""Evaluate a model on a split: streaming confusion matrix, scores, and ``metrics.json``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from helpers import artifacts, data
from helpers.config import Settings
from helpers.metrics import ConfusionMatrix, SegmentationScores, per_batch_mean_iou


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


def evaluate_model(model: keras.Model, dataset, info: data.DatasetInfo, split: str = "test") -> Evaluation:
    """Run ``model`` over ``dataset`` once; accumulate one confusion matrix for the whole split.

    Also reports the reference tutorial's per-batch average on the same
    predictions, so the two can be compared.
    """
    matrix = ConfusionMatrix(info.num_classes, info.ignore_index)
    batch_scores, count = [], 0
    for images, masks in dataset:
        predicted = np.argmax(model.predict_on_batch(images), axis=-1)
        masks = np.asarray(masks)
        matrix.update(masks, predicted)
        batch_scores.append(per_batch_mean_iou(masks, predicted, info.num_classes))
        count += len(masks)
    return Evaluation(matrix.scores(), matrix.matrix.copy(), float(np.mean(batch_scores)), count, split, info.classes)


def evaluate(
    settings: Settings, model: keras.Model | None = None, split: str = "test", write: bool = True
) -> Evaluation:
    """Evaluate the trained model (or ``model``) on ``split`` and write ``metrics.json``."""
    data_dir = data.ensure_data(settings)
    info = data.read_dataset_info(data_dir)
    paths = artifacts.output_paths(settings.output_dir)
    model = model or artifacts.load_model(paths["model"])
    dataset = data.make_dataset(data_dir, split, settings.image_size, settings.batch_size, False, settings.seed, info)
    result = evaluate_model(model, dataset, info, split)
    if write:
        artifacts.write_json(paths["metrics"], result.as_dict())
    return result


def metrics_path(settings: Settings) -> Path:
    return artifacts.output_paths(settings.output_dir)["metrics"]
