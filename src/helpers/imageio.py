"""Reading images and masks from disk: one reader for each, shared by check-data, training, evaluation and prediction.

Images come as learners have them: phone photos with an EXIF rotation, grayscale scans,
PNGs with transparency or a palette, 16-bit images. Each becomes upright 8-bit RGB.

Masks are class indices, and their file formats hide traps: a palette ("P") PNG, the
format of PASCAL VOC, stores indices that TensorFlow's PNG decoder silently expands to
colours; a 1-bit PNG's label 1 comes out of the same decoder as 255. PIL reads both as
the indices they are, so every part of the course reads masks through :func:`read_mask`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageReadError(ValueError):
    """A file that cannot be used as an input image; the message names it and says why."""


class MaskError(ValueError):
    """A mask file the course cannot turn into class indices; the message names it and says how to fix it."""


def _open(path: Path, error: type[ValueError]) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise error(f"{path}: no such file.") from None
    except UnidentifiedImageError:
        raise error(f"{path} is not an image file (PIL cannot identify it).") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise error(f"{path} could not be decoded ({err}); the file may be truncated or corrupt.") from None


def read_image(path: str | Path) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB, upright (EXIF orientation applied)."""
    path = Path(path)
    image = ImageOps.exif_transpose(_open(path, ImageReadError))
    return to_rgb8(image, path)


def to_rgb8(image: Image.Image, name: str | Path = "image") -> np.ndarray:
    """A PIL image of any common mode as ``(H, W, 3)`` uint8 RGB."""
    if image.mode in SIXTEEN_BIT_MODES + ("F",):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        if image.mode == "F":
            top = max(float(values.max()), 1e-12)
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels become white, as most viewers show them
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    rgb = np.asarray(image.convert("RGB"))
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or min(rgb.shape[:2]) < 1:
        raise ImageReadError(f"{name}: could not convert mode {image.mode} with size {image.size} to RGB.")
    return rgb


def read_mask(path: str | Path, colors=None, ignore_color=None, ignore_index: int | None = None) -> np.ndarray:
    """A mask file as ``(H, W)`` uint8 class indices.

    Single-channel 8-bit (mode L), palette (mode P: the stored indices, not the colours)
    and 1-bit (0/1) PNGs are read as they are. 16-bit masks are read when every value fits
    in 0-255, else refused. Colour-coded masks need ``colors`` (one RGB triple per class,
    from ``classes.json``); a colour not listed raises :class:`MaskError` naming it.
    """
    path = Path(path)
    return mask_indices(_open(path, MaskError), path, colors, ignore_color, ignore_index)


def mask_indices(mask: Image.Image, path: str | Path, colors=None, ignore_color=None, ignore_index=None) -> np.ndarray:
    """The class indices of an opened mask (see :func:`read_mask`); ``path`` names it in errors."""
    if colors is not None:
        return _colours_to_indices(path, np.asarray(mask.convert("RGB")), colors, ignore_color, ignore_index)
    if mask.mode in ("L", "P", "1"):
        return np.asarray(mask).astype(np.uint8)  # mode 1 gives booleans: 0/1
    if mask.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(mask)
        if values.min() < 0 or values.max() > 255:
            raise MaskError(
                f"{path} is a 16-bit mask with label values up to {int(values.max())}; the course reads class "
                "indices 0-255. Map the labels to 0..num_classes-1 and save the mask as 8-bit PNG (mode L or P)."
            )
        return values.astype(np.uint8)
    raise MaskError(
        f"{path} has {len(mask.getbands())} channels (mode {mask.mode}) where one channel of class indices was "
        'expected. Convert its colours to class indices, or list them as "colors" in classes.json '
        "(see data/README.md)."
    )


def colour_keys(colors, ignore_color=None, ignore_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Keys ``r * 65536 + g * 256 + b`` of every known colour, and the label each one maps to."""
    pairs = [(tuple(c), i) for i, c in enumerate(colors)]
    if ignore_color is not None:
        pairs.append((tuple(ignore_color), ignore_index))
    keys = np.array([r * 65536 + g * 256 + b for (r, g, b), _ in pairs], np.int64)
    return keys, np.array([label for _, label in pairs], np.int64)


def _colours_to_indices(path: Path, rgb: np.ndarray, colors, ignore_color, ignore_index) -> np.ndarray:
    keys, labels = colour_keys(colors, ignore_color, ignore_index)
    rgb = rgb.astype(np.int64)
    key = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
    found, inverse = np.unique(key, return_inverse=True)
    lookup = dict(zip(keys.tolist(), labels.tolist()))
    unknown = [int(k) for k in found if int(k) not in lookup]
    if unknown:
        shown = ", ".join(str((k // 65536, k // 256 % 256, k % 256)) for k in unknown[:3])
        raise MaskError(
            f'{path} has colour(s) {shown} that are not in classes.json "colors". '
            'Add them to "colors" (or as "ignore_color"), or fix the mask.'
        )
    return np.array([lookup[int(k)] for k in found], np.uint8)[inverse.reshape(key.shape)]
