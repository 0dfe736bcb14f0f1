"""Helpers for the DeepLabV3+ course: one module per idea.

``config`` settings, ``synthetic`` built-in data, ``data`` layout and tf.data
pipeline, ``model`` the DeepLabV3+ architecture (ASPP, decoder), ``backbones`` the
encoders it taps, ``kernels`` faster kernels for the same maths, ``precision`` number
formats, ``metrics`` mIoU, ``train`` fitting, ``callbacks`` what fitting watches,
``evaluate``, ``predict``, ``viz`` pictures, ``artifacts`` files a run writes,
``distribute`` several devices, ``reference`` the reference tutorial's code, kept for comparison.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's start-up chatter

from helpers.logs import native_stderr_hidden  # noqa: E402

try:
    with native_stderr_hidden():
        import tensorflow as _tf  # noqa: F401
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "The course needs TensorFlow with Keras 3. On Colab it is preinstalled; elsewhere run "
        "`pip install 'deeplab-course[cpu]'` (CPU) or `pip install 'deeplab-course[gpu]'`."
    ) from _err

from helpers import model as _model  # noqa: E402,F401 - registers custom layers for load_model
from helpers.config import Settings, load_settings  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Settings", "load_settings", "__version__"]
