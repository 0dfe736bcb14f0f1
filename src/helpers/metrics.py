"""Mean intersection over union, computed the way benchmarks compute it.

One confusion matrix is accumulated over the whole split; IoU per class is
``TP / (TP + FP + FN)`` from it, pixels with the ignore index are left out, and a
class that appears in neither the ground truth nor the predictions has no IoU
(it is reported as absent and left out of the mean, not scored as 0).

``per_batch_mean_iou`` is the reference tutorial's formula, kept for the lesson
on why averaging it over batches gives a different, biased number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """``num_classes x num_classes`` counts: row = true class, column = predicted class.

    Pixels whose true label is ``ignore_index`` are skipped. Any other label
    outside ``0..num_classes-1``, in either input, is an error, never silently dropped.
    """
    y_true = np.asarray(y_true).ravel().astype(np.int64)
    y_pred = np.asarray(y_pred).ravel().astype(np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} pixels but y_pred has {y_pred.size}; they must match.")
    keep = np.ones_like(y_true, bool) if ignore_index is None else y_true != ignore_index
    y_true, y_pred = y_true[keep], y_pred[keep]
    for name, values in (("ground truth", y_true), ("prediction", y_pred)):
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.size:
            raise ValueError(
                f"The {name} contains label {int(bad[0])}, which is neither a class (0..{num_classes - 1}) "
                f"nor the ignore index ({ignore_index}). Check num_classes and classes.json."
            )
    counts = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


class ConfusionMatrix:
    """A confusion matrix that accumulates batch after batch over a whole split."""

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, y_true, y_pred) -> None:
        self.matrix += confusion_matrix(y_true, y_pred, self.num_classes, self.ignore_index)

    def reset(self) -> None:
        self.matrix[:] = 0

    def scores(self) -> SegmentationScores:
        return scores_from_confusion(self.matrix)


@dataclass(frozen=True)
class SegmentationScores:
    """IoU per class (NaN where the class is absent), their mean, and pixel accuracy."""

    per_class_iou: np.ndarray
    miou: float
    pixel_accuracy: float
    present: np.ndarray

    @property
    def absent_classes(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.present)]

    def as_dict(self, class_names) -> dict[str, object]:
        """JSON-ready: per-class IoU by name (``None`` for absent classes)."""
        return {
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "per_class_iou": {
                name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, self.per_class_iou)
            },
            "absent_classes": [class_names[i] for i in self.absent_classes],
        }


def scores_from_confusion(matrix: np.ndarray) -> SegmentationScores:
    """IoU per class, mIoU over the classes present, and pixel accuracy."""
    matrix = np.asarray(matrix, np.float64)
    true_positive = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    present = union > 0
    iou = np.full(len(matrix), np.nan)
    iou[present] = true_positive[present] / union[present]
    miou = float(iou[present].mean()) if present.any() else float("nan")
    total = matrix.sum()
    accuracy = float(true_positive.sum() / total) if total else float("nan")
    return SegmentationScores(iou, miou, accuracy, present)


def per_batch_mean_iou(y_true, y_pred, num_classes: int, epsilon: float = 1e-7) -> float:
    """The reference tutorial's formula on one batch of class indices.

    Every class counts, so a class absent from this batch scores 0 and drags the
    mean down; there is no ignore index. Averaging this over batches is not the
    dataset's mIoU.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    ious = []
    for c in range(num_classes):
        intersection = np.sum((y_true == c) & (y_pred == c))
        union = np.sum((y_true == c) | (y_pred == c))
        ious.append(intersection / (union + epsilon))
    return float(np.mean(ious))
