"""Autograders for the notebooks' exercises: ``check_...(your_function)`` says whether it is right.

Each checker runs the learner's function on cases with known answers, prints a
short verdict with a hint when something is off, and returns ``True`` or ``False``.
A function that still raises ``NotImplementedError`` is reported as not attempted.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _report(name: str, fn: Callable, cases) -> bool:
    """Run ``fn`` on each case ``(description, args, expected, compare[, hint])``; the hint follows a miss."""
    for description, args, expected, compare, *hint in cases:
        try:
            got = fn(*args)
        except NotImplementedError:
            print(f"[not attempted] {name}: replace `raise NotImplementedError` with your code, then run this again.")
            return False
        except Exception as err:  # the learner's bug: show it, don't crash the notebook
            print(f"[not yet] {name} raised {type(err).__name__}: {err} (on {description}).")
            return False
        if not compare(got, expected):
            print(f"[not yet] {name} on {description}: expected {expected!r}, got {got!r}.", *hint)
            return False
    print(f"[correct] {name} passes all {len(cases)} checks.")
    return True


def _close(got, expected) -> bool:
    try:
        return np.allclose(np.asarray(got, np.float64), np.asarray(expected, np.float64), equal_nan=True)
    except (TypeError, ValueError):
        return False


def _equal(got, expected) -> bool:
    return np.array_equal(np.asarray(got), np.asarray(expected))


def check_nearest_resize(fn: Callable) -> bool:
    """``fn(mask, new_height, new_width) -> mask`` must resize with nearest neighbour (numpy only)."""
    mask = np.array([[0, 1], [2, 3]], np.uint8)
    return _report(
        "nearest-neighbour resize",
        fn,
        [
            ("a 2x2 mask to 4x4", (mask, 4, 4), np.kron(mask, np.ones((2, 2), np.uint8)), _equal),
            ("a 2x2 mask to 2x4", (mask, 2, 4), np.repeat(mask, 2, axis=1), _equal),
            ("the same size", (mask, 2, 2), mask, _equal),
        ],
    )


def check_receptive_field(fn: Callable) -> bool:
    """``fn(kernel_size, rate) -> int``: the span covered by one atrous conv, ``(k - 1) * rate + 1``."""
    return _report(
        "atrous span",
        fn,
        [(f"kernel {k}, rate {r}", (k, r), (k - 1) * r + 1, _equal) for k, r in ((3, 1), (3, 6), (3, 18), (5, 2))],
    )


def check_conv_params(fn: Callable) -> bool:
    """``fn(kernel, c_in, c_out, separable) -> int``: weights of a bias-free 3x3 (separable) conv."""
    cases = []
    for k, cin, cout in ((3, 2048, 256), (3, 64, 32), (1, 10, 5)):
        cases.append((f"regular {k}x{k}, {cin}->{cout}", (k, cin, cout, False), k * k * cin * cout, _equal))
        cases.append((f"separable {k}x{k}, {cin}->{cout}", (k, cin, cout, True), k * k * cin + cin * cout, _equal))
    return _report("convolution parameter count", fn, cases)


def check_output_size(fn: Callable) -> bool:
    """``fn(input_size, output_stride) -> int``: feature-map side for a 'same'-padded backbone."""
    cases = [
        (f"input {n}, stride {s}", (n, s), -(-n // s), _equal) for n, s in ((256, 16), (513, 16), (320, 32), (250, 4))
    ]
    return _report("feature-map size", fn, cases)


def check_iou_from_confusion(fn: Callable) -> bool:
    """``fn(confusion) -> array``: IoU per class, NaN for a class absent from truth and prediction."""
    m = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    absent = np.array([[2, 1, 0], [0, 1, 0], [0, 0, 0]])
    return _report(
        "IoU from a confusion matrix",
        fn,
        [
            ("a 3-class matrix", (m,), [1 / 3, 2 / 3, 1 / 2], _close),
            ("a matrix where class 2 never appears", (absent,), [2 / 3, 1 / 2, np.nan], _close),
            ("a perfect prediction", (np.diag([5, 3]),), [1.0, 1.0], _close),
        ],
    )


def check_per_batch_bias(fn: Callable) -> bool:
    """``fn(batches_true, batches_pred, num_classes) -> (per_batch_mean, streaming_miou)``."""
    b1, b2 = np.array([0, 0, 1, 1]), np.array([0, 0, 2, 2])
    return _report(
        "per-batch versus streaming mIoU",
        fn,
        [("two perfect batches, each missing a class", ([b1, b2], [b1, b2], 3), (2 / 3, 1.0), _close)],
    )


def check_overlay(fn: Callable) -> bool:
    """``fn(image, mask, palette, alpha) -> image``: ``(1 - alpha) * image + alpha * palette[mask]``, uint8."""
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[0, 1], [1, 0]], np.uint8)
    palette = np.array([[0, 0, 0], [200, 100, 0]], np.uint8)
    expected = ((0.5 * image + 0.5 * palette[mask]) + 0.0).astype(np.uint8)
    return _report(
        "overlay",
        fn,
        [
            (
                "alpha 0.5",
                (image, mask, palette, 0.5),
                expected,
                lambda g, e: _close(g, e) and np.asarray(g).dtype == np.uint8,
            ),
            ("alpha 0", (image, mask, palette, 0.0), image, _close),
            ("alpha 1", (image, mask, palette, 1.0), palette[mask], _close),
        ],
    )


def check_restore_size(fn: Callable) -> bool:
    """``fn(scores, height, width) -> mask``: resize (1, h, w, C) scores to H x W, then argmax."""
    scores = np.zeros((1, 2, 2, 2), np.float32)
    scores[0, :, 0, 0] = 1.0  # left column is class 0
    scores[0, :, 1, 1] = 1.0  # right column is class 1
    expected = np.zeros((4, 6), np.uint8)
    expected[:, 3:] = 1
    return _report(
        "restore a prediction to the original size",
        fn,
        [("2x2 scores to 4x6", (scores, 4, 6), expected, lambda g, e: _equal(np.asarray(g).squeeze(), e))],
    )


def check_per_replica_batch(fn: Callable) -> bool:
    """``fn(global_batch, replicas) -> int``: images each replica sees per step."""
    cases = [(f"global {g} on {r} replicas", (g, r), g // r, _equal) for g, r in ((16, 4), (8, 2), (32, 8), (8, 1))]
    return _report("per-replica batch", fn, cases)


def check_scaled_learning_rate(fn: Callable) -> bool:
    """``fn(base_lr, base_batch, new_batch) -> float``: the linear scaling rule."""
    cases = [
        (f"{lr} at batch {b}, now batch {n}", (lr, b, n), lr * n / b, _close)
        for lr, b, n in ((1e-3, 8, 32), (4e-3, 8, 8), (1e-2, 256, 64))
    ]
    return _report("scaled learning rate", fn, cases)


def check_median_frequency_weights(fn: Callable) -> bool:
    """``fn(counts) -> weights``: median frequency over each class's frequency (every count above 0)."""
    return _report(
        "median-frequency weights",
        fn,
        [
            ("counts 10, 30, 60", (np.array([10, 30, 60]),), [3.0, 1.0, 0.5], _close),
            (
                "counts 5, 5, 10, 80 (even count: the median is a mean)",
                (np.array([5, 5, 10, 80]),),
                [1.5, 1.5, 0.75, 0.09375],
                _close,
            ),
            ("two equal classes", (np.array([7, 7]),), [1.0, 1.0], _close),
        ],
    )


