import json
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import artifacts, callbacks, data, evaluate, predict, train
from helpers.config import load_settings


def test_poly_schedule_by_hand():
    assert callbacks.poly_learning_rate(0.0, 1.0, warmup=0.1) == pytest.approx(0.1)
    assert callbacks.poly_learning_rate(0.05, 1.0, warmup=0.1) == pytest.approx(0.55)
    assert callbacks.poly_learning_rate(0.1, 1.0, warmup=0.1) == pytest.approx(1.0)
    assert callbacks.poly_learning_rate(0.55, 1.0, warmup=0.1) == pytest.approx(0.5**0.9)
    assert callbacks.poly_learning_rate(1.0, 1.0, warmup=0.1) == 0.0


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
    path = artifacts.save_model(model, tmp_path / "m.keras")
    with zipfile.ZipFile(path) as archive:
        archive.extract("model.weights.h5", tmp_path)
    with h5py.File(tmp_path / "model.weights.h5") as weights:
        assert "layers" in weights and "optimizer" not in weights
    assert model.compiled and model.optimizer is not None
    model.fit(np.zeros((8, 4)), np.zeros((8, 1)), verbose=0)  # the caller's model still trains
    assert model.optimizer.iterations.numpy() == 2
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(again.get_layer(model.layers[0].name).get_weights()[0].shape, (4, 64))
    assert not again.compiled


def test_json_history_logs_what_keras_csv_logger_logs(tmp_path):
    import csv

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)), rng.normal(size=(16, 1))
    ours = callbacks.JsonHistory(tmp_path / "history.json")
    keras_logger = keras.callbacks.CSVLogger(str(tmp_path / "history.csv"))
    model.fit(x, y, validation_split=0.25, epochs=3, batch_size=4, verbose=0, callbacks=[ours, keras_logger])
    with open(tmp_path / "history.csv") as rows:
        logged = list(csv.DictReader(rows))
    saved = json.loads((tmp_path / "history.json").read_text())["history"]
    assert len(logged) == 3 and set(saved) == {"loss", "val_loss", "seconds"}
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(saved[key], [float(row[key]) for row in logged], rtol=1e-6)


def test_best_model_checkpoint_saves_at_the_epochs_keras_model_checkpoint_does(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    ours = callbacks.BestModelCheckpoint(tmp_path / "best.keras")
    keras_checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "keras-{epoch}.keras"), monitor="val_miou", mode="max", save_best_only=True
    )
    saved_at = []
    for callback in (ours, keras_checkpoint):
        callback.set_model(model)
    for epoch, score in enumerate([0.1, 0.3, 0.2, 0.3, 0.5, float("nan")]):
        before = (tmp_path / "best.keras").stat().st_mtime_ns if (tmp_path / "best.keras").exists() else None
        ours.on_epoch_end(epoch, {"loss": 1.0, "val_miou": score})
        keras_checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_miou": score})
        if ours.best_epoch == epoch:
            saved_at.append(epoch + 1)
        assert before is None or ours.best_epoch == epoch or (tmp_path / "best.keras").stat().st_mtime_ns == before
    by_keras = sorted(int(p.stem.split("-")[1]) for p in tmp_path.glob("keras-*.keras"))
    assert saved_at == by_keras == [1, 2, 5]


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
    clock = callbacks.TrainingClock(minutes=1.0)
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


def test_training_writes_model_and_history(course_run):
    paths = artifacts.output_paths(course_run.output_dir)
    assert paths["model"].is_file()
    history = json.loads(paths["history"].read_text())
    assert len(history["history"]["loss"]) == course_run.epochs
    assert {"loss", "miou", "val_loss", "val_miou", "seconds"} <= set(history["history"])
    assert history["meta"]["settings"]["image_size"] == course_run.image_size
    reloaded = keras.saving.load_model(paths["model"])
    assert reloaded.predict_on_batch(np.zeros((1, 64, 96, 3), np.float32)).shape == (1, 64, 96, 5)
    assert not list(course_run.output_dir.glob(".*partial*")), "no temporary files left behind"
    assert not (course_run.output_dir / "resume").exists(), "a finished run leaves no resume state"
    assert not reloaded.compiled  # saved for inference: no optimizer state in the file


def test_evaluation_writes_metrics_json(course_run, course_model, tmp_path):
    settings = replace(course_run, output_dir=tmp_path)
    evaluation = evaluate.evaluate(settings, course_model, split="test")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_images"] == 4
    assert set(metrics["per_class_iou"]) == {"background", "road", "car", "pedestrian", "building"}
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["pixel_accuracy"] <= 1.0
    # every labelled pixel of the 4 test masks, at their native 240x320 resolution, is counted once
    masks = [data.read_mask(path) for path in data.list_pairs(settings.data_dir, "test")[1]]
    assert {m.shape for m in masks} == {(240, 320)}
    assert np.sum(evaluation.confusion) == sum(np.sum(m != 255) for m in masks)


