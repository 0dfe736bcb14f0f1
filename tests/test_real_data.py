"""Correctness on real datasets: mask formats, one preprocessing path, model/dataset mismatch,
a step-based schedule under a time cap, and class weights that touch the loss only."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import artifacts, callbacks, data, imageio, predict, train
from helpers.check import check_dataset


def dataset_with_masks(root, masks: dict, classes=("a", "b", "c"), ignore_index=255):
    """A one-image-per-split dataset whose masks are saved as given (PIL images)."""
    (root / "classes.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps({"classes": list(classes), "ignore_index": ignore_index}))
    for split, mask in masks.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        Image.new("RGB", mask.size, (90, 90, 90)).save(root / split / "images" / "x.png")
        mask.save(root / split / "masks" / "x.png")
    return root


def palette_mask(indices):
    mask = Image.fromarray(indices.astype(np.uint8), mode="P")
    mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0, 0, 0] * 252)  # VOC-like colours
    return mask


def test_palette_masks_give_their_indices_in_check_data_and_in_training(tmp_path):
    indices = np.zeros((8, 12), np.uint8)
    indices[2:5, 3:9] = 2
    indices[6, :] = 1
    mask = palette_mask(indices)
    root = dataset_with_masks(tmp_path, {"train": mask, "val": mask})
    assert Image.open(root / "train" / "masks" / "x.png").mode == "P"
    report = check_dataset(root)
    assert report.ok, report.format()
    np.testing.assert_array_equal(report.splits["train"].label_counts[:3], np.bincount(indices.ravel()))
    _, masks = next(iter(data.make_dataset(root, "val", 8, 1, training=False)))
    np.testing.assert_array_equal(masks[0].numpy(), indices)  # 8 is already the shorter side
    # TensorFlow's own PNG decoder would have given colours, not indices
    assert tf.io.decode_png(tf.io.read_file(str(root / "val" / "masks" / "x.png"))).shape[-1] == 3


def test_one_bit_masks_give_zero_and_one(tmp_path):
    indices = np.zeros((8, 8), np.uint8)
    indices[:, 4:] = 1
    mask = Image.fromarray(indices.astype(bool)).convert("1")
    root = dataset_with_masks(tmp_path, {"train": mask, "val": mask})
    assert Image.open(root / "val" / "masks" / "x.png").mode == "1"
    np.testing.assert_array_equal(data.read_mask(root / "val" / "masks" / "x.png"), indices)
    report = check_dataset(root)
    assert report.ok and report.splits["val"].label_counts[1] == 32
    _, masks = next(iter(data.make_dataset(root, "val", 8, 1, training=False)))
    np.testing.assert_array_equal(masks[0].numpy(), indices)  # not 255, which would be ignored silently


def test_a_dataset_without_a_test_split_passes_the_check_and_evaluates_on_val(tmp_path, synthetic_dir):
    import shutil

    from helpers import evaluate

    root = tmp_path / "d"
    shutil.copytree(synthetic_dir, root)
    shutil.rmtree(root / "test")
    assert check_dataset(root).ok
    assert evaluate.default_split(root) == "val" and evaluate.default_split(synthetic_dir) == "test"
    shutil.rmtree(root / "val")
    assert not check_dataset(root).ok  # val is required: training validates on it


def test_training_evaluation_and_prediction_see_the_same_pixels(synthetic_dir):
    """One preprocessing function: the evaluation pipeline's image equals what predict_mask feeds the network."""
    image_path = data.list_pairs(synthetic_dir, "test")[0][0]
    images, _ = next(iter(data.make_dataset(synthetic_dir, "test", 64, 1, training=False)))
    image = imageio.read_image(image_path)
    size = predict.network_size(*image.shape[:2], 64)
    np.testing.assert_allclose(images[0].numpy(), data.scale_image(image[None], size)[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(images[0].numpy(), data.prepare_image(image, 64).numpy(), atol=1e-4)
    # and the scaling is antialiased: a one-pixel checkerboard shrunk 4x becomes flat grey, not a new pattern
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, axis=-1)
    small = data.prepare_image(checker, 16).numpy()
    assert small.std() < 1.0 and abs(small.mean() - 127.5) < 1.0


def test_a_model_trained_on_other_classes_is_refused(tmp_path):
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(5, 1)])
    path = artifacts.save_model(model, tmp_path / "model.keras", classes=("a", "b", "c", "d", "e"))
    eleven = data.DatasetInfo(tuple(f"c{i}" for i in range(11)), 11)
    with pytest.raises(artifacts.ModelMismatchError, match="trained on the classes .* this dataset has 11"):
        artifacts.load_model(path, eleven)
    renamed = data.DatasetInfo(("a", "b", "c", "d", "x"), 255)  # same count, other classes
    with pytest.raises(artifacts.ModelMismatchError, match="python -m helpers train"):
        artifacts.load_model(path, renamed)
    assert artifacts.load_model(path, data.DatasetInfo(("a", "b", "c", "d", "e"), 255)).output_shape[-1] == 5
    artifacts.model_card_path(path).unlink()  # a model without a card: its class count is still checked
    with pytest.raises(artifacts.ModelMismatchError, match="trained on 5 classes"):
        artifacts.load_model(path, eleven)


