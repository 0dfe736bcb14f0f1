"""Small things every notebook does: set up, print the settings, show a figure, find the next lesson."""

from __future__ import annotations

import sys

from helpers.config import Settings, load_settings

COURSE_REPO = "deeplab-course/deeplab-course"  # GitHub owner/name used by the Colab badges
NOTEBOOKS = [
    "01_data_pipeline",
    "02_aspp_walkthrough",
    "03_model",
    "04_training",
    "05_evaluation",
    "06_prediction_visualisation",
]


def colab_url(notebook: str, branch: str = "main") -> str:
    return f"https://colab.research.google.com/github/{COURSE_REPO}/blob/{branch}/notebooks/{notebook}.ipynb"


def on_colab() -> bool:
    return "google.colab" in sys.modules


def setup(verbose: bool = True) -> Settings:
    """Seed everything, set readable figure defaults, and print the settings in force."""
    import keras
    import matplotlib.pyplot as plt

    settings = load_settings()
    keras.utils.set_random_seed(settings.seed)
    plt.rcParams.update({"figure.dpi": 90, "axes.titlesize": 10, "figure.max_open_warning": 0})
    if verbose:
        print(settings.describe())
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {len(gpus)} GPU(s) visible")
    return settings


HEADLESS_NOTE = "Headless run: the explorer needs a live notebook; the static figure above shows the same view."


def live_frontend() -> bool:
    """False when no person is watching: ``DEEPLAB_HEADLESS=1`` (``make run``, ``make test``, CI) or nbclient.

    Explorer cells build their widgets only in a live notebook. Headless, an
    ``interactive_output`` cell can leave nbclient waiting forever for the cell to
    finish (jupyter/nbclient#312), and nobody could move its sliders anyway.
    """
    import os

    if os.environ.get("DEEPLAB_HEADLESS") == "1":
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    return getattr(shell.history_manager, "hist_file", None) != ":memory:"  # nbclient's kernels use :memory:
