"""make bench-quality: what a learner gets per minute of compute, on real data.

Each recipe trains from scratch for a fixed wall-clock budget (``--minutes``, time for
the data check, model build and tracing included, as ``python -m helpers train``
counts it), then is scored on the validation split at each mask's native resolution, overall and
per class (one pass), and overall with flip test-time augmentation (the ``evaluate``
command's default). Every run is its own process, one after another, so no two share the
CPU. The reference tutorial's pipeline and model train under the same budget.

    python benchmarks/quality.py --data ../shared/datasets/camvid-dev --minutes 5 15

Writes build/quality.json and build/quality.md (a table per budget).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from child import run_row

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]


# name -> what differs from `python -m helpers train` with its defaults:
#   "train": keyword arguments of helpers.train.train, "model": of build_deeplabv3_plus, "env": DEEPLAB_* settings
# Recipes zoom 0.5-2 (the default until 2026-11-27) unless their name gives other zooms, and train
# with batch 8 (the CPU default until batch 4) unless their name gives another batch. Precision is
# DEEPLAB_PRECISION=auto unless the name gives it; on a CPU with bf16 units, auto trained MobileNetV2
# in mixed_bfloat16 until 2026-11-27 and in float32 since.
def _recipe(head: int, weighting: str, batch: int = 8, env: dict | None = None, **extra) -> dict:
    return {
        "model": {"decoder_filters": head, **extra.pop("model", {})},
        "train": {"class_weighting": weighting, "scale_range": (0.5, 2.0), **extra},
        "env": {"DEEPLAB_BATCH_SIZE": str(batch), **(env or {})},
    }


def _default_with(**changes) -> dict:
    """The default recipe (64-channel head, sqrt-median weights, zooms 0.75-1.5, batch 4), with ``changes``."""
    return _recipe(64, "sqrt-median", batch=4, scale_range=(0.75, 1.5), **changes)


# name -> how it trains: "model" holds build_deeplabv3_plus options, "train" helpers.train.train's.
# Everything else is `python -m helpers train`'s default. Each names its settings in full, so a
# row keeps its meaning when the defaults change.
RECIPES: dict[str, dict] = {
    "256-channel head, no class weights (the earlier default)": _recipe(256, "none"),
    "256-channel head, median-frequency weights": _recipe(256, "median"),
    "256-channel head, sqrt-median weights": _recipe(256, "sqrt-median"),
    "128-channel head, no class weights": _recipe(128, "none"),
    "128-channel head, median-frequency weights": _recipe(128, "median"),
    "128-channel head, sqrt-median weights": _recipe(128, "sqrt-median"),
    "128-channel head, no class weights, peak learning rate 8e-3": _recipe(128, "none", learning_rate=8e-3),
    "64-channel head, no class weights": _recipe(64, "none"),
    "64-channel head, sqrt-median weights (the default until zooms 0.75-1.5)": _recipe(64, "sqrt-median"),
    "whole MobileNetV2 (atrous last stage), 256-channel head, no class weights": _recipe(
        256, "none", model={"whole_encoder": True}
    ),
    "64-channel head, median-frequency weights": _recipe(64, "median"),
    "64-channel head, sqrt-median weights, shorter side 320": _recipe(
        64, "sqrt-median", env={"DEEPLAB_IMAGE_SIZE": "320"}
    ),
    "64-channel head, sqrt-median weights, + Lovasz-softmax on 1/16 of the pixels": _recipe(
        64, "sqrt-median", lovasz=True
    ),
    "64-channel head, sqrt-median weights, + a stride-2 decoder step (16 fine-level channels)": _recipe(
        64, "sqrt-median", model={"fine_level_channels": 16}
    ),
    "64-channel head, sqrt-median weights, zooms 0.75-1.5 (the default until batch 4)": _recipe(
        64, "sqrt-median", scale_range=(0.75, 1.5)
    ),
    "64-channel head, sqrt-median weights, zooms 1-2": _recipe(64, "sqrt-median", scale_range=(1.0, 2.0)),
    "64-channel head, sqrt-median weights, peak learning rate 8e-3": _recipe(64, "sqrt-median", learning_rate=8e-3),
    "64-channel head, sqrt-median weights, zooms 0.75-1.5, batch 4 (the default)": _default_with(),
    "64-channel head, sqrt-median weights, zooms 0.75-1.5, batch 4, shorter side 320": _default_with(
        env={"DEEPLAB_IMAGE_SIZE": "320"}
    ),
    "64-channel head, sqrt-median weights, zooms 0.75-1.5, batch 4, float32": _default_with(
        env={"DEEPLAB_PRECISION": "float32"}
    ),
    "64-channel head, sqrt-median weights, zooms 0.75-1.5, batch 4, mixed_bfloat16": _default_with(
        env={"DEEPLAB_PRECISION": "mixed_bfloat16"}
    ),
    "64-channel head, sqrt-median weights, zooms 0.75-1.5, batch 4, peak learning rate 2e-3": _default_with(
        learning_rate=2e-3
    ),
}
DEFAULT = "64-channel head, sqrt-median weights, zooms 0.75-1.5, batch 4 (the default)"
REFERENCE = "reference tutorial (taps corrected)"


def run_recipe(name: str, minutes: float, data_dir: Path, image_size: int, out: Path) -> dict:
    """Train and score one recipe in this process; returns its row."""
    import keras

    from helpers import data, evaluate
    from helpers.config import UNCAPPED_EPOCHS, load_settings
    from helpers.train import build_model, train

    recipe = RECIPES[name]
    env = {
        "DEEPLAB_DATA_DIR": str(data_dir),
        "DEEPLAB_OUTPUT_DIR": str(out),
        "DEEPLAB_TRAIN_MINUTES": str(minutes),
        "DEEPLAB_EPOCHS": str(UNCAPPED_EPOCHS),
        "DEEPLAB_IMAGE_SIZE": str(image_size),
        "DEEPLAB_WEIGHTS": "none",
        **recipe.get("env", {}),
    }
    settings = load_settings(env)
    info = data.read_dataset_info(data_dir)
    model = None
    if recipe.get("model"):
        keras.utils.set_random_seed(settings.seed)
        model = build_model(settings, info.num_classes, **recipe["model"])
    result = train(settings, model=model, verbose=2, resume=False, **recipe.get("train", {}))
    split = evaluate.default_split(data_dir)
    scores = evaluate.evaluate_model(result.model, data_dir, info, settings.image_size, split).scores
    flip = evaluate.evaluate_model(result.model, data_dir, info, settings.image_size, split, tta="flip").scores
    return {
        "epochs": result.epochs_run,
        "train_seconds": result.seconds,
        "miou": scores.miou,
        "miou_flip": flip.miou,  # what `python -m helpers evaluate` reports by default
        "per_class": scores.as_dict(info.classes)["per_class_iou"],
        "split": split,
    }


def run_reference(minutes: float, data_dir: Path, image_size: int) -> dict:
    """The reference tutorial's pipeline and model (Adam 1e-3, no ignore index) under the same budget."""
    import keras
    import numpy as np
    import tensorflow as tf

    from helpers import data, evaluate, reference
    from helpers.callbacks import TrainingClock
    from helpers.config import UNCAPPED_EPOCHS
    from helpers.imageio import read_image
    from helpers.metrics import ConfusionMatrix

    clock = TrainingClock(minutes)
    info = data.read_dataset_info(data_dir)
    keras.utils.set_random_seed(42)
    size, batch = image_size, 8
    model = reference.build_reference_model((size, size, 3), info.num_classes, None, reference.CORRECTED_TAPS)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    images, masks = data.list_pairs(data_dir, "train")
    void = 255 if info.ignore_index is None else info.ignore_index
    stream = reference.reference_data_generator(images, masks, batch, size)
    stream = stream.map(lambda x, y: (x, tf.where(y == void, tf.zeros_like(y), y))).repeat()
    steps = data.steps_per_epoch(len(images), batch)
    model.fit(stream, steps_per_epoch=steps, epochs=UNCAPPED_EPOCHS, callbacks=[clock], verbose=2)
    seconds = clock.elapsed()
    split = evaluate.default_split(data_dir)
    matrix = ConfusionMatrix(info.num_classes, info.ignore_index)
    for image_path, mask_path in zip(*data.list_pairs(data_dir, split)):
        mask = data.read_mask(mask_path, info)
        image = tf.image.resize(read_image(image_path)[None].astype("float32"), (size, size)) / 255.0
        scores = tf.image.resize(model.predict_on_batch(image), mask.shape[:2])  # back to the mask's own size
        matrix.update(mask[None], np.argmax(scores, axis=-1))
    scores = matrix.scores()
    return {
        "epochs": len(model.history.epoch),
        "train_seconds": seconds,
        "miou": scores.miou,
        "per_class": scores.as_dict(info.classes)["per_class_iou"],
        "split": split,
    }


