"""Evaluate a model on a split: streaming confusion matrix, scores, and ``metrics.json``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from helpers import artifacts, data
from helpers.config import Settings
from helpers.imageio import read_image
from helpers.metrics import ConfusionMatrix, SegmentationScores, per_batch_mean_iou
from helpers.predict import TTA_MODES, predict_mask, tta_probabilities

__all__ = ["TTA_MODES", "Evaluation", "default_split", "evaluate", "evaluate_model", "tta_probabilities"]


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


def default_split(data_dir: str | Path) -> str:
    """``"test"`` if the dataset has a test split, else ``"val"`` (many datasets ship only train and val)."""
    return "test" if (Path(data_dir) / "test" / "images").is_dir() else "val"


def evaluate_model(
    model: keras.Model,
    data_dir: str | Path,
    info: data.DatasetInfo,
    image_size: int | None,
    split: str = "test",
    tta: str = "none",
    batch_size: int = 8,
) -> Evaluation:
    """Score ``model`` on every image of ``split`` at the mask's native resolution, in one confusion matrix.

    Each image goes through :func:`helpers.predict.predict_mask` (scaled so its shorter
    side is ``image_size``, scores resized back to the mask's own size), so the number is
    what ``predict_mask`` with the same ``tta`` gives, and thin structures are judged at the resolution they
    were labelled at. Also reports the reference tutorial's per-batch average (batches of
    ``batch_size`` consecutive images) on the same predictions, so the two can be compared.
    """
    images, masks = data.list_pairs(data_dir, split)
    matrix = ConfusionMatrix(info.num_classes, info.ignore_index)
    batch_scores, batch = [], []
    for image_path, mask_path in zip(images, masks):
        truth = data.read_mask(mask_path, info)
        predicted = predict_mask(model, read_image(image_path), image_size, tta)
        matrix.update(truth, predicted)
        batch.append((truth.ravel(), predicted.ravel()))
        if len(batch) == batch_size or mask_path == masks[-1]:
            truths, predictions = (np.concatenate(part) for part in zip(*batch))
            batch_scores.append(per_batch_mean_iou(truths, predictions, info.num_classes))
            batch = []
    return Evaluation(
        matrix.scores(), matrix.matrix.copy(), float(np.mean(batch_scores)), len(images), split, info.classes
    )


def evaluate(
    settings: Settings,
    model: keras.Model | None = None,
    split: str | None = None,
    write: bool = True,
    tta: str = "none",
) -> Evaluation:
    """Evaluate the trained model (or ``model``) on ``split`` and write ``metrics.json``.

    ``split=None`` takes the test split, or val for a dataset without one (and says so).
    """
    data_dir = data.ensure_data(settings)
    info = data.read_dataset_info(data_dir)
    if split is None:
        split = default_split(data_dir)
        if split == "val":
            print(f"{data_dir} has no test split, so the model is evaluated on the validation split.")
    paths = artifacts.output_paths(settings.output_dir)
    model = model or artifacts.load_model(paths["model"], info)
    result = evaluate_model(model, data_dir, info, settings.image_size, split, tta, settings.batch_size)
    if write:
        artifacts.write_json(paths["metrics"], {**result.as_dict(), "tta": tta})
    return result


def metrics_path(settings: Settings) -> Path:
    return artifacts.output_paths(settings.output_dir)["metrics"]