def check_poly_schedule(fn: Callable) -> bool:
    """``fn(progress, base_lr) -> float``: ``base_lr * (1 - progress) ** 0.9``, no warm-up."""
    return _report(
        "poly schedule",
        fn,
        [
            ("the start", (0.0, 1e-3), 1e-3, _close),
            ("half way, base 2", (0.5, 2.0), 2.0 * 0.5**0.9, _close),
            ("90% of the way", (0.9, 1e-3), 1e-3 * 0.1**0.9, _close),
            ("the end", (1.0, 1e-3), 0.0, _close),
        ],
    )


def check_rarest_class(fn: Callable) -> bool:
    """``fn(counts, class_names) -> (name, share)``: the class with the fewest pixels and its share of all of them."""
    names = ["road", "car", "pole"]
    hint = "Hint: the share is a fraction of all labelled pixels (0 to 1), not a percentage."
    return _report(
        "rarest class",
        fn,
        [
            ("counts 50, 30, 20", (np.array([50, 30, 20]), names), ("pole", 0.2), _same_answer, hint),
            ("counts 10, 900, 90", (np.array([10, 900, 90]), names), ("road", 0.01), _same_answer, hint),
        ],
    )


def _same_answer(got, expected) -> bool:
    """A ``(name, number)`` answer: the name exactly, the number to rounding."""
    try:
        name, value = got
    except (TypeError, ValueError):
        return False
    return name == expected[0] and _close(value, expected[1])


