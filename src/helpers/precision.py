"""Which number format the model computes in: float32, or 16-bit maths with float32 weights.

Mixed precision pays only on hardware with 16-bit units: tensor-core GPUs (float16) and
CPUs with AVX512-BF16 or AMX (bfloat16), and on a CPU for a model whose work is mostly dense
convs (MobileNetV2 measured slower in bfloat16 on an AMX Xeon). Elsewhere it is slower than
float32, so ``"auto"`` picks per machine and backbone (README, "Speed", has the measured numbers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

from helpers.config import PRECISIONS


def cpu_has_bfloat16() -> bool:
    """True on x86 CPUs whose flags list native bfloat16 maths (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:  # not Linux: do not guess
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Backbones made mostly of dense convs, which bfloat16 matrix units speed up on a CPU. MobileNetV2's
# depthwise convs and narrow 1x1 convs gain little from them and pay for the casts around every layer:
# on an Intel Xeon with AMX it trained about 1.2x faster in float32 (README, "Speed").
CPU_BFLOAT16_BACKBONES = ("resnet50",)


def auto_precision(backbone: str) -> str:
    """The fastest safe precision here for ``backbone``.

    float16 on GPUs with tensor cores; bfloat16 on CPUs with bf16 units for the backbones in
    ``CPU_BFLOAT16_BACKBONES``; float32 everywhere else: older GPUs and CPUs and Apple silicon,
    where 16-bit maths is emulated, and MobileNetV2 on a CPU, measured faster in float32.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        return "mixed_float16" if tuple(capability) >= (7, 0) else "float32"
    if cpu_has_bfloat16() and backbone in CPU_BFLOAT16_BACKBONES:
        return "mixed_bfloat16"
    return "float32"


def resolve_precision(precision: str | None, backbone: str) -> str:
    """``"auto"``/``None`` becomes :func:`auto_precision` for ``backbone``; anything else must be in ``PRECISIONS``."""
    precision = (precision or "auto").strip().lower()
    if precision == "auto":
        return auto_precision(backbone)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; use one of {', '.join(PRECISIONS)}.")
    return precision


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under Keras dtype policy ``name``, then restore the previous global policy."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
