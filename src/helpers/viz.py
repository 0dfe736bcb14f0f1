"""Pictures of segmentation: fixed palettes, overlays with a legend, error maps, plots.

Colours are fixed per dataset so that "car" is the same blue in every notebook.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

IGNORE_COLOUR = (255, 255, 255)

# Known datasets get the colours their users know (Cityscapes-style for street scenes).
KNOWN_PALETTES: dict[tuple[str, ...], list[tuple[int, int, int]]] = {
    ("background", "road", "car", "pedestrian", "building"): [
        (0, 0, 0),
        (128, 64, 128),
        (0, 0, 142),
        (220, 20, 60),
        (70, 70, 70),
    ],
}


def _register_known_palettes() -> None:
    from helpers.datasets import CAMVID_CLASSES, CAMVID_COLOURS

    KNOWN_PALETTES[tuple(CAMVID_CLASSES)] = CAMVID_COLOURS


_register_known_palettes()


def make_palette(classes: Sequence[str]) -> np.ndarray:
    """A ``(256, 3)`` uint8 lookup table: row ``i`` is the colour of label ``i``.

    Known class lists get their usual colours; others get distinct colours from
    matplotlib's tab20 cycle. Labels past the classes (the ignore index) are white.
    """
    table = np.tile(np.array(IGNORE_COLOUR, np.uint8), (256, 1))
    known = KNOWN_PALETTES.get(tuple(classes))
    if known is not None:
        table[: len(known)] = known
    else:
        cmap = plt.get_cmap("tab20")
        for i in range(len(classes)):
            table[i] = (np.array(cmap(i % 20)[:3]) * 255).astype(np.uint8)
    return table


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class indices ``(H, W)`` to an RGB image ``(H, W, 3)``."""
    return palette[np.asarray(mask, np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured mask over the image; ``alpha=0`` is the image, ``1`` the mask."""
    image = np.asarray(image, np.float32)
    blended = (1 - alpha) * image + alpha * colorize(mask, palette).astype(np.float32)
    return np.clip(blended, 0, 255).astype(np.uint8)


def legend_handles(classes: Sequence[str], palette: np.ndarray, ignore_index: int | None = None) -> list[Patch]:
    handles = [Patch(facecolor=palette[i] / 255, edgecolor="grey", label=name) for i, name in enumerate(classes)]
    if ignore_index is not None:
        handles.append(Patch(facecolor=palette[ignore_index] / 255, edgecolor="grey", label="ignored"))
    return handles


LEGEND_COLUMNS = 6


def add_legend(fig, classes: Sequence[str], palette: np.ndarray, ignore_index: int | None = None) -> None:
    """A legend under the figure, six entries a row (see :func:`legend_height` for the room it needs)."""
    handles = legend_handles(classes, palette, ignore_index)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), LEGEND_COLUMNS), frameon=False)


def legend_height(fig, entries: int) -> float:
    """The share of ``fig``'s height that a legend of ``entries`` rows of six needs at the bottom."""
    rows = -(-entries // LEGEND_COLUMNS)
    return min(0.4, 0.02 + 0.3 * rows / fig.get_figheight())


def error_map(true_mask: np.ndarray, pred_mask: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """RGB: green where the prediction is right, red where wrong, grey where ignored."""
    out = np.where((true_mask == pred_mask)[..., None], (40, 170, 60), (215, 40, 40)).astype(np.uint8)
    if ignore_index is not None:
        out[true_mask == ignore_index] = (150, 150, 150)
    return out


def plot_panels(
    image: np.ndarray,
    true_mask: np.ndarray | None,
    pred_mask: np.ndarray | None,
    classes: Sequence[str],
    palette: np.ndarray | None = None,
    ignore_index: int | None = None,
    alpha: float = 0.6,
    title: str | None = None,
):
    """Image, ground truth, prediction and error map side by side, with a legend."""
    palette = make_palette(classes) if palette is None else palette
    panels = [("image", np.asarray(image, np.uint8))]
    if true_mask is not None:
        panels.append(("ground truth", overlay(image, true_mask, palette, alpha)))
    if pred_mask is not None:
        panels.append(("prediction", overlay(image, pred_mask, palette, alpha)))
    if true_mask is not None and pred_mask is not None:
        labelled = true_mask != (ignore_index if ignore_index is not None else -1)
        wrong = np.sum((true_mask != pred_mask) & labelled) / max(np.sum(labelled), 1)
        panels.append((f"errors ({wrong:.1%} of labelled pixels)", error_map(true_mask, pred_mask, ignore_index)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, picture) in zip(axes[0], panels):
        ax.imshow(picture)
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    add_legend(fig, classes, palette, ignore_index)
    fig.tight_layout(rect=(0, legend_height(fig, len(classes) + (ignore_index is not None)), 1, 1))
    return fig


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], normalize: bool = True, ax=None):
    """Rows are true classes, columns predictions; normalised per true class by default."""
    matrix = np.asarray(matrix, np.float64)
    shown = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    if ax is None:
        _, ax = plt.subplots(figsize=(1 + 0.8 * len(classes), 0.8 + 0.7 * len(classes)))
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for (i, j), value in np.ndenumerate(shown):
        text = f"{value:.2f}" if normalize else f"{int(value)}"
        ax.text(j, i, text, ha="center", va="center", color="white" if value > 0.5 * shown.max() else "black")
    ax.set_title("confusion matrix" + (" (each row sums to 1)" if normalize else ""))
    ax.figure.tight_layout()
    return ax


def plot_class_bars(values, classes: Sequence[str], palette: np.ndarray | None = None, ylabel: str = "", ax=None):
    """One bar per class in the class's colour (frequencies, IoU, ...); NaN bars are marked absent."""
    palette = make_palette(classes) if palette is None else palette
    values = np.asarray(values, np.float64)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.5 + 0.9 * len(classes), 3))
    colours = [palette[i] / 255 for i in range(len(classes))]
    ax.bar(range(len(classes)), np.nan_to_num(values), color=colours, edgecolor="grey")
    for i, v in enumerate(values):
        label = "absent" if np.isnan(v) else f"{v:.2f}" if v == 0 or abs(v) >= 0.01 else f"{v:.1g}"
        ax.text(i, 0 if np.isnan(v) else v, label, ha="center", va="bottom")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.figure.tight_layout()
    return ax


def plot_history(history: dict[str, list[float]], keys: Sequence[str] = ("loss", "miou")):
    """Learning curves: training and validation side by side for each key."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            if prefix + key in history:
                values = history[prefix + key]
                ax.plot(range(1, len(values) + 1), values, style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    return fig
