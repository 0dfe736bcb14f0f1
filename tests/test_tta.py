"""Test-time augmentation: views are mapped back before they are averaged."""

import keras
import numpy as np
import pytest

from helpers import evaluate
from helpers.predict import TTA_MODES


def tta_probabilities(model, images, mode):
    return evaluate.tta_probabilities(model, images, mode).numpy()


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def position_model():
    """Scores that depend on the column only, not on the pixels: [column, width - column]."""
    inputs = keras.Input((None, None, 3))

    def scores(x):
        width = keras.ops.shape(x)[2]
        column = keras.ops.cast(keras.ops.arange(width), "float32")[None, None, :, None] * keras.ops.ones_like(
            x[..., :1]
        )
        return keras.ops.concatenate([column, keras.ops.cast(width, "float32") - column], axis=-1) / 4.0

    return keras.Model(inputs, keras.layers.Lambda(scores)(inputs))


def test_flip_averages_each_pixel_with_its_mirror_image_by_hand():
    images = np.zeros((1, 2, 6, 3), np.float32)
    plain = tta_probabilities(position_model(), images, "none")
    flipped = tta_probabilities(position_model(), images, "flip")
    column = np.arange(6, dtype=np.float32)
    by_hand = softmax(np.stack([column, 6 - column], axis=-1) / 4.0)
    np.testing.assert_allclose(plain[0, 0], by_hand, atol=1e-6)
    # the flipped view's column c is the original's 5 - c; mapped back, each pixel averages c and 5 - c
    np.testing.assert_allclose(flipped[0, 0], (by_hand + by_hand[::-1]) / 2, atol=1e-6)


def test_a_flip_equivariant_model_gains_nothing_from_flipping():
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 1, kernel_initializer="he_normal")])
    images = np.random.default_rng(0).uniform(0, 1, (2, 8, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(
        tta_probabilities(model, images, "flip"), tta_probabilities(model, images, "none"), atol=1e-6
    )


def test_multiscale_answers_at_the_input_size_and_bad_modes_are_named():
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(3, 1)])
    probabilities = tta_probabilities(model, np.zeros((1, 20, 28, 3), np.float32), "multiscale")
    assert probabilities.shape == (1, 20, 28, 3)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="tta='rotate'"):
        tta_probabilities(model, np.zeros((1, 8, 8, 3), np.float32), "rotate")


def test_the_commands_flip_by_default_and_one_pass_is_one_flag_away():
    from helpers.cli import build_parser

    for command in (["evaluate"], ["predict", "in", "out"]):
        assert build_parser().parse_args(command).tta == "flip"
        assert build_parser().parse_args([*command, "--tta", "none"]).tta == "none"
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, "--tta", "rotate"])


def test_the_tta_choices_and_their_help_come_from_the_functions_table(capsys, monkeypatch):
    from helpers.cli import _views, build_parser

    assert (_views("none"), _views("flip")) == ("1 pass", "2 passes (mirrored too)")
    monkeypatch.setitem(TTA_MODES, "wide", (True, (0.5, 1.0, 2.0)))
    assert _views("wide") == "6 passes (mirrored too) at scales 0.5, 1, 2"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "--tta {" + ",".join(TTA_MODES) + "}" in shown  # every mode the functions know, and nothing else
    for mode in TTA_MODES:
        assert f"{mode}: {_views(mode)}" in shown


def test_tta_passes_counts_the_forward_passes_tta_probabilities_runs(monkeypatch):
    from helpers import predict
    from helpers.config import tta_passes

    assert [tta_passes(mode) for mode in ("none", "flip", "multiscale")] == [1, 2, 6]
    calls = []
    real = predict.predict_scores
    monkeypatch.setattr(predict, "predict_scores", lambda model, view: calls.append(view.shape) or real(model, view))
    for mode in TTA_MODES:
        calls.clear()
        predict.tta_probabilities(position_model(), np.zeros((1, 32, 48, 3), np.float32), mode)
        assert len(calls) == tta_passes(mode), mode


def test_predict_folder_writes_the_flipped_average(tmp_path):
    from PIL import Image

    from helpers.predict import predict_folder

    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    masks = {}
    for mode in ("none", "flip"):
        written = predict_folder(position_model(), tmp_path / "in", tmp_path / mode, None, tta=mode).written
        masks[mode] = np.asarray(Image.open(written[0]))[0]
    # one pass: class 1 scores 32 - c against class 0's c, so it wins left of the middle (a tie goes to 0)
    assert list(masks["none"]) == [1] * 16 + [0] * 16
    # averaged with the mirror, p(class 0) = (sigmoid((2c - 32) / 4) + sigmoid((30 - 2c) / 4)) / 2 < 1/2 everywhere
    assert list(masks["flip"]) == [1] * 32
