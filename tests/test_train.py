import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from helpers import artifacts, data, evaluate, predict, train
from helpers.config import load_settings


def test_poly_schedule_by_hand():
    assert train.poly_learning_rate(0.0, 1.0, warmup=0.1) == pytest.approx(0.1)
    assert train.poly_learning_rate(0.05, 1.0, warmup=0.1) == pytest.approx(0.55)
    assert train.poly_learning_rate(0.1, 1.0, warmup=0.1) == pytest.approx(1.0)
    assert train.poly_learning_rate(0.55, 1.0, warmup=0.1) == pytest.approx(0.5**0.9)
    assert train.poly_learning_rate(1.0, 1.0, warmup=0.1) == 0.0


def test_loss_ignores_the_ignore_index():
    loss = train.make_loss(255)
    logits = np.array([[[[5.0, 0.0], [0.0, 5.0]]]], np.float32)  # (1, 1, 2, 2)
    right = float(loss(np.array([[[0, 1]]]), logits))
    ignored = float(loss(np.array([[[0, 255]]]), logits))
    assert ignored == pytest.approx(right, rel=1e-5)  # the ignored pixel adds nothing
    wrong = float(loss(np.array([[[1, 0]]]), logits))
    assert wrong > 10 * right


def test_saved_model_has_no_optimizer_state_and_training_goes_on(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(64), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    model.fit(np.zeros((8, 4)), np.zeros((8, 1)), verbose=0)
    artifacts.save_model(model, tmp_path / "m.keras")
    assert model.compiled and model.optimizer is not None
    model.fit(np.zeros((8, 4)), np.zeros((8, 1)), verbose=0)  # the caller's model still trains
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(again.layers[0].get_weights()[0].shape, (4, 64))
    assert not again.compiled


class FakeTime:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def capped_clock(monkeypatch):
    """A one-minute TrainingClock on a fake time source, attached to a model; returns (clock, model, time)."""
    fake = FakeTime()
    monkeypatch.setattr(train.time, "monotonic", fake)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    clock = train.TrainingClock(minutes=1.0)
    clock.set_model(model)
    model.stop_training = False
    return clock, model, fake


def test_time_cap_stops_at_the_epoch_boundary_when_the_next_epoch_would_not_fit(capped_clock):
    clock, model, fake = capped_clock
    clock.on_epoch_begin(0)
    fake.now += 25
    clock.on_train_batch_end(0)
    clock.on_epoch_end(0)  # 25 s used, the next 25 s epoch fits in 60
    assert not model.stop_training
    clock.on_epoch_begin(1)
    fake.now += 25
    clock.on_epoch_end(1)  # 50 s used, another epoch would end at 75 s
    assert model.stop_training and clock.stopped


def test_time_cap_stops_mid_epoch_only_when_one_epoch_is_longer_than_the_cap(capped_clock):
    clock, model, fake = capped_clock
    clock.set_state({"elapsed": 50.0})  # 50 s were used before an interruption
    clock.on_epoch_begin(3)
    fake.now += 5
    clock.on_train_batch_end(0)
    assert not model.stop_training and clock.elapsed() == pytest.approx(55.0)
    fake.now += 6
    clock.on_train_batch_end(1)
    assert model.stop_training


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dir):
    out = tmp_path_factory.mktemp("out")
    settings = load_settings(
        {
            "DEEPLAB_DATA_DIR": str(synthetic_dir),
            "DEEPLAB_OUTPUT_DIR": str(out),
            "DEEPLAB_IMAGE_SIZE": "64",
            "DEEPLAB_BATCH_SIZE": "4",
            "DEEPLAB_EPOCHS": "2",
            "DEEPLAB_BACKBONE": "mobilenetv2",
        }
    )
    return settings, train.train(settings, verbose=0)


def test_training_writes_model_and_history(trained):
    settings, result = trained
    paths = artifacts.output_paths(settings.output_dir)
    assert paths["model"].is_file() and result.model_path == paths["model"]
    history = json.loads(paths["history"].read_text())
    assert len(history["history"]["loss"]) == result.epochs_run == 2
    assert {"loss", "miou", "val_loss", "val_miou", "seconds"} <= set(history["history"])
    assert history["meta"]["settings"]["image_size"] == 64
    reloaded = keras.saving.load_model(paths["model"])
    assert reloaded.predict_on_batch(np.zeros((1, 64, 96, 3), np.float32)).shape == (1, 64, 96, 5)
    assert not list(settings.output_dir.glob(".*partial*")), "no temporary files left behind"
    assert not reloaded.compiled  # saved for inference: no optimizer state in the file


def test_evaluation_writes_metrics_json(trained):
    settings, result = trained
    evaluation = evaluate.evaluate(settings, result.model, split="test")
    metrics = json.loads((settings.output_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_images"] == 4
    assert set(metrics["per_class_iou"]) == {"background", "road", "car", "pedestrian", "building"}
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["pixel_accuracy"] <= 1.0
    # every labelled pixel of the 4 test masks, at their native 240x320 resolution, is counted once
    masks = [data.read_mask(path) for path in data.list_pairs(settings.data_dir, "test")[1]]
    assert {m.shape for m in masks} == {(240, 320)}
    assert np.sum(evaluation.confusion) == sum(np.sum(m != 255) for m in masks)


def test_predict_maps_masks_back_to_the_original_size(trained, tmp_path):
    _, result = trained
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3)).astype(np.uint8)
    mask = predict.predict_mask(result.model, image, image_size=64)
    assert mask.shape == (50, 70) and mask.dtype == np.uint8 and mask.max() < 5
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image).convert("L").save(tmp_path / "b.jpg")
    written = predict.predict_folder(result.model, tmp_path, tmp_path / "masks", 64).written
    assert [p.name for p in written] == ["a.png", "b.png"]
    assert np.asarray(Image.open(written[1])).shape == (50, 70)


def test_load_or_train_uses_the_saved_model(trained, capsys):
    settings, _ = trained
    train.load_or_train(settings)
    assert "Loaded the trained model" in capsys.readouterr().out


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "helpers", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("command", ["info", "generate-data", "train", "evaluate", "predict"])
def test_cli_help(command):
    done = run_cli(command, "--help")
    assert done.returncode == 0 and "usage:" in done.stdout


def test_cli_generate_data_and_bad_setting(tmp_path):
    done = run_cli(
        "generate-data", "--out", str(tmp_path / "d"), "--num-train", "2", "--num-val", "1", "--num-test", "1"
    )
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "d" / "train" / "images").glob("*.png"))) == 2
    bad = run_cli("info", "--image-size", "abc")
    assert bad.returncode == 2 and "DEEPLAB_IMAGE_SIZE='abc'" in bad.stderr


def test_default_learning_rate_is_higher_from_scratch_than_for_fine_tuning():
    assert train.default_learning_rate(load_settings({"DEEPLAB_WEIGHTS": "none"})) == 4e-3
    assert train.default_learning_rate(load_settings({"DEEPLAB_PROFILE": "full"})) == 1e-3  # imagenet
