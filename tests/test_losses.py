"""The Lovász-softmax term: equal to 1 - IoU on hard predictions, ignored pixels left out."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import train
from helpers.losses import CrossEntropyPlusLovasz, lovasz_gradient, lovasz_softmax


def iou(truth: np.ndarray, predicted: np.ndarray, c: int) -> float:
    both = np.sum((truth == c) & (predicted == c))
    either = np.sum((truth == c) | (predicted == c))
    return both / either


def test_on_hard_predictions_it_is_one_minus_the_mean_iou_of_present_classes():
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=200, p=[0.7, 0.3, 0.0])  # class 2 absent from the truth
    predicted = np.where(rng.random(200) < 0.2, rng.integers(0, 3, 200), labels)
    hard = np.eye(3, dtype="float32")[predicted]
    expected = 1 - np.mean([iou(labels, predicted, c) for c in (0, 1)])
    got = float(lovasz_softmax(tf.constant(hard), tf.constant(labels, tf.int32)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_gradient_by_hand():
    # truth sorted by error: 1, 0, 1. Jaccard losses after counting 1, 2, 3 pixels wrong:
    # 1 - 1/2 = 0.5, 1 - 1/3 = 2/3, 1 - 0/3 = 1; the weights are their differences.
    weights = lovasz_gradient(tf.constant([1.0, 0.0, 1.0])).numpy()
    np.testing.assert_allclose(weights, [0.5, 1 / 6, 1 / 3], rtol=1e-6)


def test_loss_adds_cross_entropy_and_skips_ignored_pixels():
    logits = tf.random.stateless_normal((2, 4, 4, 3), seed=(1, 2))
    labels = tf.constant(np.random.default_rng(1).integers(0, 3, (2, 4, 4)), tf.int32)
    ignored = tf.tensor_scatter_nd_update(labels, [[0, 0, 0], [1, 3, 3]], [255, 255])
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    loss = CrossEntropyPlusLovasz(cross_entropy, ignore_index=255)
    keep = tf.reshape(ignored, [-1]) != 255
    flat_probabilities = tf.boolean_mask(tf.reshape(tf.nn.softmax(logits), [-1, 3]), keep)
    lovasz = lovasz_softmax(flat_probabilities, tf.boolean_mask(tf.reshape(ignored, [-1]), keep))
    expected = float(cross_entropy(ignored, logits) + lovasz)
    assert float(loss(ignored, logits)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(tf.fill((1, 2, 2), 255), logits[:1, :2, :2])) == pytest.approx(0.0)  # nothing labelled


def test_make_loss_wraps_the_weighted_cross_entropy():
    loss = train.make_loss(255, class_weights=[1.0, 2.0, 0.5], lovasz=True)
    assert isinstance(loss, CrossEntropyPlusLovasz)
    assert isinstance(loss.cross_entropy, train.ClassWeightedCrossEntropy)
