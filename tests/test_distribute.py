"""Multi-device training proved on a CPU: two logical devices, and two local worker processes.

Each scenario runs in a fresh Python process, because the CPU can only be split into
logical devices before TensorFlow first touches it, and each worker is its own process.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from helpers.distribute import StrategyError, make_strategy

MIRRORED = r"""
import json, sys
from helpers.distribute import make_strategy, split_cpu
split_cpu(2)
import keras, numpy as np, tensorflow as tf
from helpers.model import build_deeplabv3_plus

strategy = make_strategy("mirrored")
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
y = rng.integers(0, 3, (8, 32, 32))
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

def make(synchronized):
    keras.utils.set_random_seed(0)
    model = build_deeplabv3_plus(3, backbone="mobilenetv2", weights=None, separable=True, dropout=0.0,
                                 synchronized_bn=synchronized)
    model.compile(keras.optimizers.SGD(0.05), loss)
    return model

single = make(True)  # the same batch-norm maths on one device: statistics over the whole batch
with strategy.scope():
    mirrored = make(True)
mirrored.set_weights(single.get_weights())
batches = tf.data.Dataset.from_tensors((x, y))  # one global batch of 8; three epochs of one step
result = {
    "replicas": strategy.num_replicas_in_sync,
    "copies": len(mirrored.trainable_variables[0].value.values),
    "devices": list(strategy.extended.worker_devices),
    "single": single.fit(batches, epochs=3, verbose=0).history["loss"],
    "mirrored": mirrored.fit(batches, epochs=3, verbose=0).history["loss"],
}

# the course's training loop under the same strategy, in the same process: a second mirrored model,
# small but with synchronised batch norm (its collectives must not clash with the first model's)
from helpers import train
from helpers.config import load_settings
with strategy.scope():
    inputs = keras.Input((None, None, 3))
    features = keras.layers.Conv2D(8, 3, padding="same")(keras.layers.Rescaling(1 / 255)(inputs))
    features = keras.layers.BatchNormalization(synchronized=True)(features)
    small = keras.Model(inputs, keras.layers.Conv2D(5, 1)(features))
trained = train.train(load_settings(), model=small, verbose=0)
result["course"] = {"epochs": trained.epochs_run, "model": str(trained.model_path)}
print("RESULT " + json.dumps(result))
"""

WORKER = r"""
import json, sys
import keras, numpy as np, tensorflow as tf
from helpers.distribute import for_multi_worker, make_strategy
from helpers.model import build_deeplabv3_plus

strategy = make_strategy("multiworker")
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = build_deeplabv3_plus(3, backbone="mobilenetv2", weights=None, separable=True, dropout=0.0,
                                 synchronized_bn=True)
    if sys.argv[1] == "course":
        model = for_multi_worker(model)
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32")
y = rng.integers(0, 3, (8, 32, 32))
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
batches = tf.data.Dataset.from_tensors((x, y)).repeat(3).with_options(options)
history = model.fit(batches, verbose=0).history["loss"]
checksum = float(sum(np.abs(w).sum() for w in model.get_weights()))
print("RESULT " + json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": history, "checksum": checksum}))
"""


def result_of(stdout: str) -> dict:
    return json.loads(next(line[7:] for line in stdout.splitlines() if line.startswith("RESULT ")))


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPLAB_") and k != "TF_CONFIG"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.mark.long
def test_mirrored_strategy_on_two_cpu_devices_matches_one_device_and_runs_the_course(synthetic_dir, tmp_path):
    env = {
        **clean_env(),
        "DEEPLAB_DATA_DIR": str(synthetic_dir),
        "DEEPLAB_OUTPUT_DIR": str(tmp_path),
        "DEEPLAB_IMAGE_SIZE": "48",
        "DEEPLAB_BATCH_SIZE": "4",  # global: 2 images per replica
        "DEEPLAB_EPOCHS": "2",
        "DEEPLAB_TRAIN_MINUTES": "none",
        "DEEPLAB_STRATEGY": "mirrored",
    }
    done = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = result_of(done.stdout)
    assert result["replicas"] == 2 and result["copies"] == 2  # every variable mirrored on both devices
    assert [d.split("/")[-1] for d in result["devices"]] == ["device:CPU:0", "device:CPU:1"]
    # the same global batch, split 4 + 4 with synchronised batch norm, gives one device's loss; after a few
    # updates, sums taken in another order drift a little (the steps are large on purpose, to move the loss)
    assert result["mirrored"][0] == pytest.approx(result["single"][0], rel=1e-4)
    assert result["mirrored"] == pytest.approx(result["single"], rel=1e-2)
    assert result["mirrored"][-1] < result["mirrored"][0]  # and it learns
    # the course's training loop then runs under the same strategy (a second mirrored model in one process)
    assert result["course"]["epochs"] == 2 and (tmp_path / "model.keras").is_file()
    assert not (tmp_path / "resume").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_workers(model: str, timeout: float = 600) -> list[tuple[int, str, str]]:
    """Start two local workers of one multi-worker cluster; their (exit code, stdout, stderr)."""
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**clean_env(), "TF_CONFIG": json.dumps(config)}
        command = [sys.executable, "-c", WORKER, model]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    finished = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:  # a worker whose peer died waits for it forever
            process.kill()
            stdout, stderr = process.communicate()
        finished.append((process.returncode, stdout.decode(), stderr.decode()))
    return finished


@pytest.mark.long
def test_two_local_workers_train_in_step_with_multiworker_mirrored_strategy():
    results = []
    for code, stdout, stderr in run_two_workers("course"):
        assert code == 0, stderr[-3000:]
        results.append(result_of(stdout))
    assert [r["replicas"] for r in results] == [2, 2]
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)  # both saw the global loss
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-6)  # and hold the same weights


@pytest.mark.slow
def test_plain_keras_still_needs_the_multi_worker_model():
    """Fails once Keras fixes tensorflow/tensorflow#72388: then set KERAS_FIXED_IN and drop the workaround."""
    import keras

    from helpers.distribute import needs_multi_worker_model

    assert needs_multi_worker_model()
    failures = [stderr for code, _, stderr in run_two_workers("plain", timeout=240) if code != 0]
    assert failures, f"Keras {keras.version()} trains multi-worker without MultiWorkerModel: set KERAS_FIXED_IN"
    assert any("PerReplica" in f or "Invalid reduction dimension" in f for f in failures), failures[0][-2000:]


def test_strategy_errors_say_what_to_do(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StrategyError, match="needs TF_CONFIG"):
        make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(StrategyError, match="not valid JSON"):
        make_strategy("multiworker")
    with pytest.raises(StrategyError, match="DEEPLAB_STRATEGY='horovod'"):
        make_strategy("horovod")
    assert make_strategy("default").num_replicas_in_sync == 1
