"""Course settings: one object, read from ``DEEPLAB_*`` environment variables.

Every notebook prints these at the top, so a teacher can see at a glance what a
run used. Profiles give sensible defaults; any variable that is set wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

PROFILES = ("smoke", "full")
NAMED_DATASETS = ("synthetic", "camvid", "pets")  # or a path to a dataset in the course layout
BACKBONES = ("resnet50", "mobilenetv2")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
OUTPUT_STRIDES = (8, 16)
# class weighting -> power of the median-frequency weights (see helpers.data.median_frequency_weights)
CLASS_WEIGHTINGS = {"none": 0.0, "median": 1.0, "sqrt-median": 0.5}
STRATEGIES = ("default", "mirrored", "tpu", "multiworker")
# test-time augmentation mode -> (also the horizontal flip?, scales); cheapest first (helpers.predict)
TTA_MODES = {
    "none": (False, (1.0,)),
    "flip": (True, (1.0,)),
    "multiscale": (True, (0.75, 1.0, 1.25)),
}


def tta_passes(mode: str) -> int:
    """Forward passes per image for a test-time augmentation mode: one per scale, twice with the flip."""
    flip, scales = TTA_MODES[mode]
    return len(scales) * (2 if flip else 1)


UNCAPPED_EPOCHS = 10_000  # "until the time cap": used when DEEPLAB_TRAIN_MINUTES is set and DEEPLAB_EPOCHS is not
_YES, _NO = ("1", "yes", "true", "on"), ("0", "no", "false", "off")

# Defaults per profile. ``smoke`` is small enough for CI and a laptop CPU,
# ``full`` is a real training run for a GPU (for example Colab's).
PROFILE_DEFAULTS: dict[str, dict[str, object]] = {
    "smoke": {
        "image_size": 128,
        "batch_size": 4,
        "epochs": 12,
        "train_minutes": 4.0,
        "weights": "none",
        "backbone": "mobilenetv2",
        "dataset": "synthetic",
        "num_train": 96,
        "num_val": 24,
        "num_test": 24,
    },
    "full": {
        "image_size": 256,
        "batch_size": 16,
        "epochs": 40,
        "train_minutes": 8.0,
        "weights": "imagenet",
        "backbone": "resnet50",
        "dataset": "camvid",
        "num_train": 600,
        "num_val": 100,
        "num_test": 100,
    },
}

# The public interface: variable name -> (field, one-line documentation).
ENV_VARS: dict[str, tuple[str, str]] = {
    "DEEPLAB_PROFILE": ("profile", "smoke (tiny, CPU/CI) or full (real run, GPU); default smoke"),
    "DEEPLAB_DATASET": ("dataset", "synthetic (built-in), camvid or pets (downloaded on first use), or a path"),
    "DEEPLAB_DATA_DIR": ("data_dir", "where the dataset is (a path alone also selects it); default under data/"),
    "DEEPLAB_OUTPUT_DIR": ("output_dir", "where models, histories, metrics and figures go"),
    "DEEPLAB_IMAGE_SIZE": ("image_size", "side of the square training crop, a multiple of 16"),
    "DEEPLAB_BATCH_SIZE": ("batch_size", "images per training step"),
    "DEEPLAB_EPOCHS": ("epochs", "maximum number of epochs; unset with DEEPLAB_TRAIN_MINUTES set: the time decides"),
    "DEEPLAB_TRAIN_MINUTES": ("train_minutes", "optional cap on training wall time, in minutes"),
    "DEEPLAB_BACKBONE": ("backbone", "mobilenetv2 (smoke: fastest on a CPU) or resnet50 (full: the paper's encoder)"),
    "DEEPLAB_WEIGHTS": ("weights", "imagenet, none, or a path to a backbone weights file"),
    "DEEPLAB_SEED": ("seed", "seed for data generation, shuffling and initialisation"),
    "DEEPLAB_SEPARABLE": ("separable", "1: atrous depthwise-separable convs in ASPP and decoder (paper); 0: regular"),
    "DEEPLAB_OUTPUT_STRIDE": ("output_stride", "16 (default) or 8 (finer features, about 3x the compute)"),
    "DEEPLAB_PRECISION": ("precision", "auto, float32, mixed_bfloat16 (CPUs with bf16) or mixed_float16 (GPUs)"),
    "DEEPLAB_XLA": ("xla", "1 compiles the training step with XLA (jit_compile); default 0"),
    "DEEPLAB_STRATEGY": ("strategy", "default (one device), mirrored (all GPUs here), tpu, or multiworker (TF_CONFIG)"),
}


class SettingsError(ValueError):
    """A DEEPLAB_* variable has a value the course cannot use."""


def project_root() -> Path:
    """The course checkout if ``helpers`` is installed from one, else the working directory."""
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "pyproject.toml").is_file() and (candidate / "notebooks").is_dir():
        return candidate
    return Path.cwd()


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know; build it with :func:`load_settings`."""

    profile: str
    dataset: str
    data_dir: Path
    output_dir: Path
    image_size: int
    batch_size: int
    epochs: int
    train_minutes: float | None
    backbone: str
    weights: str
    seed: int
    separable: bool
    output_stride: int
    precision: str
    xla: bool
    strategy: str
    num_train: int
    num_val: int
    num_test: int
    dataset_is_default: bool = True  # chosen by the profile, not by the user: may fall back to the built-in data

    @property
    def data_dir_is_default(self) -> bool:
        """Whether the data is the built-in synthetic set, generated on first use."""
        return self.dataset == "synthetic"

    @property
    def backbone_weights(self) -> str | None:
        """The ``weights`` argument for Keras: ``"imagenet"``, ``None`` or a file path."""
        return None if self.weights == "none" else self.weights

    def describe(self) -> str:
        """A small table of the settings and the variable that sets each one."""
        lines = ["Course settings (change them with environment variables):"]
        for var, (name, _doc) in ENV_VARS.items():
            value = getattr(self, name)
            if name == "dataset" and self.dataset_is_default:
                value = f"{value}  (the {self.profile} profile's default)"
            lines.append(f"  {var:<22} = {value}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def _parse_int(var: str, raw: str, minimum: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(
            f"{var}={raw!r} is not a whole number. Set it to an integer, for example {var}={minimum * 4}."
        ) from None
    if value < minimum:
        raise SettingsError(f"{var}={value} is too small: it must be at least {minimum}.")
    return value


