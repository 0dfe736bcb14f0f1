"""The Lovász-softmax loss (Berman et al., CVPR 2018): a smooth surrogate of 1 - IoU, per class.

Cross-entropy counts pixels, so a class that covers 0.5% of the image moves it little;
mIoU gives every class the same say. Lovász-softmax closes that gap: for each class it
sorts the pixels by how wrong the softmax is about them and weighs the errors by how much
each one changes that class's IoU. On hard (0/1) predictions it equals 1 - IoU exactly.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def lovasz_gradient(truth_sorted: tf.Tensor) -> tf.Tensor:
    """Per-position weights of the Lovász extension of the Jaccard loss.

    ``truth_sorted``: 0/1 ground truth of one class, ordered by decreasing error (last axis).
    Entry ``i`` is how much the Jaccard loss grows when the ``i``-th worst pixel is counted wrong.
    """
    total = tf.reduce_sum(truth_sorted, axis=-1, keepdims=True)
    intersection = total - tf.cumsum(truth_sorted, axis=-1)
    union = total + tf.cumsum(1.0 - truth_sorted, axis=-1)
    jaccard = 1.0 - intersection / union
    return tf.concat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1)


def lovasz_softmax(probabilities: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Mean over the classes present in ``labels`` of the Lovász-extended Jaccard loss.

    ``probabilities``: ``(pixels, classes)`` softmax outputs; ``labels``: ``(pixels,)`` class ids,
    already without ignored pixels.
    """
    num_classes = tf.shape(probabilities)[-1]
    truth = tf.one_hot(labels, num_classes, dtype=probabilities.dtype)  # (pixels, classes)
    errors = tf.transpose(tf.abs(truth - probabilities))  # (classes, pixels)
    errors_sorted, order = tf.math.top_k(errors, k=tf.shape(errors)[-1])
    truth_sorted = tf.gather(tf.transpose(truth), order, batch_dims=1)
    per_class = tf.reduce_sum(errors_sorted * tf.stop_gradient(lovasz_gradient(truth_sorted)), axis=-1)
    present = tf.cast(tf.reduce_sum(truth, axis=0) > 0, per_class.dtype)
    return tf.math.divide_no_nan(tf.reduce_sum(per_class * present), tf.reduce_sum(present))


class CrossEntropyPlusLovasz(keras.losses.Loss):
    """``cross_entropy(y_true, y_pred) + lovasz_softmax`` over the batch's labelled pixels.

    Cross-entropy gives every pixel a gradient from the first step; the Lovász term pulls
    the classes the pixel count neglects towards their IoU. Ignored pixels count in neither.
    The Lovász term sorts every pixel once per class, which on a CPU costs more than the
    model's own step at 256x256, so it reads a random ``pixel_fraction`` of the labelled pixels.
    """

    def __init__(
        self,
        cross_entropy: keras.losses.Loss,
        ignore_index: int | None = None,
        pixel_fraction: float = 1.0,
        name: str = "ce_lovasz",
    ):
        super().__init__(name=name, reduction="sum")
        if not 0 < pixel_fraction <= 1:
            raise ValueError(f"pixel_fraction must be in (0, 1], got {pixel_fraction}.")
        self.cross_entropy = cross_entropy
        self.ignore_index = ignore_index
        self.pixel_fraction = pixel_fraction

    def call(self, y_true, y_pred):
        logits = tf.cast(y_pred, tf.float32)
        num_classes = tf.shape(logits)[-1]
        labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        probabilities = tf.reshape(tf.nn.softmax(logits), [-1, num_classes])
        valid = (labels >= 0) & (labels < num_classes)
        if self.ignore_index is not None:
            valid &= labels != self.ignore_index
        if self.pixel_fraction < 1:
            valid &= tf.random.uniform(tf.shape(labels)) < self.pixel_fraction
        lovasz = lovasz_softmax(tf.boolean_mask(probabilities, valid), tf.boolean_mask(labels, valid))
        return self.cross_entropy(y_true, y_pred) + lovasz

    def get_config(self) -> dict:
        return {
            "cross_entropy": keras.saving.serialize_keras_object(self.cross_entropy),
            "ignore_index": self.ignore_index,
            "pixel_fraction": self.pixel_fraction,
            "name": self.name,
        }
