"""Small things every notebook does: set up, print the settings, show a figure, find the next lesson."""

from __future__ import annotations

import importlib.util

from helpers.config import Settings, load_settings

COURSE_REPO = "deeplab-course/deeplab-course"  # GitHub owner/name used by the Colab badges
NOTEBOOKS = [
    "01_data_pipeline",
    "02_aspp_walkthrough",
    "03_model",
    "04_training",
    "05_evaluation",
    "06_prediction_visualisation",
    "07_scaling_up",
]


def colab_url(notebook: str, branch: str = "main") -> str:
    return f"https://colab.research.google.com/github/{COURSE_REPO}/blob/{branch}/notebooks/{notebook}.ipynb"


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

        print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}. {hardware_note(settings)}")
    return settings


HEADLESS_NOTE = "Explorer skipped (headless run, or no ipywidgets): the static figure above shows the same view."
NO_WIDGETS_NOTE = (
    "ipywidgets is not installed, so the interactive explorers are skipped; each static figure shows the same "
    "view (pip install ipywidgets to get them)."
)


def optional_widgets():
    """The ``ipywidgets`` module, or ``None`` (after one sentence saying so) when it is not installed."""
    try:
        import ipywidgets
    except ImportError:
        print(NO_WIDGETS_NOTE)
        return None
    return ipywidgets


def hardware_note(settings: Settings) -> str:
    """One line on what this run will compute with, and a warning if it does not fit the profile."""
    import tensorflow as tf

    from helpers.precision import resolve_precision

    gpus = tf.config.list_physical_devices("GPU")
    precision = resolve_precision(settings.precision, settings.backbone)
    device = f"{len(gpus)} GPU(s)" if gpus else "no GPU, so the CPU does the work"
    note = f"Compute: {device}; precision {precision} (DEEPLAB_PRECISION={settings.precision})."
    if not gpus and settings.profile == "full":
        note += (
            " The full profile is sized for a GPU: on this CPU it will be slow. "
            "Use DEEPLAB_PROFILE=smoke, or a Colab GPU runtime (Runtime > Change runtime type)."
        )
    return note


def live_frontend() -> bool:
    """False when no person is watching: ``DEEPLAB_HEADLESS=1`` (``make run``, ``make test``, CI) or nbclient.

    Explorer cells build their widgets only in a live notebook. Headless, an
    ``interactive_output`` cell can leave nbclient waiting forever for the cell to
    finish (jupyter/nbclient#312), and nobody could move its sliders anyway.
    """
    import os

    if os.environ.get("DEEPLAB_HEADLESS") == "1":
        return False
    if importlib.util.find_spec("ipywidgets") is None:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    return getattr(shell.history_manager, "hist_file", None) != ":memory:"  # nbclient's kernels use :memory:
