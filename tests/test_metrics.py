import keras
import numpy as np
import pytest

from helpers.metrics import ConfusionMatrix, confusion_matrix, per_batch_mean_iou, scores_from_confusion


def test_confusion_matrix_by_hand():
    y_true = np.array([[0, 0, 1], [1, 2, 2]])
    y_pred = np.array([[0, 1, 1], [1, 2, 0]])
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 3), expected)
    s = scores_from_confusion(expected)
    # class 0: TP 1, FP 1 (row 2), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2
    np.testing.assert_allclose(s.per_class_iou, [1 / 3, 2 / 3, 1 / 2])
    assert s.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s.pixel_accuracy == pytest.approx(4 / 6)


def test_ignore_index_pixels_are_not_counted():
    y_true = np.array([0, 1, 255, 255])
    y_pred = np.array([0, 1, 1, 0])
    m = confusion_matrix(y_true, y_pred, 2, ignore_index=255)
    np.testing.assert_array_equal(m, [[1, 0], [0, 1]])
    assert scores_from_confusion(m).miou == 1.0


def test_absent_class_is_excluded_not_zero():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 0, 1, 0])
    s = scores_from_confusion(confusion_matrix(y_true, y_pred, 3))
    assert np.isnan(s.per_class_iou[2])
    assert s.absent_classes == [2]
    # class 0: TP 2, FP 1 -> 2/3; class 1: TP 1, FN 1 -> 1/2; class 2 absent
    assert s.miou == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s.as_dict(["a", "b", "c"])["per_class_iou"]["c"] is None


def test_perfect_prediction_scores_one():
    y = np.random.default_rng(0).integers(0, 4, (2, 8, 8))
    s = scores_from_confusion(confusion_matrix(y, y, 4))
    assert s.miou == 1.0 and s.pixel_accuracy == 1.0


def test_labels_outside_the_classes_are_an_error():
    with pytest.raises(ValueError, match="label 7"):
        confusion_matrix(np.array([0, 7]), np.array([0, 1]), 3, ignore_index=255)
    with pytest.raises(ValueError, match="prediction contains label 3"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)


def test_streaming_equals_one_matrix_over_everything():
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 5, (6, 10, 10)), rng.integers(0, 5, (6, 10, 10))
    stream = ConfusionMatrix(5)
    for i in range(0, 6, 2):
        stream.update(y_true[i : i + 2], y_pred[i : i + 2])
    np.testing.assert_array_equal(stream.matrix, confusion_matrix(y_true, y_pred, 5))


def test_per_batch_mean_is_biased_on_a_case_built_to_show_it():
    # Batch 1 has only classes 0 and 1, batch 2 only 0 and 2; predictions are perfect.
    b1 = np.array([[0, 0, 1, 1]])
    b2 = np.array([[0, 0, 2, 2]])
    per_batch = np.mean([per_batch_mean_iou(b, b, 3) for b in (b1, b2)])
    stream = ConfusionMatrix(3)
    stream.update(b1, b1)
    stream.update(b2, b2)
    assert stream.scores().miou == 1.0  # the model is perfect
    assert per_batch == pytest.approx(2 / 3)  # each batch scores its absent class as 0


def test_agrees_with_keras_mean_iou():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 4, (4, 16, 16))
    y_true[:, :3] = 255  # some ignored pixels
    y_pred = np.where(
        rng.random((4, 16, 16)) < 0.7, np.where(y_true == 255, 0, y_true), rng.integers(0, 4, (4, 16, 16))
    )
    ours = scores_from_confusion(confusion_matrix(y_true, y_pred, 4, ignore_index=255)).miou
    metric = keras.metrics.MeanIoU(num_classes=4, ignore_class=255, sparse_y_pred=True)
    metric.update_state(y_true, y_pred)
    assert float(metric.result()) == pytest.approx(ours, abs=1e-6)


def test_agrees_with_keras_when_a_class_is_absent():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1])
    ours = scores_from_confusion(confusion_matrix(y_true, y_pred, 3)).miou
    metric = keras.metrics.MeanIoU(num_classes=3, sparse_y_pred=True)
    metric.update_state(y_true, y_pred)
    assert float(metric.result()) == pytest.approx(ours, abs=1e-6)