def _parse_minutes(var: str, raw: str) -> float | None:
    if raw.strip().lower() in ("", "none", "0"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(
            f"{var}={raw!r} is not a number of minutes. Use for example {var}=15, or leave it unset."
        ) from None
    if value <= 0:
        raise SettingsError(f"{var}={raw!r} must be positive (or unset for no cap).")
    return value


def _parse_flag(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in _YES + _NO:
        raise SettingsError(f"{var}={raw!r} is not a yes/no value. Use {var}=1 (on) or {var}=0 (off).")
    return value in _YES


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``env`` (default: ``os.environ``), validating every value."""
    env = os.environ if env is None else env
    get = lambda var: env.get(var) or None  # noqa: E731 - empty means unset

    profile = _choice(get, "DEEPLAB_PROFILE", "smoke", PROFILES, "is not a profile")
    defaults = PROFILE_DEFAULTS[profile]
    root = project_root()
    dataset, data_dir, dataset_is_default = _dataset_and_folder(get, profile, root)
    output_raw = get("DEEPLAB_OUTPUT_DIR")
    backbone = _choice(get, "DEEPLAB_BACKBONE", str(defaults["backbone"]), BACKBONES)
    epochs, train_minutes = _epochs_and_minutes(env, get, defaults)
    return Settings(
        profile=profile,
        dataset=dataset,
        data_dir=data_dir,
        output_dir=_folder(output_raw, root) if output_raw else root / "build" / "output",
        image_size=_image_size(get, int(defaults["image_size"])),
        batch_size=_parse_int("DEEPLAB_BATCH_SIZE", get("DEEPLAB_BATCH_SIZE") or str(defaults["batch_size"]), 1),
        epochs=epochs,
        train_minutes=train_minutes,
        backbone=backbone,
        weights=_weights(get, str(defaults["weights"])),
        seed=_parse_int("DEEPLAB_SEED", get("DEEPLAB_SEED") or "42", 0),
        separable=_parse_flag("DEEPLAB_SEPARABLE", get("DEEPLAB_SEPARABLE") or "1"),
        output_stride=_output_stride(get, backbone),
        precision=_choice(get, "DEEPLAB_PRECISION", "auto", PRECISIONS),
        xla=_parse_flag("DEEPLAB_XLA", get("DEEPLAB_XLA") or "0"),
        strategy=_choice(get, "DEEPLAB_STRATEGY", "default", STRATEGIES),
        num_train=int(defaults["num_train"]),
        num_val=int(defaults["num_val"]),
        num_test=int(defaults["num_test"]),
        dataset_is_default=dataset_is_default,
    )


def _choice(get, var: str, default: str, allowed, problem: str = "is not supported") -> str:
    """A setting that must be one of ``allowed`` (case and surrounding spaces do not matter)."""
    value = (get(var) or default).strip().lower()
    if value not in allowed:
        raise SettingsError(f"{var}={value!r} {problem}; use one of {', '.join(allowed)}.")
    return value


def _image_size(get, default: int) -> int:
    if not get("DEEPLAB_IMAGE_SIZE"):
        return default
    image_size = _parse_int("DEEPLAB_IMAGE_SIZE", get("DEEPLAB_IMAGE_SIZE"), 32)
    if image_size % 16:
        raise SettingsError(
            f"DEEPLAB_IMAGE_SIZE={image_size} is not a multiple of 16, which DeepLabV3+ needs "
            f"(its encoder halves the size four times). Try {max(32, round(image_size / 16) * 16)}."
        )
    return image_size


def _epochs_and_minutes(env, get, defaults: dict) -> tuple[int, float | None]:
    """A time budget of your own means the clock, not the profile's epoch count, ends training."""
    epochs, train_minutes = int(defaults["epochs"]), defaults["train_minutes"]
    if "DEEPLAB_TRAIN_MINUTES" in env:
        train_minutes = _parse_minutes("DEEPLAB_TRAIN_MINUTES", env["DEEPLAB_TRAIN_MINUTES"])
        epochs = UNCAPPED_EPOCHS if train_minutes else epochs
    if get("DEEPLAB_EPOCHS"):
        epochs = _parse_int("DEEPLAB_EPOCHS", get("DEEPLAB_EPOCHS"), 1)
    return epochs, train_minutes


def _weights(get, default: str) -> str:
    weights = (get("DEEPLAB_WEIGHTS") or default).strip()
    if weights.lower() in ("imagenet", "none"):
        return weights.lower()
    if not Path(weights).expanduser().is_file():
        raise SettingsError(
            f"DEEPLAB_WEIGHTS={weights!r} is neither 'imagenet', 'none' nor an existing file. "
            "Give the path of a backbone weights file (.h5 or .weights.h5), or use 'none' to train from scratch."
        )
    return weights


def _output_stride(get, backbone: str) -> int:
    output_stride = _parse_int("DEEPLAB_OUTPUT_STRIDE", get("DEEPLAB_OUTPUT_STRIDE") or "16", 1)
    if output_stride not in OUTPUT_STRIDES:
        raise SettingsError(f"DEEPLAB_OUTPUT_STRIDE={output_stride} is not supported; use 16 or 8.")
    if output_stride == 8 and backbone == "mobilenetv2":
        raise SettingsError("DEEPLAB_OUTPUT_STRIDE=8 needs DEEPLAB_BACKBONE=resnet50 (MobileNetV2 is tapped at 16).")
    return output_stride


def _folder(raw: str, root: Path) -> Path:
    """A folder setting; a relative path is taken from the course checkout (``root``), not the working
    directory, so a notebook (which runs in ``notebooks/``) and a terminal at the top agree on it."""
    path = Path(raw).expanduser()
    return path if path.is_absolute() else root / path


def _dataset_and_folder(get, profile: str, root: Path) -> tuple[str, Path, bool]:
    """``DEEPLAB_DATASET`` (a name or a path) and ``DEEPLAB_DATA_DIR``: which dataset, and where it lives.

    A path in either variable selects a dataset of your own; a name keeps its data in
    ``DEEPLAB_DATA_DIR`` if set, else under ``data/``.
    """
    named, folder = get("DEEPLAB_DATASET"), get("DEEPLAB_DATA_DIR")
    folder = _folder(folder, root) if folder else None
    if named is None:
        if folder is not None:
            return "path", folder, False
        named = str(PROFILE_DEFAULTS[profile]["dataset"])
        default = True
    else:
        default = False
    if named.strip().lower() in NAMED_DATASETS:
        named = named.strip().lower()
        suffix = f"-{profile}" if named == "synthetic" else ""
        return named, folder or root / "data" / f"{named}{suffix}", default
    path = _folder(named, root)
    if not path.is_dir():
        raise SettingsError(
            f"DEEPLAB_DATASET={named!r} is neither {', '.join(NAMED_DATASETS)} nor an existing folder. "
            "Give the path of a dataset in the course layout (see data/README.md), or one of the names."
        )
    if folder is not None and folder.resolve() != path.resolve():
        raise SettingsError(
            f"DEEPLAB_DATASET={named!r} and DEEPLAB_DATA_DIR={str(folder)!r} name two different folders: unset one."
        )
    return "path", path, False