class Clock:
    limit_s = 100.0

    def __init__(self):
        self.now = 0.0

    def elapsed(self):
        return self.now


def test_with_a_time_cap_the_schedule_plans_steps_from_the_measured_step_time():
    clock = Clock()
    schedule = callbacks.PolyLearningRate(1.0, total_steps=10**6, clock=clock)
    clock.now = 30.0  # data check, model build and tracing took 30 s of the 100
    assert schedule.planned_steps(0) == 10**6  # nothing measured yet: warm-up starts from the bottom
    assert schedule.planned_steps(1) == 10**6
    clock.now += 7.0  # 7 steps of 1 s each
    # 63 s left at 1 s a step: 63 more steps after step 8
    assert schedule.planned_steps(8) == 8 + 1 + 63
    fast = callbacks.PolyLearningRate(1.0, total_steps=50, clock=clock)
    fast.planned_steps(0), fast.planned_steps(1)
    clock.now += 1.0
    assert fast.planned_steps(11) == 50  # never more than the epochs allow


def test_warm_up_happens_in_steps_even_when_setup_used_most_of_the_budget(tmp_path):
    clock = Clock()
    clock.now = 90.0  # a slow machine: 90 of 100 s gone before the first step
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1.0), "mse")
    schedule = callbacks.PolyLearningRate(1.0, total_steps=10**6, clock=clock)
    schedule.set_model(model)
    rates = []
    for step in range(4):
        model.optimizer.iterations.assign(step)
        schedule.on_train_batch_begin(step)
        rates.append(float(model.optimizer.learning_rate.numpy()))
        clock.now += 0.05
    assert rates[0] == pytest.approx(0.1)  # warm-up starts at a tenth of the peak, not at the end of the decay
    assert rates[0] <= rates[1] <= rates[2]


def test_class_weights_change_the_loss_but_not_the_reported_miou():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 6, 6, 3)).astype(np.float32)
    y = rng.integers(0, 3, (4, 6, 6)).astype(np.int32)
    y[0, 0, :] = 255
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(3, 1)])
    info = data.DatasetInfo(("a", "b", "c"), 255)
    plain = train.compile_model(model, info).evaluate(x, y, verbose=0, return_dict=True)
    weights = np.array([1.0, 5.0, 0.2], np.float32)
    weighted = train.compile_model(model, info, class_weights=weights).evaluate(x, y, verbose=0, return_dict=True)
    assert weighted["miou"] == pytest.approx(plain["miou"], abs=1e-7)
    assert weighted["loss"] != pytest.approx(plain["loss"], rel=1e-3)
    # the weighted loss by hand: sum of w * cross-entropy over labelled pixels, over the sum of w
    logits = model.predict(x, verbose=0)
    log_p = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    valid = y != 255
    labels = np.where(valid, y, 0)
    ce = -np.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    w = np.where(valid, weights[labels], 0.0)
    assert weighted["loss"] == pytest.approx(float((w * ce).sum() / w.sum()), rel=1e-4)
