"""Export: SavedModel and TensorFlow Lite predict the masks the Keras model predicts."""

from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from helpers import export, train

IMAGES = [np.random.default_rng(1).integers(0, 255, s, dtype=np.uint8) for s in [(64, 64, 3), (48, 80, 3), (37, 53, 3)]]


def keras_mask(model, image):
    return np.argmax(model.predict_on_batch(image[None].astype(np.float32))[0], axis=-1)


def test_saved_model_takes_uint8_of_any_size_and_matches_keras(course_model, tmp_path):
    model, images = course_model, IMAGES  # the course's model, trained briefly on the built-in data
    path = export.export_saved_model(model, tmp_path / "saved")
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    for image in images:
        out = serve(tf.constant(image[None]))
        assert out["mask"].dtype == tf.uint8 and out["mask"].shape == (1, *image.shape[:2])
        np.testing.assert_array_equal(out["mask"].numpy()[0], keras_mask(model, image))
    assert not list(tmp_path.glob(".*")), "no partial export left behind"
    print(f"SavedModel: {sum(f.stat().st_size for f in path.rglob('*') if f.is_file()) / 1e6:.1f} MB")


def test_mixed_precision_model_is_exported_in_float32(course_run, course_model, tmp_path):
    model = train.build_model(replace(course_run, precision="mixed_bfloat16"), 5)
    model.set_weights(course_model.get_weights())  # the trained weights (kept in float32), computed in bfloat16
    assert model.get_layer("aspp_project").compute_dtype == "bfloat16"
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


def test_tflite_float_and_quantised_agree_with_the_saved_model(course_model, tmp_path, capfd):
    model, images = course_model, IMAGES
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