def markdown(result: dict) -> str:
    lines = [
        f"Measured {result['date']} on {result['machine']}; data {result['data']}, shorter side "
        f"{result['image_size']}, from scratch, scored on each mask at its native resolution.",
        "",
    ]
    for minutes in result["minutes"]:
        rows = [r for r in result["rows"] if r["minutes"] == minutes]
        if not rows:
            continue
        classes = list(rows[0]["per_class"])
        lines += [f"**{minutes:g} minutes** ({rows[0]['split']} split)", ""]
        lines.append("| recipe | epochs | mIoU | flip | " + " | ".join(classes) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(classes))
        for row in rows:
            flip = row.get("miou_flip")
            cells = [row["name"], str(row["epochs"]), f"**{row['miou']:.3f}**", "-" if flip is None else f"{flip:.3f}"]
            cells += ["-" if row["per_class"][c] is None else f"{row['per_class'][c]:.2f}" for c in classes]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a dataset in the course layout, e.g. camvid-dev")
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=[REFERENCE, next(iter(RECIPES)), DEFAULT],
        help="names in RECIPES, or the reference",
    )
    parser.add_argument("--out", default=str(ROOT / "build"))
    parser.add_argument("--one", nargs=2, metavar=("RECIPE", "MINUTES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    data_dir, out = Path(args.data).resolve(), Path(args.out).resolve()
    unknown = [n for n in args.recipes if n != REFERENCE and n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; the recipes are: {[REFERENCE, *RECIPES]}")
    if args.one:
        name, minutes = args.one[0], float(args.one[1])
        if name == REFERENCE:
            row = run_reference(minutes, data_dir, args.image_size)
        else:
            slug = "".join(c if c.isalnum() else "-" for c in name.lower())
            row = run_recipe(name, minutes, data_dir, args.image_size, out / "quality" / f"{slug}-{minutes:g}min")
        print("ROW " + json.dumps({"name": name, "minutes": minutes, **row}), flush=True)
        return 0

    import keras
    import tensorflow as tf

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}",
        "data": str(args.data),
        "image_size": args.image_size,
        "minutes": args.minutes,
        "rows": [],
    }
    out.mkdir(parents=True, exist_ok=True)
    for minutes in args.minutes:
        for name in args.recipes:
            print(f"training for {minutes:g} min: {name}", flush=True)
            command = [sys.executable, __file__, "--data", str(data_dir), "--image-size", str(args.image_size)]
            command += ["--out", str(out), "--one", name, str(minutes)]
            row = run_row(command)
            if row is None:
                continue
            print(f"  {row['epochs']} epochs, mIoU {row['miou']:.3f}", flush=True)
            result["rows"].append(row)
            (out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")  # partial results survive
    table = markdown(result)
    (out / "quality.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