def check_zoom_out_padding(fn: Callable) -> bool:
    """``fn(ignore_index) -> (pad_label, min_scale)`` when random scaling may zoom out to ``TRAIN_SCALES[0]``."""
    from helpers.data import TRAIN_SCALES  # TensorFlow: imported only when this check runs

    zero = "Hint: a padded 0 trains the model to call black borders class 0, which no real image contains."
    none = "Hint: with no ignore index no label means 'unlabelled': do not zoom out (scale at least 1), only crop."
    return _report(
        "zoom-out padding",
        fn,
        [
            ("CamVid's void label 11", (11,), (11, TRAIN_SCALES[0]), _same_answer, zero),
            ("the usual 255", (255,), (255, TRAIN_SCALES[0]), _same_answer, zero),
            ("a dataset with no ignore index", (None,), (None, 1.0), _same_answer, none),
        ],
    )


def check_useful_rates(fn: Callable) -> bool:
    """``fn(map_size, rates) -> list``: the rates whose 3x3 atrous conv reaches a real neighbour somewhere."""
    hint = (
        "Hint: a tap `rate` pixels from the centre lands on a map of side n from some position "
        "exactly when rate < n (the table's rows above 1/9)."
    )
    return _report(
        "rates that still see neighbours",
        fn,
        [
            (f"a {n}x{n} map, rates {rates}", (n, rates), [r for r in rates if r < n], _equal, hint)
            for n, rates in ((8, (6, 12, 18)), (16, (6, 12, 18)), (33, (6, 12, 18)), (4, (1, 2, 4)))
        ],
    )


def check_branch_params(fn: Callable) -> bool:
    """``fn(kernel, c_in, c_out) -> int``: a bias-free conv plus its batch norm (4 numbers per channel)."""
    hint = "Hint: batch norm keeps four numbers per output channel: scale, offset, moving mean, moving variance."
    cases = [
        (f"{k}x{k}, {i}->{o}", (k, i, o), k * k * i * o + 4 * o, _equal, hint)
        for k, i, o in ((3, 2048, 256), (1, 2048, 256), (3, 320, 64))
    ]
    return _report("conv + batch norm parameters", fn, cases)


def check_positions_ratio(fn: Callable) -> bool:
    """``fn(old_stride, new_stride) -> float``: how many times as many positions a feature map has."""
    hint = "Hint: halving the stride doubles both sides of the map, so the positions grow by the square."
    cases = [
        (f"stride {a} to {b}", (a, b), (a / b) ** 2, _close, hint) for a, b in ((16, 8), (32, 16), (16, 16), (8, 16))
    ]
    return _report("feature-map positions", fn, cases)


