"""``python -m helpers``: the course's steps from a terminal.

Each command reads the same DEEPLAB_* settings as the notebooks; flags override them.
``evaluate`` and ``predict`` also average each prediction with its mirror image's by default
(``--tta flip``), where the notebooks' Python calls make one pass.
"""

from __future__ import annotations

import argparse
import os
import sys

from helpers.config import CLASS_WEIGHTINGS, TTA_MODES, tta_passes

FLAG_TO_ENV = {
    "dataset": "DEEPLAB_DATASET",
    "data_dir": "DEEPLAB_DATA_DIR",
    "output_dir": "DEEPLAB_OUTPUT_DIR",
    "image_size": "DEEPLAB_IMAGE_SIZE",
    "batch_size": "DEEPLAB_BATCH_SIZE",
    "epochs": "DEEPLAB_EPOCHS",
    "train_minutes": "DEEPLAB_TRAIN_MINUTES",
    "backbone": "DEEPLAB_BACKBONE",
    "weights": "DEEPLAB_WEIGHTS",
    "seed": "DEEPLAB_SEED",
    "profile": "DEEPLAB_PROFILE",
    "separable": "DEEPLAB_SEPARABLE",
    "output_stride": "DEEPLAB_OUTPUT_STRIDE",
    "precision": "DEEPLAB_PRECISION",
    "xla": "DEEPLAB_XLA",
    "strategy": "DEEPLAB_STRATEGY",
}


def _add_setting_flags(parser: argparse.ArgumentParser, names) -> None:
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"overrides {FLAG_TO_ENV[name]}")


def _settings(args):
    from helpers.config import load_settings

    env = dict(os.environ)
    for name, var in FLAG_TO_ENV.items():
        value = getattr(args, name, None)
        if value is not None:
            env[var] = str(value)
    return load_settings(env)


def cmd_info(args) -> int:
    print(_settings(args).describe())
    return 0


def cmd_generate_data(args) -> int:
    from helpers import synthetic

    settings = _settings(args)
    out = synthetic.generate_dataset(
        args.out or settings.data_dir,
        args.num_train if args.num_train is not None else settings.num_train,
        args.num_val if args.num_val is not None else settings.num_val,
        args.num_test if args.num_test is not None else settings.num_test,
        seed=settings.seed,
        overwrite=args.overwrite,
    )
    print(f"Wrote the synthetic dataset to {out}")
    return 0


def cmd_check_data(args) -> int:
    from helpers.check import check_dataset

    settings = None if args.data_dir_arg else _settings(args)
    report = check_dataset(args.data_dir_arg or settings.data_dir)
    print(report.format())
    return 0 if report.ok else 1


def cmd_convert_camvid(args) -> int:
    from helpers.datasets import convert_camvid

    print(f"Wrote CamVid in the course layout to {convert_camvid(args.source, args.target)}")
    return 0


def cmd_prepare(args) -> int:
    from helpers import datasets

    prepare = {"camvid": datasets.prepare_camvid, "pets": datasets.prepare_pets}[args.dataset]
    print(f"Wrote {args.dataset} in the course layout to {prepare(args.target)}")
    return 0


def default_verbosity() -> int:
    """Keras's progress bar on a terminal; one line per epoch into a file or pipe, where ``\\r`` would pile up."""
    return 1 if sys.stdout.isatty() else 2


def cmd_train(args) -> int:
    from helpers.train import train

    settings = _settings(args)
    print(settings.describe())
    verbose = default_verbosity() if args.verbose is None else args.verbose
    result = train(
        settings,
        class_weighting=args.class_weighting,
        learning_rate=args.learning_rate,
        verbose=verbose,
        resume=not args.restart,
    )
    reason = "wall-time cap reached" if result.stopped_by_time else "done"
    print(
        f"Trained {result.epochs_run} epoch(s) in {result.seconds:.0f} s ({reason}); "
        f"best epoch {None if result.best_epoch is None else result.best_epoch + 1}.\n"
        f"Model: {result.model_path}\nHistory: {result.history_path}"
    )
    return 0


def cmd_evaluate(args) -> int:
    from helpers.evaluate import evaluate, metrics_path

    settings = _settings(args)
    result = evaluate(settings, split=args.split, tta=args.tta)
    scores = result.scores
    print(f"{result.split}, tta {args.tta}: mIoU {scores.miou:.4f}, pixel accuracy {scores.pixel_accuracy:.4f}")
    for name, iou in zip(result.classes, result.scores.per_class_iou):
        print(f"  {name:<14} {'absent' if iou != iou else f'{iou:.4f}'}")
    print(f"Metrics: {metrics_path(settings)}")
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from helpers import export

    settings = _settings(args)
    model = _load_trained_model(args, settings)
    target = Path(args.target)
    saved = export.export_saved_model(model, target / "saved_model")
    plain = export.export_tflite(saved, target / "model.tflite")
    small = export.export_tflite(saved, target / "model-int8.tflite", quantize=True)
    size = sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())
    print(f"SavedModel  {saved}  {size / 1e6:.1f} MB (uint8 images of any size -> uint8 masks)")
    for path in (plain, small):
        print(f"TFLite      {path}  {path.stat().st_size / 1e6:.1f} MB")
    return 0


