"""Every autograder accepts a right answer, rejects a wrong one, and survives an unattempted one."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import data, exercises
from helpers.metrics import ConfusionMatrix, per_batch_mean_iou


def not_attempted(*args):
    raise NotImplementedError


def nearest(mask, h, w):
    rows = (np.arange(h) * mask.shape[0] // h)[:, None]
    cols = (np.arange(w) * mask.shape[1] // w)[None, :]
    return mask[rows, cols]


def iou(confusion):
    confusion = np.asarray(confusion, float)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def per_batch_vs_streaming(trues, preds, n):
    stream = ConfusionMatrix(n)
    for t, p in zip(trues, preds):
        stream.update(t, p)
    return np.mean([per_batch_mean_iou(t, p, n) for t, p in zip(trues, preds)]), stream.scores().miou


def overlay(image, mask, palette, alpha):
    return ((1 - alpha) * image + alpha * palette[mask]).astype(np.uint8)


def rarest(counts, names):
    return names[int(np.argmin(counts))], counts.min() / counts.sum()


def useful_rates(size, rates):
    return [r for r in rates if r < size]


def class_changes(a, b, names, margin):
    diff = np.asarray(a) - np.asarray(b)
    return [n for n, d in zip(names, diff) if d > margin], [n for n, d in zip(names, diff) if d < -margin]


def confusions(m, c):
    others = np.asarray(m, float).copy()
    np.fill_diagonal(others, -1)
    return int(np.argmax(others[c])), int(np.argmax(others[:, c]))


def image_miou(truth, predicted, n, ignore):
    keep = truth != ignore
    return np.nanmean(iou(_confusion(truth[keep], predicted[keep], n)))


def image_miou_counting_ignored(truth, predicted, n, ignore):
    return np.nanmean(iou(_confusion(truth.ravel() % n, predicted.ravel(), n)))


def zoom_plan(ignore_index):
    return (None, 1.0) if ignore_index is None else (ignore_index, data.TRAIN_SCALES[0])


def branch_params(k, c_in, c_out):
    return k * k * c_in * c_out + 4 * c_out


def _confusion(t, p, n):
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def quantise(w):
    scale = np.abs(w).max() / 127
    return np.round(w / scale).astype(np.int8), scale


def restore(scores, h, w):
    return np.argmax(tf.image.resize(scores, (h, w))[0], axis=-1)


CASES = [
    (exercises.check_nearest_resize, nearest, lambda m, h, w: np.zeros((h, w))),
    (exercises.check_receptive_field, lambda k, r: (k - 1) * r + 1, lambda k, r: k * r),
    (
        exercises.check_conv_params,
        lambda k, i, o, s: k * k * i + i * o if s else k * k * i * o,
        lambda k, i, o, s: k * k * i * o,
    ),
    (exercises.check_output_size, lambda n, s: -(-n // s), lambda n, s: n // s),
    (exercises.check_iou_from_confusion, iou, lambda m: np.nan_to_num(iou(m))),
    (exercises.check_per_batch_bias, per_batch_vs_streaming, lambda t, p, n: (1.0, 1.0)),
    (exercises.check_overlay, overlay, lambda i, m, p, a: p[m]),
    (exercises.check_restore_size, restore, lambda s, h, w: np.zeros((h, w))),
    (exercises.check_per_replica_batch, lambda g, r: g // r, lambda g, r: g),
    (exercises.check_scaled_learning_rate, lambda lr, b, n: lr * n / b, lambda lr, b, n: lr * b / n),
    (
        exercises.check_median_frequency_weights,
        lambda c: np.median(c / c.sum()) / (c / c.sum()),
        lambda c: c.mean() / c,  # the mean, not the median
    ),
    (exercises.check_poly_schedule, lambda p, lr: lr * (1 - p) ** 0.9, lambda p, lr: lr * (1 - p)),
]  # fmt: skip

# checkers with a hint for a typical mistake: (checker, right, typical wrong answer, words the hint must say)
HINTED = [
    (exercises.check_rarest_class, rarest, lambda c, n: (rarest(c, n)[0], 100 * rarest(c, n)[1]), "fraction"),
    (exercises.check_zoom_out_padding, zoom_plan, lambda i: (0, 0.5), "black borders"),
    (exercises.check_useful_rates, useful_rates, lambda n, rates: [r for r in rates if r <= n // 2], "rate < n"),
    (exercises.check_branch_params, branch_params, lambda k, i, o: branch_params(k, i, o) - 2 * o, "four numbers"),
    (exercises.check_positions_ratio, lambda a, b: (a / b) ** 2, lambda a, b: a / b, "square"),
    (exercises.check_class_changes, class_changes, lambda a, b, n, m: class_changes(b, a, n, m), "a - b"),
    (exercises.check_confusions, confusions, lambda m, c: confusions(np.asarray(m).T, c), "row c"),
    (exercises.check_image_miou, image_miou, image_miou_counting_ignored, "ignore_index"),
    (exercises.check_quantise, quantise, lambda w: (np.round(w * 127).astype(np.int8), 1 / 127), "max|w| / 127"),
]  # fmt: skip


@pytest.mark.parametrize("checker, right, wrong", CASES, ids=[c[0].__name__ for c in CASES])
def test_checker(checker, right, wrong, capsys):
    assert checker(right) is True
    assert "[correct]" in capsys.readouterr().out
    assert checker(wrong) is False
    assert "[not yet]" in capsys.readouterr().out
    assert checker(not_attempted) is False
    assert "[not attempted]" in capsys.readouterr().out


@pytest.mark.parametrize("checker, right, wrong, hint", HINTED, ids=[c[0].__name__ for c in HINTED])
def test_checker_explains_a_typical_mistake(checker, right, wrong, hint, capsys):
    test_checker(checker, right, wrong, capsys)
    checker(wrong)
    assert hint in capsys.readouterr().out
