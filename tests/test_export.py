"""Export: SavedModel and TensorFlow Lite predict the masks the Keras model predicts."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import export
from helpers.model import build_deeplabv3_plus


def trained_model(precision):
    # seeded: a model trained this briefly has many near-ties between classes, and how many of them
    # 8-bit weights flip depends on the initialisation (98-100% agreement seen across seeds)
    keras.utils.set_random_seed(0)
    model = build_deeplabv3_plus(4, backbone="mobilenetv2", weights=None, separable=True, precision=precision)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 64, 64, 3)).astype(np.float32)
    y = (x[..., 0] > 128).astype(np.int32) + 2 * (x[..., 1] > 128)  # something learnable, so masks are not flat
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return model


IMAGES = [np.random.default_rng(1).integers(0, 255, s, dtype=np.uint8) for s in [(64, 64, 3), (48, 80, 3), (37, 53, 3)]]


@pytest.fixture(scope="module")
def model_and_images():
    return trained_model("float32"), IMAGES


def keras_mask(model, image):
    return np.argmax(model.predict_on_batch(image[None].astype(np.float32))[0], axis=-1)


def test_saved_model_takes_uint8_of_any_size_and_matches_keras(model_and_images, tmp_path):
    model, images = model_and_images
    path = export.export_saved_model(model, tmp_path / "saved")
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    for image in images:
        out = serve(tf.constant(image[None]))
        assert out["mask"].dtype == tf.uint8 and out["mask"].shape == (1, *image.shape[:2])
        np.testing.assert_array_equal(out["mask"].numpy()[0], keras_mask(model, image))
    assert not list(tmp_path.glob(".*")), "no partial export left behind"
    print(f"SavedModel: {sum(f.stat().st_size for f in path.rglob('*') if f.is_file()) / 1e6:.1f} MB")


def test_mixed_precision_model_is_exported_in_float32(tmp_path):
    model = trained_model("mixed_bfloat16")
    path = export.export_saved_model(model, tmp_path / "saved")
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    for image in IMAGES:  # float32 export of a model trained and run in bfloat16: bfloat16's rounding, no more
        scores = np.asarray(model.predict_on_batch(image[None].astype(np.float32))[0], np.float32)
        keras_outputs = {"scores": scores, "mask": np.argmax(scores, axis=-1)}
        exported = {key: value.numpy()[0] for key, value in serve(tf.constant(image[None])).items()}
        assert_close_to(exported, keras_outputs, tolerance=0.1)


def assert_close_to(outputs, reference, tolerance):
    """Scores within ``tolerance`` of the score range, and labels that differ only where the reference is a near-tie.

    Machine-independent: how many near-ties a rounding difference flips depends on the CPU's kernels
    (one Intel CPU flipped 2.4% of pixels under 8-bit weights, AMD CPUs under 1%), but the size of the
    error does not. A broken export (wrong input scaling, channel order, resize) moves scores by far more.
    """
    scores, spread = reference["scores"], float(np.ptp(reference["scores"]))
    error = float(np.max(np.abs(outputs["scores"] - scores)))
    assert error <= tolerance * spread, f"scores off by {error:.4g}, over {tolerance:.0%} of their range {spread:.4g}"
    top_two = np.sort(scores, axis=-1)[..., -2:]
    margin = top_two[..., 1] - top_two[..., 0]
    flipped = outputs["mask"] != reference["mask"]
    assert np.all(margin[flipped] <= 2 * error), "a label changed where the scores cannot explain it"
    np.testing.assert_array_equal(outputs["mask"], np.argmax(outputs["scores"], axis=-1))


def test_tflite_float_and_quantised_agree_with_the_saved_model(model_and_images, tmp_path, capfd):
    model, images = model_and_images
    saved = export.export_saved_model(model, tmp_path / "saved")
    serve = tf.saved_model.load(str(saved)).signatures["serving_default"]
    plain = export.export_tflite(saved, tmp_path / "model.tflite")
    small = export.export_tflite(saved, tmp_path / "model-int8.tflite", quantize=True)
    assert small.stat().st_size < 0.5 * plain.stat().st_size
    print(f"TFLite: {plain.stat().st_size / 1e6:.1f} MB float32, {small.stat().st_size / 1e6:.1f} MB quantised")
    for image in images:
        reference = {key: value.numpy()[0] for key, value in serve(tf.constant(image[None])).items()}
        assert_close_to(export.tflite_outputs(plain, image), reference, tolerance=1e-3)
        assert_close_to(export.tflite_outputs(small, image), reference, tolerance=0.05)  # measured: 0.6%
    assert "XNNPACK" not in capfd.readouterr().err  # TensorFlow Lite's start-up notice is hidden


def test_the_closeness_check_fails_on_a_broken_export():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(8, 8, 4)).astype(np.float32)
    reference = {"scores": scores, "mask": np.argmax(scores, axis=-1)}
    swapped = scores[..., ::-1]  # e.g. a class order mixed up on the way
    with pytest.raises(AssertionError):
        assert_close_to({"scores": swapped, "mask": np.argmax(swapped, axis=-1)}, reference, tolerance=0.05)
    shifted = np.roll(scores, 1, axis=1)  # a misaligned resize
    with pytest.raises(AssertionError):
        assert_close_to({"scores": shifted, "mask": np.argmax(shifted, axis=-1)}, reference, tolerance=0.05)