def check_class_changes(fn: Callable) -> bool:
    """``fn(iou_a, iou_b, names, margin) -> (gained, lost)``: classes where run a beats b (or loses) by > margin."""
    names = ["sky", "road", "pole", "sign"]
    a, b = np.array([0.90, 0.80, 0.10, np.nan]), np.array([0.91, 0.85, 0.02, 0.30])
    hint = "Hint: compare a - b with the margin, and skip a class whose IoU is NaN in either run."
    return _report(
        "class changes between two runs",
        fn,
        [
            ("margin 0.02", (a, b, names, 0.02), (["pole"], ["road"]), _same_lists, hint),
            ("margin 0.1", (a, b, names, 0.1), ([], []), _same_lists, hint),
        ],
    )


def _same_lists(got, expected) -> bool:
    try:
        return all(sorted(g) == sorted(e) for g, e in zip(got, expected, strict=True))
    except TypeError:
        return False


def check_confusions(fn: Callable) -> bool:
    """``fn(confusion, c) -> (taken_by, takes_from)``: the other class predicted most for c's pixels, and
    the other class whose pixels are most often predicted as c (rows are truth, columns predictions)."""
    m = np.array([[50, 5, 8], [1, 30, 9], [6, 4, 20]])
    hint = "Hint: row c holds class c's pixels (what they were called); column c holds what was called c."
    return _report(
        "confusions of one class",
        fn,
        [
            ("class 2", (m, 2), (0, 1), _equal, hint),
            ("class 0", (m, 0), (2, 2), _equal, hint),
            ("class 1", (m, 1), (2, 0), _equal, hint),
        ],
    )


def check_image_miou(fn: Callable) -> bool:
    """``fn(truth, predicted, num_classes, ignore_index) -> float``: one image's mIoU over the classes it
    shows (in truth or prediction), ignored pixels left out."""
    truth = np.array([[0, 0, 1], [1, 9, 9]])
    predicted = np.array([[0, 1, 1], [1, 2, 0]])
    hint = "Hint: leave out the pixels labelled ignore_index first, then average only over classes that occur."
    expected = np.mean([1 / 2, 2 / 3])  # the ignored pixels held the only 2 and a 0: class 2 is gone
    return _report(
        "mIoU of one image",
        fn,
        [
            ("ignore index 9", (truth, predicted, 3, 9), expected, _close, hint),
            ("a perfect prediction", (truth[:1], truth[:1], 3, 9), 1.0, _close, hint),
        ],
    )


def check_quantise(fn: Callable) -> bool:
    """``fn(weights) -> (int8 values, scale)``: symmetric 8-bit quantisation, ``weights ~ values * scale``."""
    rng = np.random.default_rng(0)
    hint = (
        "Hint: scale = max|w| / 127, values = round(w / scale) as int8; values * scale must be within scale / 2 of w."
    )
    cases = [
        (name, (w,), QuantisedVersionOf(w), _quantised_well, hint)
        for name, w in (
            ("a small vector", np.array([-1.0, 0.5, 0.25, 0.0], np.float32)),
            ("random weights", rng.normal(0, 0.05, (3, 3, 8)).astype(np.float32)),
        )
    ]
    return _report("8-bit quantisation", fn, cases)


class QuantisedVersionOf:
    """What :func:`check_quantise` expects for ``weights``; its repr says so in words."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights
        self.scale = float(np.abs(weights).max()) / 127

    def __repr__(self) -> str:
        return f"int8 values of the weights' shape and scale {self.scale:.6g}"


def _quantised_well(got, expected: QuantisedVersionOf) -> bool:
    try:
        values, scale = got
        values = np.asarray(values)
    except (TypeError, ValueError):
        return False
    if values.dtype != np.int8 or values.shape != expected.weights.shape or not _close(scale, expected.scale):
        return False
    return bool(np.all(np.abs(values * float(scale) - expected.weights) <= expected.scale / 2 + 1e-7))