def test_predict_maps_masks_back_to_the_original_size(course_run, course_model, tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3)).astype(np.uint8)
    mask = predict.predict_mask(course_model, image, image_size=course_run.image_size)
    assert mask.shape == (50, 70) and mask.dtype == np.uint8 and mask.max() < 5
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image).convert("L").save(tmp_path / "b.jpg")
    written = predict.predict_folder(course_model, tmp_path, tmp_path / "masks", course_run.image_size).written
    assert [p.name for p in written] == ["a.png", "b.png"]
    assert np.asarray(Image.open(written[1])).shape == (50, 70)


def test_load_or_train_uses_the_saved_model(course_run, capsys):
    train.load_or_train(course_run)
    assert "Loaded the trained model" in capsys.readouterr().out


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "helpers", *args], capture_output=True, text=True, env=env)


def test_cli_help_lists_every_command():
    done = run_cli("--help")
    assert done.returncode == 0
    for command in ("info", "generate-data", "check-data", "prepare-data", "train", "evaluate", "predict", "export"):
        assert command in done.stdout


@pytest.mark.parametrize(
    "command, options",
    [
        ("info", ["--image-size", "--backbone"]),
        ("generate-data", ["--num-train", "--overwrite"]),
        ("train", ["--class-weighting", "--learning-rate", "--restart", "--train-minutes"]),
        ("evaluate", ["--tta", "--split"]),
        ("predict", ["input", "output", "--native-size"]),
    ],
)
def test_cli_help_shows_each_commands_own_options(command, options, capsys):
    from helpers.cli import build_parser

    with pytest.raises(SystemExit) as exit_code:
        build_parser().parse_args([command, "--help"])
    shown = capsys.readouterr().out
    assert exit_code.value.code == 0 and f"usage: python -m helpers {command}" in shown
    assert all(option in shown for option in options), shown


def test_training_logs_a_line_per_epoch_unless_on_a_terminal(monkeypatch):
    from helpers import cli

    monkeypatch.setattr(cli.sys.stdout, "isatty", lambda: False)
    assert cli.default_verbosity() == 2
    monkeypatch.setattr(cli.sys.stdout, "isatty", lambda: True)
    assert cli.default_verbosity() == 1


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


def test_compiled_model_traces_its_training_step_once():
    traces = []

    class CountingTraces(keras.Model):
        def train_step(self, batch):
            traces.append(1)  # runs only while TensorFlow traces the step
            return super().train_step(batch)

    inputs = keras.Input((4, 4, 3))
    model = CountingTraces(inputs, keras.layers.Conv2D(3, 1)(inputs))
    train.compile_model(model, data.DatasetInfo(classes=("a", "b", "c")))
    x, y = np.zeros((8, 4, 4, 3), np.float32), np.zeros((8, 4, 4), np.int32)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert len(traces) == 1  # optimizer variables made inside the first trace make TensorFlow trace it again


def tensorboard_events(folder: Path) -> dict[str, list]:
    """Every value TensorBoard would read from ``folder``'s event files, by tag."""
    from tensorflow.core.util import event_pb2

    values: dict[str, list] = {}
    for path in folder.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            for value in event_pb2.Event.FromString(record.numpy()).summary.value:
                values.setdefault(value.tag, []).append(value)
    return values


def test_training_writes_tensorboard_curves_and_a_prediction_per_epoch(course_run):
    logs = artifacts.output_paths(course_run.output_dir)["tensorboard"]
    for split in ("train", "validation"):
        events = tensorboard_events(logs / split)
        assert len(events["epoch_loss"]) == len(events["epoch_miou"]) == course_run.epochs, sorted(events)
    images = tensorboard_events(logs / "images")[callbacks.PredictionImages.TAG]
    assert len(images) == course_run.epochs
    width, height, png = images[-1].tensor.string_val
    strip = tf.io.decode_png(png).numpy()  # image, truth and prediction side by side
    assert (int(height), int(width)) == strip.shape[:2] == (48, 3 * 64)  # 240x320 at shorter side 48: 48x64
    strips = callbacks.read_prediction_images(logs)
    assert [epoch for epoch, _ in strips] == list(range(1, course_run.epochs + 1))
    np.testing.assert_array_equal(strips[-1][1], strip)
    assert len(np.unique(strip[:, 64:128].reshape(-1, 3), axis=0)) > 1  # the truth panel is a mask, not blank
