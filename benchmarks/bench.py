"""make bench: the reference tutorial's pipeline and model against the course's default path.

The same data, image size and batch size for every variant, one run. For each:
forward FLOPs per image (counted from the graph), training and inference images/s,
peak memory (each variant runs in a fresh process, so it is that variant's own),
achieved FLOP/s against this machine's matmul peak, and the ratio to the reference.
``--all`` adds the ladder of changes one at a time, so the table shows what each
bought. ``--quality N`` also trains each on N images, each with its own recipe (the reference as
written, the course as `python -m helpers train` would), and scores test mIoU.
Writes build/bench.json and build/bench.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from child import run_row  # noqa: E402

from helpers import data, evaluate, reference, synthetic  # noqa: E402
from helpers.callbacks import PolyLearningRate  # noqa: E402
from helpers.config import load_settings  # noqa: E402
from helpers.flops import count_flops  # noqa: E402
from helpers.kernels import with_keras_batch_norm  # noqa: E402
from helpers.metrics import ConfusionMatrix  # noqa: E402
from helpers.model import build_deeplabv3_plus  # noqa: E402
from helpers.train import compile_model, default_learning_rate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# what `python -m helpers train` uses for a model trained from scratch (every variant here is)
FROM_SCRATCH_LR = default_learning_rate(load_settings({"DEEPLAB_WEIGHTS": "none"}))


def matmul_peak(dtype: tf.DType, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large square matmul: the ceiling convolutions can approach."""
    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    matmul = tf.function(lambda x, y: tf.matmul(x, y))
    matmul(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        out = matmul(a, b)
    out.numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


class Variant:
    """A model plus the input pipeline and preprocessing it is trained with."""

    def __init__(self, name, build, dataset, scale_input, schedule=None):
        self.name, self.build, self.dataset, self.scale_input = name, build, dataset, scale_input
        # the learning-rate recipe for --quality: a callback factory taking the number of steps, or None
        self.schedule = schedule


def reference_variant(data_dir, info, size, batch):
    def build():
        model = reference.build_reference_model((size, size, 3), info.num_classes, None, reference.CORRECTED_TAPS)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return model

    def dataset():
        images, masks = data.list_pairs(data_dir, "train")
        ds = reference.reference_data_generator(images, masks, batch, size)
        # The reference has no ignore index; void pixels must become a class for its loss to run at all.
        void = 255 if info.ignore_index is None else info.ignore_index
        return ds.map(lambda x, y: (x, tf.where(y == void, tf.zeros_like(y), y)))

    return Variant("reference (tutorial, taps corrected)", build, dataset, 1 / 255)


def course_variant(
    data_dir, info, size, batch, name="course default", jit_compile=False, keras_bn=False, **model_kwargs
):
    def build():
        model = build_deeplabv3_plus(info.num_classes, weights=None, **model_kwargs)
        if keras_bn:  # measure what the fused batch norm buys: the same model with Keras's own
            model = with_keras_batch_norm(model)
        return compile_model(model, info, jit_compile=jit_compile)

    def dataset():
        return data.make_dataset(data_dir, "train", size, batch, training=True, info=info)

    def schedule(steps: int) -> PolyLearningRate:  # the course's recipe: warm-up, then poly from the peak
        return PolyLearningRate(FROM_SCRATCH_LR, steps)

    return Variant(name, build, dataset, 1.0, schedule)


class StepClock(keras.callbacks.Callback):
    """Times training steps from the end of the first to the end of the last.

    Timing a whole ``fit`` call would also count its start-up (a new iterator,
    refilling the shuffle buffer), which swamps a few fast steps.
    """

    def on_train_batch_end(self, batch, logs=None):
        self.times = [*getattr(self, "times", []), time.perf_counter()]

    @property
    def seconds_per_step(self) -> float:
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)


def measure(variant: Variant, size: int, batch: int, steps: int) -> dict:
    keras.utils.set_random_seed(0)
    model = variant.build()
    flops = count_flops(model, (size, size, 3))
    ds = variant.dataset().repeat()
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace and warm up
    clock = StepClock()
    model.fit(ds, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[clock])
    train_seconds = clock.seconds_per_step * steps
    images = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32") * variant.scale_input
    predict = tf.function(lambda x: model(x, training=False))
    predict(images)
    start = time.perf_counter()
    for _ in range(steps):
        predict(images).numpy()
    infer_seconds = time.perf_counter() - start
    train_ips = steps * batch / train_seconds
    return {
        "model": model,
        "params": int(model.count_params()),
        "gflops_per_image": flops / 1e9,
        "train_images_per_s": train_ips,
        "inference_images_per_s": steps * batch / infer_seconds,
        # this process's peak resident memory: TensorFlow, the model, training and inference
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # a training step costs about 3 forward passes (forward, and two for the backward pass)
        "train_gflops_per_s": 3 * flops * train_ips / 1e9,
    }


def test_miou(model, data_dir, info, size, scale_input) -> float:
    """Test mIoU against the same masks for every variant (the course's evaluation images).

    A model with a fixed input size (the reference: squares) sees its own square resize
    of each image, and its scores are resized back to the mask before the argmax.
    """
    matrix = ConfusionMatrix(info.num_classes, info.ignore_index)
    fixed = model.input_shape[1:3]
    split = evaluate.default_split(data_dir)  # a dataset without a test split is scored on val
    for images, masks in data.make_dataset(data_dir, split, size, 8, training=False, info=info):
        inputs = images if None in fixed else tf.image.resize(images, fixed)
        scores = model.predict_on_batch(inputs * scale_input)
        scores = tf.image.resize(scores, masks.shape[1:3]) if None not in fixed else scores
        matrix.update(masks.numpy(), np.argmax(scores, axis=-1))
    return matrix.scores().miou


