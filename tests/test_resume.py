"""Reliability: a killed run resumes exactly, runs are reproducible, divergence and bad saves lose nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import artifacts, callbacks, train


def run_env(settings) -> dict:
    """The environment that gives ``python -m helpers train`` these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLAB_")}
    env.update(
        DEEPLAB_DATA_DIR=str(settings.data_dir),
        DEEPLAB_OUTPUT_DIR=str(settings.output_dir),
        DEEPLAB_IMAGE_SIZE=str(settings.image_size),
        DEEPLAB_BATCH_SIZE=str(settings.batch_size),
        DEEPLAB_EPOCHS=str(settings.epochs),
        DEEPLAB_TRAIN_MINUTES="none",
        DEEPLAB_BACKBONE=settings.backbone,
        DEEPLAB_PRECISION=settings.precision,
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


def train_command() -> list[str]:
    return [sys.executable, "-m", "helpers", "train", "--verbose", "0"]


def history(output_dir: Path) -> dict:
    return json.loads((output_dir / "history.json").read_text())["history"]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_and_ends_where_an_uninterrupted_run_ends(course_run, tmp_path):
    killed = replace(course_run, output_dir=tmp_path / "killed")  # course_run: the same run, never interrupted
    state = killed.output_dir / "resume" / "state.json"

    process = subprocess.Popen(train_command(), env=run_env(killed))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epochs_done"] >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    done_before_kill = json.loads(state.read_text())["epochs_done"]
    assert 2 <= done_before_kill < killed.epochs

    resumed = subprocess.run(train_command(), env=run_env(killed), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{done_before_kill} epoch(s) already done" in resumed.stdout
    assert not (killed.output_dir / "resume").exists(), "a finished run leaves no resume state"

    straight = history(course_run.output_dir)
    assert len(history(killed.output_dir)["loss"]) == len(straight["loss"]) == killed.epochs
    np.testing.assert_allclose(history(killed.output_dir)["loss"], straight["loss"], rtol=1e-5)
    weights = [artifacts.load_model(run.output_dir / "model.keras").get_weights() for run in (killed, course_run)]
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_same_seed_same_run_even_beside_a_stale_resume_state(course_run, tmp_path, capsys):
    settings = replace(course_run, output_dir=tmp_path / "again")  # the same run, where a resume state
    resume = artifacts.output_paths(settings.output_dir)["resume"]  # from other settings lies
    resume.mkdir(parents=True)
    artifacts.write_json(resume / "state.json", {"fingerprint": {"learning_rate": 0.5}, "epochs_done": 1})
    again = train.train(settings, verbose=0)
    assert "used other settings (" in capsys.readouterr().out  # replaced, not used
    assert again.epochs_run == settings.epochs
    first = history(course_run.output_dir)
    assert again.history["loss"] == first["loss"]
    assert again.history["val_miou"] == first["val_miou"]


def test_another_seed_gives_another_run(course_run, tmp_path, tiny_model):
    losses = {}
    for seed in (42, 43):
        keras.utils.set_random_seed(0)  # the same starting weights: only the run's seed differs
        settings = replace(course_run, output_dir=tmp_path / str(seed), seed=seed, epochs=1)
        losses[seed] = train.train(settings, model=tiny_model(5), verbose=0).history["loss"]
    assert losses[42] != losses[43]  # another shuffle and other augmentations


def test_a_new_run_replaces_the_folders_tensorboard_logs(course_run, tmp_path, tiny_model):
    settings = replace(course_run, output_dir=tmp_path, epochs=1)
    for _ in range(2):  # two fresh runs in one output folder
        train.train(settings, model=tiny_model(5), verbose=0, resume=False)
    logs = artifacts.output_paths(tmp_path)["tensorboard"]
    assert len(list((logs / "images").glob("events.out.tfevents.*"))) == 1
    assert len(list((logs / "train").glob("events.out.tfevents.*"))) == 1
    assert [epoch for epoch, _ in callbacks.read_prediction_images(logs)] == [1]


@keras.saving.register_keras_serializable(package="tests")
class PoisonAfter(keras.layers.Layer):
    """Passes its input through, then NaN from training step ``steps + 1`` on: a run that diverges."""

    def __init__(self, steps: int, **kwargs):
        super().__init__(**kwargs)
        self.steps = steps

    def build(self, shape):
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False, name="count")

    def call(self, x, training=None):
        if training:
            self.count.assign_add(1.0)
        return keras.ops.where(self.count > self.steps, keras.ops.full_like(x, float("nan")), x)

    def get_config(self):
        return {**super().get_config(), "steps": self.steps}


@pytest.mark.slow
def test_divergence_stops_with_the_causes_and_keeps_the_last_good_epoch(course_run, tmp_path, tiny_model):
    settings = replace(course_run, output_dir=tmp_path / "nan", epochs=4)
    base = tiny_model(5)
    model = keras.Model(base.input, PoisonAfter(4)(base.output))  # 3 steps per epoch: NaN in epoch 2
    with pytest.raises(train.TrainingDiverged) as info:
        train.train(settings, model=model, verbose=0)
    message = str(info.value)
    for words in ("became nan", "learning rate is too high", "check-data", "mixed_float16", "epoch 1) is kept"):
        assert words in message
    paths = artifacts.output_paths(settings.output_dir)
    kept = artifacts.load_model(paths["model"])
    assert all(np.isfinite(w).all() for w in kept.get_weights())
    assert json.loads((paths["resume"] / "state.json").read_text())["epochs_done"] == 1


def test_divergence_guard_keeps_the_last_good_epoch(tmp_path):
    """Unit level: a loss that turns NaN in epoch 3 leaves the resume state of epoch 2 on disk."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")

    class PoisonAtEpoch3(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                self.model.layers[0].kernel.assign(np.full((2, 1), np.nan, np.float32))

    guard = callbacks.DivergenceGuard()
    state = callbacks.ResumableState(tmp_path / "resume", {"run": 1}, {}, guard)
    x, y = np.ones((8, 2), np.float32), np.ones((8, 1), np.float32)
    model.fit(x, y, epochs=5, batch_size=4, verbose=0, callbacks=[PoisonAtEpoch3(), guard, state])
    assert guard.problem is not None and "nan" in guard.problem
    saved = json.loads((tmp_path / "resume" / "state.json").read_text())
    assert saved["epochs_done"] == 2
    assert [p.name for p in (tmp_path / "resume").glob("*.h5")] == ["epoch-0002.weights.h5"]


def test_an_interrupted_save_keeps_the_previous_model(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = artifacts.save_model(model, tmp_path / "model.keras")
    before = path.read_bytes()

    def crash(self, filepath, *args, **kwargs):
        Path(filepath).write_bytes(b"half a model")  # the save dies after writing part of the file
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        artifacts.save_model(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_an_interrupted_json_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = artifacts.write_json(tmp_path / "metrics.json", {"miou": 0.5})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        artifacts.write_json(path, {"miou": 0.9})
    assert json.loads(path.read_text()) == {"miou": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