def _load_trained_model(args, settings):
    """``--model``, or the output directory's model (predicting and exporting need no dataset)."""
    from helpers import artifacts

    return artifacts.load_model(args.model or artifacts.output_paths(settings.output_dir)["model"])


def cmd_predict(args) -> int:
    from helpers.predict import predict_folder

    settings = _settings(args)
    model = _load_trained_model(args, settings)
    size = None if args.native_size else settings.image_size
    report = predict_folder(model, args.input, args.output, size, tta=args.tta)
    print(report.format().replace("mask(s).", f"mask(s) to {args.output}.", 1))
    return 0 if report.written else 1


# The commands average each image's prediction with its mirror image's by default: two forward passes,
# and a gain of val mIoU in each of the course's current runs (measured in README, "Your own data").
CLI_TTA = "flip"


def _views(mode: str) -> str:
    """How a test-time augmentation mode's views read in ``--help``, e.g. "2 passes (mirrored too)"."""
    flip, scales = TTA_MODES[mode]
    passes = tta_passes(mode)
    where = f" at scales {', '.join(f'{s:g}' for s in scales)}" if len(scales) > 1 else ""
    return f"{passes} pass{'es' if passes > 1 else ''}{' (mirrored too)' if flip else ''}{where}"


def _add_tta_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tta",
        default=CLI_TTA,
        choices=list(TTA_MODES),
        help=f"test-time augmentation, the mean of the predictions of several views (default {CLI_TTA}): "
        + "; ".join(f"{mode}: {_views(mode)}" for mode in TTA_MODES),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    everything = list(FLAG_TO_ENV)

    p = sub.add_parser("info", help="print the settings in force")
    _add_setting_flags(p, everything)
    p.set_defaults(func=cmd_info)
    _add_data_commands(sub)
    _add_model_commands(sub, everything)
    return parser


def _add_data_commands(sub) -> None:
    p = sub.add_parser("generate-data", help="write the built-in synthetic dataset as PNG files")
    p.add_argument("--out", help="target folder (default: the settings' data directory)")
    p.add_argument("--num-train", type=int)
    p.add_argument("--num-val", type=int)
    p.add_argument("--num-test", type=int)
    p.add_argument("--overwrite", action="store_true", help="replace an existing synthetic dataset")
    _add_setting_flags(p, ["data_dir", "seed", "profile"])
    p.set_defaults(func=cmd_generate_data)

    p = sub.add_parser("check-data", help="read every file of a dataset once and report every problem")
    p.add_argument("data_dir_arg", nargs="?", metavar="DIR", help="dataset folder (default: the settings' data dir)")
    _add_setting_flags(p, ["profile"])
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser(
        "convert-camvid", help="convert a local CamVid copy (SegNet tutorial layout) to the course layout"
    )
    p.add_argument("source", help="the CamVid folder with train/, trainannot/, val/, valannot/, test/, testannot/")
    p.add_argument("target", help="new dataset folder")
    p.set_defaults(func=cmd_convert_camvid)

    p = sub.add_parser("prepare-data", help="download a public dataset and convert it (needs internet)")
    p.add_argument("dataset", choices=["camvid", "pets"])
    p.add_argument("target", help="new dataset folder")
    p.set_defaults(func=cmd_prepare)


def _add_model_commands(sub, everything: list[str]) -> None:
    p = sub.add_parser("train", help="train DeepLabV3+ and write model.keras and history.json")
    p.add_argument("--class-weighting", choices=list(CLASS_WEIGHTINGS), default="sqrt-median")
    p.add_argument(
        "--learning-rate", type=float, help="peak learning rate (default: 4e-3 from scratch, 1e-3 pretrained)"
    )
    p.add_argument(
        "--verbose",
        type=int,
        choices=[0, 1, 2],
        help="Keras progress: 0 silent, 1 bar, 2 a line per epoch (default: 1 on a terminal, else 2)",
    )
    p.add_argument("--restart", action="store_true", help="ignore an interrupted run's state and start from scratch")
    _add_setting_flags(p, everything)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score the trained model and write metrics.json")
    _add_tta_flag(p)
    p.add_argument(
        "--split",
        default=None,
        choices=["train", "val", "test"],
        help="default: test, or val if there is no test split",
    )
    _add_setting_flags(p, everything)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="turn a folder of images into a folder of PNG masks")
    p.add_argument("input", help="folder of .png/.jpg images")
    p.add_argument("output", help="folder for the masks (created if needed)")
    p.add_argument("--model", help="a .keras file (default: <output dir>/model.keras)")
    p.add_argument("--native-size", action="store_true", help="feed images at their own size, not resized")
    _add_tta_flag(p)
    _add_setting_flags(p, everything)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a SavedModel and TensorFlow Lite files (float32 and 8-bit weights)")
    p.add_argument("target", help="folder for saved_model/, model.tflite and model-int8.tflite")
    p.add_argument("--model", help="a .keras file (default: <output dir>/model.keras)")
    _add_setting_flags(p, everything)
    p.set_defaults(func=cmd_export)


def main(argv=None) -> int:
    from helpers.backbones import WeightsUnavailableError
    from helpers.config import SettingsError
    from helpers.data import DatasetError
    from helpers.datasets import DownloadError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        SettingsError,
        DatasetError,
        DownloadError,
        WeightsUnavailableError,
        FileNotFoundError,
        FileExistsError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