def _ratio(row: dict, base: dict, key: str) -> str:
    return "" if row is base else f" ({row[key] / base[key]:.2f}x)"


def markdown(result: dict) -> str:
    rows = result["variants"]
    base = rows[0]
    quality = "test_miou" in base
    lines = [
        f"Measured {result['date']} on {result['machine']}; {result['image_size']}x{result['image_size']}, "
        f"batch {result['batch_size']}, {result['steps']} timed steps each, every variant in its own process. "
        f"Matmul peak on this machine: {result['matmul_gflops_float32']:.0f} GFLOP/s float32, "
        f"{result['matmul_gflops_bfloat16']:.0f} bfloat16.",
        "",
        "| variant | params | GFLOPs/image | train img/s | inference img/s | peak memory | train GFLOP/s |"
        + (" test mIoU |" if quality else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if quality else ""),
    ]
    for row in rows:
        share = row["train_gflops_per_s"] / result["matmul_gflops_float32"]
        cells = [
            row["name"],
            f"{row['params'] / 1e6:.1f} M",
            f"{row['gflops_per_image']:.1f}{_ratio(row, base, 'gflops_per_image')}",
            f"**{row['train_images_per_s']:.1f}**{_ratio(row, base, 'train_images_per_s')}",
            f"**{row['inference_images_per_s']:.1f}**{_ratio(row, base, 'inference_images_per_s')}",
            f"{row['peak_memory_mb'] / 1024:.1f} GB",
            f"{row['train_gflops_per_s']:.0f} ({share:.0%} of fp32 peak)",
        ]
        if quality:
            cells.append(f"{row['test_miou']:.3f}" if "test_miou" in row else "not trained")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


DEFAULT = {"backbone": "mobilenetv2", "separable": True, "precision": "auto"}
LADDER = {  # each row adds one change to the row above it
    "course, paper encoder (ResNet50, atrous conv5), Keras batch norm, float32": {"keras_bn": True},
    "+ fused batch norm": {},
    "+ separable ASPP and decoder": {"separable": True},
    "+ mixed_bfloat16": {"separable": True, "precision": "mixed_bfloat16"},
    "MobileNetV2 backbone, separable, float32 (the CPU default)": {"backbone": "mobilenetv2", "separable": True},
    "MobileNetV2, separable, mixed_bfloat16": {**DEFAULT, "precision": "mixed_bfloat16"},
}
OPTIONS = {
    "paper encoder at output stride 8, float32": {"output_stride": 8},
    "MobileNetV2, separable, float32, XLA": {"backbone": "mobilenetv2", "separable": True, "jit_compile": True},
}


def run_one(spec: dict, args) -> dict:
    """Measure one variant (in this process) and return its row."""
    data_dir = Path(args.data)
    info = data.read_dataset_info(data_dir)
    size, batch = args.image_size, args.batch_size
    kwargs = dict(spec.get("kwargs", {}))
    if spec.get("reference"):
        variant = reference_variant(data_dir, info, size, batch)
    else:
        variant = course_variant(data_dir, info, size, batch, spec["name"], **kwargs)
    row = measure(variant, size, batch, args.steps)
    model = row.pop("model")
    if args.quality and spec.get("quality", True):
        # each variant with its own training recipe: the reference as written (Adam at Keras's default
        # 1e-3), the course's variants as `python -m helpers train` trains them
        steps = max(1, args.quality // batch)
        callbacks = [variant.schedule(steps)] if variant.schedule else []
        model.optimizer.iterations.assign(0)  # the schedule counts the optimizer's steps: start it afresh
        model.fit(variant.dataset().repeat(), steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks)
        row["test_miou"] = test_miou(model, data_dir, info, size, variant.scale_input)
    return {"name": spec["name"], "settings": kwargs, **row}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument(
        "--quality", type=int, default=0, help="also train each for this many images and score test mIoU"
    )
    parser.add_argument("--all", action="store_true", help="the ladder of changes and the other options too")
    parser.add_argument("--out", default=str(ROOT / "build"))
    parser.add_argument("--data", default=str(ROOT / "data" / "bench"), help="dataset (default: built-in, generated)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one variant, print its row as JSON
    args = parser.parse_args()
    if args.one:
        print("ROW " + json.dumps(run_one(json.loads(args.one), args)), flush=True)
        return 0

    data_dir = Path(args.data)
    if data_dir == ROOT / "data" / "bench" and not (data_dir / "classes.json").is_file():
        synthetic.generate_dataset(data_dir, 96, 24, 24, seed=42)
    specs = [{"name": "reference (tutorial, taps corrected)", "reference": True}]
    if args.all:
        specs += [{"name": name, "kwargs": kw} for name, kw in LADDER.items()]
        # options that are slow to train are timed, not trained for --quality
        specs += [{"name": name, "kwargs": kw, "quality": False} for name, kw in OPTIONS.items()]
    else:
        specs.append({"name": "course default on this machine", "kwargs": DEFAULT})
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}",
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "matmul_gflops_float32": matmul_peak(tf.float32) / 1e9,
        "matmul_gflops_bfloat16": matmul_peak(tf.bfloat16) / 1e9,
        "variants": [],
    }
    passthrough = ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--data", args.data]
    passthrough += ["--steps", str(args.steps), "--quality", str(args.quality)]
    for spec in specs:
        print(f"measuring: {spec['name']}", flush=True)
        row = run_row([sys.executable, __file__, *passthrough, "--one", json.dumps(spec)])
        if row is not None:
            result["variants"].append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (out / "bench.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
