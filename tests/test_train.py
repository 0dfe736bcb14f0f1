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


def _steps(clock, fake, seconds: float, count: int) -> None:
    for batch in range(count):
        clock.on_train_batch_begin(batch)
        fake.now += seconds
        clock.on_train_batch_end(batch)


def test_time_cap_is_used_to_the_end_with_room_for_the_last_validation(capped_clock):
    clock, model, fake = capped_clock
    clock.on_epoch_begin(0)
    _steps(clock, fake, 5.0, 5)  # 25 s of training
    fake.now += 5.0  # validation
    clock.on_epoch_end(0)
    assert not model.stop_training and clock.closing_s == pytest.approx(5.0)
    fake.now += 1.0  # saving
    clock.on_epoch_begin(1)
    assert clock.closing_s == pytest.approx(6.0)  # validation and saving, measured
    _steps(clock, fake, 5.0, 3)  # at 46 s: another step and the closing end at 57 s, inside the 60
    assert not model.stop_training
    _steps(clock, fake, 5.0, 1)  # at 51 s: one more would end at 62 s
    assert model.stop_training and clock.stopped  # mid-epoch: the last epoch is a short one


def test_time_cap_does_not_start_an_epoch_shorter_than_its_validation(capped_clock):
    clock, model, fake = capped_clock
    clock.on_epoch_begin(0)
    _steps(clock, fake, 2.0, 20)  # 40 s
    fake.now += 8.0  # validation: at 48 s, 12 s left, room for only 4 s of training
    clock.on_epoch_end(0)
    assert model.stop_training and clock.stopped


def test_time_cap_counts_the_time_of_interrupted_runs(capped_clock):
    clock, model, fake = capped_clock
    clock.set_state({"elapsed": 50.0})  # 50 s were used before an interruption
    clock.on_epoch_begin(3)
    _steps(clock, fake, 5.0, 1)
    assert not model.stop_training and clock.elapsed() == pytest.approx(55.0)
    _steps(clock, fake, 5.5, 1)
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


def test_an_unknown_class_weighting_is_refused_before_any_work(tmp_path):
    settings = load_settings({"DEEPLAB_DATA_DIR": str(tmp_path / "nothing-here"), "DEEPLAB_OUTPUT_DIR": str(tmp_path)})
    with pytest.raises(ValueError, match="none, median, sqrt-median.*'inverse'"):
        train.train(settings, class_weighting="inverse")
    assert not any(tmp_path.iterdir())  # nothing written
