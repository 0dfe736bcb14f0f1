"""The dataset layout and the tf.data input pipeline.

Layout::

    DATA_DIR/classes.json            {"classes": [...], "ignore_index": 255 or null}
    DATA_DIR/<split>/images/<stem>.png|.jpg
    DATA_DIR/<split>/masks/<stem>.png   single channel, one class index per pixel

Images are resized bilinearly, masks with nearest neighbour (bilinear would
invent labels between two classes). Training adds joint image/mask augmentation
and shuffles; every split is cached after decoding and prefetched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_SUFFIX = ".png"


class DatasetError(ValueError):
    """The dataset on disk does not follow the course layout."""


@dataclass(frozen=True)
class DatasetInfo:
    """What ``classes.json`` says: class names, in index order, and the ignore index."""

    classes: tuple[str, ...]
    ignore_index: int | None = None
    colors: tuple[tuple[int, int, int], ...] | None = None  # colour-coded masks: one RGB colour per class
    ignore_color: tuple[int, int, int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def pad_label(self) -> int | None:
        """Label for pixels that augmentation invents (padding): the ignore index, if any."""
        return self.ignore_index


def read_dataset_info(data_dir: str | Path) -> DatasetInfo:
    """Read and validate ``DATA_DIR/classes.json``."""
    path = Path(data_dir) / "classes.json"
    if not path.is_file():
        raise DatasetError(
            f"{path} is missing. Every dataset needs a classes.json such as "
            '{"classes": ["background", "road"], "ignore_index": 255}; see data/README.md.'
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON ({err}). Fix the file; see data/README.md.") from None
    classes = raw.get("classes") if isinstance(raw, dict) else None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f'{path}: "classes" must be a non-empty list of class names.')
    if len(set(classes)) != len(classes):
        raise DatasetError(f'{path}: "classes" contains a name twice.')
    ignore = raw.get("ignore_index")
    if ignore is not None and (not isinstance(ignore, int) or isinstance(ignore, bool) or not 0 <= ignore <= 255):
        raise DatasetError(f'{path}: "ignore_index" must be an integer from 0 to 255, or null.')
    if ignore is not None and ignore < len(classes):
        raise DatasetError(
            f'{path}: "ignore_index" {ignore} is also the index of class {classes[ignore]!r}. '
            "Use a value outside 0..num_classes-1, such as 255."
        )
    if len(classes) > 255:
        raise DatasetError(f"{path}: at most 255 classes fit in an 8-bit mask.")
    colors, ignore_color = _read_colors(path, raw, classes, ignore)
    return DatasetInfo(tuple(classes), ignore, colors, ignore_color)


def _rgb(value) -> tuple[int, int, int] | None:
    ok = isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value)
    return tuple(value) if ok else None


def _read_colors(path: Path, raw: dict, classes: list, ignore: int | None):
    """The optional ``colors`` (one ``[r, g, b]`` per class) and ``ignore_color`` of classes.json."""
    if "colors" not in raw:
        return None, None
    colors = raw["colors"]
    if not isinstance(colors, list) or len(colors) != len(classes) or any(_rgb(c) is None for c in colors):
        raise DatasetError(f'{path}: "colors" must be a list of {len(classes)} [r, g, b] triples, one per class.')
    colors = tuple(_rgb(c) for c in colors)
    ignore_color = raw.get("ignore_color")
    if ignore_color is not None:
        if _rgb(ignore_color) is None or ignore is None:
            raise DatasetError(f'{path}: "ignore_color" must be an [r, g, b] triple, and needs an "ignore_index".')
        ignore_color = _rgb(ignore_color)
    if len(set(colors) | ({ignore_color} - {None})) != len(colors) + (ignore_color is not None):
        raise DatasetError(f'{path}: two classes share a colour in "colors".')
    return colors, ignore_color


def colour_table(info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """Keys ``r * 65536 + g * 256 + b`` of every known colour, and the label each one maps to."""
    pairs = [(c, i) for i, c in enumerate(info.colors)]
    if info.ignore_color is not None:
        pairs.append((info.ignore_color, info.ignore_index))
    keys = np.array([r * 65536 + g * 256 + b for (r, g, b), _ in pairs], np.int64)
    return keys, np.array([label for _, label in pairs], np.int64)


@dataclass
class SplitFiles:
    """One split's image/mask pairs (sorted by stem) and every problem with its files."""

    pairs: list[tuple[Path, Path]]
    problems: list[tuple[Path, str]]  # (file or folder, what is wrong with it and the fix)


def scan_split(data_dir: str | Path, split: str) -> SplitFiles:
    """Pair a split's images and masks by file stem, collecting every problem rather than stopping at one.

    ``check-data`` reports all of them; :func:`list_pairs` raises on the first.
    """
    split_dir = Path(data_dir) / split
    image_dir, mask_dir = split_dir / "images", split_dir / "masks"
    if not image_dir.is_dir() or not mask_dir.is_dir():
        return SplitFiles([], [(split_dir, "needs both images/ and masks/ folders (see data/README.md).")])
    images, masks, problems = {}, {}, []
    for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images[path.stem] = path
        elif path.is_file():
            problems.append((path, "is not a .png or .jpg image. Remove it from images/."))
    for path in sorted(mask_dir.iterdir()):
        if path.suffix.lower() == MASK_SUFFIX:
            masks[path.stem] = path
        elif path.suffix.lower() in (".jpg", ".jpeg"):
            problems.append(
                (path, "is a JPEG mask: lossy compression changes labels at every edge. Save masks as PNG.")
            )
        elif path.is_file():
            problems.append((path, "is not a .png mask. Remove it from masks/."))
    for stem in sorted(set(images) - set(masks)):
        problems.append((images[stem], f"has no mask: expected {mask_dir / (stem + MASK_SUFFIX)}."))
    for stem in sorted(set(masks) - set(images)):
        problems.append((masks[stem], f"has no image named {stem}.png or {stem}.jpg in {image_dir}."))
    pairs = [(images[stem], masks[stem]) for stem in sorted(set(images) & set(masks))]
    if not pairs:
        problems.append((split_dir, f"is empty: the {split} split has no image/mask pairs."))
    return SplitFiles(pairs, problems)


def list_pairs(data_dir: str | Path, split: str) -> tuple[list[str], list[str]]:
    """Sorted image and mask paths of one split, paired by file stem; the first problem raises."""
    scan = scan_split(data_dir, split)
    if scan.problems:
        path, message = scan.problems[0]
        more = len(scan.problems) - 1
        hint = f" ({more} more problem(s): `python -m helpers check-data {data_dir}` lists them all)" if more else ""
        raise DatasetError(f"{path} {message}{hint}")
    return [str(image) for image, _ in scan.pairs], [str(mask) for _, mask in scan.pairs]


def load_image(path: tf.Tensor) -> tf.Tensor:
    """Decode a PNG or JPEG file to ``(H, W, 3)`` uint8; grayscale and RGBA become RGB."""
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def load_mask(path: tf.Tensor, info: DatasetInfo | None = None) -> tf.Tensor:
    """Decode a PNG mask to ``(H, W, 1)`` uint8 class indices.

    Index masks must be single-channel; colour masks are refused unless ``info.colors``
    says which colour is which class, and then any other colour is an error naming it.
    """
    if info is not None and info.colors is not None:
        return _colour_mask_to_indices(path, info)
    mask = tf.io.decode_png(tf.io.read_file(path), channels=0, dtype=tf.uint8)
    tf.debugging.assert_equal(
        tf.shape(mask)[-1], 1, message=tf.strings.join(["mask has more than one channel: ", path])
    )
    return mask


def _colour_mask_to_indices(path, info: DatasetInfo) -> tf.Tensor:
    keys, labels = colour_table(info)
    rgb = tf.cast(tf.io.decode_png(tf.io.read_file(path), channels=3), tf.int64)
    key = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
    matches = tf.equal(key[..., None], tf.constant(keys))
    known = tf.reduce_any(matches, axis=-1)
    unknown = tf.boolean_mask(rgb, tf.logical_not(known))[:1]
    tf.debugging.Assert(
        tf.reduce_all(known),
        ["colour not in classes.json colors:", path, "RGB", unknown],
    )
    index = tf.gather(tf.constant(labels), tf.argmax(tf.cast(matches, tf.int32), axis=-1))
    return tf.cast(index, tf.uint8)[..., None]


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_image(image: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """Bilinear resize to ``size`` (a side, for a square, or ``(height, width)``); values stay 0-255, as uint8."""
    resized = tf.image.resize(tf.cast(image, tf.float32), _hw(size), method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def resize_mask(mask: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """Nearest-neighbour resize: every output label is copied from the input, none invented."""
    return tf.image.resize(mask, _hw(size), method="nearest")


def base_shape(data_dir: str | Path, image_size: int) -> tuple[int, int]:
    """``(height, width)`` every image is resized to before augmentation and evaluation.

    The short side becomes ``image_size`` and the long side keeps the training
    images' typical (median) aspect ratio, rounded to a multiple of 16. Squashing a
    4:3 road scene into a square would make every pole and pedestrian thinner than
    in the photos the model will later be shown. Read from the image headers only.
    """
    aspects = []
    for image_path in list_pairs(data_dir, "train")[0]:
        with Image.open(image_path) as image:
            width, height = image.size
        aspects.append(width / height)
    aspect = float(np.median(aspects))
    long_side = max(image_size, 16 * round(image_size * max(aspect, 1 / aspect) / 16))
    return (image_size, long_side) if aspect >= 1 else (long_side, image_size)


def augment_pair(
    image: tf.Tensor,
    mask: tf.Tensor,
    seeds: tf.Tensor,
    size: int,
    pad_label: int | None,
    scale_range: tuple[float, float] = (0.5, 2.0),
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale, square crop of side ``size``, flip (joint), and colour jitter (image only).

    The scale applies to the shorter side (``size * scale``) and keeps the aspect ratio.

    ``seeds`` is an int64 ``(4, 2)`` tensor, one stateless seed per random choice,
    so the same seeds give the same augmentation. Image and mask are cropped and
    flipped as one stacked tensor, which keeps them aligned by construction.
    Zooming out pads the mask with ``pad_label``; with no ignore index the scale
    never goes below 1, so no pixel gets a label that was not in the file.
    """
    low, high = scale_range
    if pad_label is None:
        low = max(low, 1.0)
    scale = tf.random.stateless_uniform([], seeds[0], low, high)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # scale the shorter side to size * scale, keeping the aspect ratio
    factor = size * scale / tf.cast(tf.minimum(height, width), tf.float32)
    new_h = tf.cast(tf.round(tf.cast(height, tf.float32) * factor), tf.int32)
    new_w = tf.cast(tf.round(tf.cast(width, tf.float32) * factor), tf.int32)
    image = tf.image.resize(tf.cast(image, tf.float32), (new_h, new_w), method="bilinear")
    mask = tf.cast(tf.image.resize(mask, (new_h, new_w), method="nearest"), tf.float32)
    pad_h, pad_w = tf.maximum(size - new_h, 0), tf.maximum(size - new_w, 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=0.0)
    mask = tf.pad(mask, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=float(pad_label or 0))
    stacked = tf.concat([image, mask], axis=-1)
    stacked = tf.image.stateless_random_crop(stacked, (size, size, 4), seed=seeds[1])
    stacked = tf.image.stateless_random_flip_left_right(stacked, seed=seeds[2])
    image, mask = stacked[..., :3], stacked[..., 3:]
    image = tf.image.stateless_random_brightness(image, 25.0, seed=seeds[3])
    image = tf.clip_by_value(image, 0.0, 255.0)
    return image, tf.cast(tf.round(mask), tf.uint8)


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full training batches per epoch (the last partial batch is dropped; at least one)."""
    return max(1, num_images // batch_size)


def make_dataset(
    data_dir: str | Path,
    split: str,
    image_size: int,
    batch_size: int,
    training: bool,
    seed: int = 42,
    info: DatasetInfo | None = None,
    cache: bool = True,
    class_weights: np.ndarray | None = None,
    limit: int | None = None,
    first_epoch: int = 0,
) -> tf.data.Dataset:
    """Batches of ``(images float32 (B,H,W,3) in 0-255, masks int32 (B,H,W))``.

    Every image is first resized to :func:`base_shape` (short side ``image_size``,
    aspect ratio kept). Evaluation (``training=False``): those whole images, once, in
    file order, cached after the first pass, the last partial batch kept.
    Training: square ``image_size`` crops (``H = W = image_size``).

    Training: an endless stream of epochs, each :func:`steps_per_epoch` batches, with
    a new shuffle every epoch (the reference tutorial never shuffles) and random
    augmentation, decoded once and cached. Every random choice is a function of ``(seed, epoch, position)``,
    so ``first_epoch=k`` starts exactly where an uninterrupted run's epoch ``k``
    starts: that is what lets an interrupted training resume bit for bit.
    ``class_weights`` adds a third element, per-pixel weights (0 on ignored pixels).
    """
    info = info or read_dataset_info(data_dir)
    images, masks = list_pairs(data_dir, split)
    if limit is not None:
        images, masks = images[:limit], masks[:limit]
    autotune = tf.data.AUTOTUNE

    shape = base_shape(data_dir, image_size)

    def load(image_path, mask_path):
        return resize_image(load_image(image_path), shape), resize_mask(load_mask(mask_path, info), shape)

    def finish(image, mask):
        image, mask = tf.cast(image, tf.float32), tf.cast(mask[..., 0], tf.int32)
        if class_weights is None:
            return image, mask
        return image, mask, pixel_weights(mask, tf.constant(np.asarray(class_weights, np.float32)), info.ignore_index)

    if not training:
        ds = tf.data.Dataset.from_tensor_slices((images, masks)).map(load, num_parallel_calls=autotune)
        if cache:
            ds = ds.cache()
        return ds.map(finish, num_parallel_calls=autotune).batch(batch_size).prefetch(autotune)

    count, steps = len(images), steps_per_epoch(len(images), batch_size)
    # the whole split as one element: decoded once and cached, so each epoch can take it in any order
    decoded = tf.data.Dataset.from_tensor_slices((images, masks)).map(load, num_parallel_calls=autotune)
    decoded = decoded.batch(count)
    if cache:
        decoded = decoded.cache()

    def one_epoch(epoch):
        # stateless: the permutation depends on (seed, epoch) only, never on a global random state
        order = tf.argsort(tf.random.stateless_uniform([count], tf.stack([tf.constant(seed, tf.int64), epoch])))
        ds = decoded.flat_map(
            lambda all_images, all_masks: tf.data.Dataset.from_tensor_slices(
                (tf.gather(all_images, order), tf.gather(all_masks, order))
            )
        ).enumerate()

        def augment(position, pair):
            key = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), epoch]), position)
            seeds = tf.random.experimental.stateless_split(key, 4)
            return finish(*augment_pair(pair[0], pair[1], seeds, image_size, info.pad_label))

        ds = ds.map(augment, num_parallel_calls=autotune)
        # an epoch never shares a batch with the next one, even with fewer images than a batch
        return ds.repeat().take(steps * batch_size).batch(batch_size, drop_remainder=True)

    epochs = tf.data.Dataset.range(first_epoch, 2**62)
    return epochs.flat_map(one_epoch).prefetch(autotune)


def pixel_weights(mask: tf.Tensor, class_weights: tf.Tensor, ignore_index: int | None) -> tf.Tensor:
    """Per-pixel loss weights looked up from per-class weights; ignored pixels weigh 0."""
    num_classes = tf.shape(class_weights)[0]
    valid = mask < num_classes
    if ignore_index is not None:
        valid &= mask != ignore_index
    safe = tf.where(valid, mask, 0)
    return tf.where(valid, tf.gather(class_weights, safe), 0.0)


def class_pixel_counts(data_dir: str | Path, split: str = "train", info: DatasetInfo | None = None) -> np.ndarray:
    """How many pixels of each class the split's mask files hold (ignored pixels excluded)."""
    info = info or read_dataset_info(data_dir)
    _, masks = list_pairs(data_dir, split)
    counts = np.zeros(256, np.int64)
    for path in masks:
        counts += np.bincount(load_mask(path, info).numpy().ravel(), minlength=256)
    return counts[: info.num_classes]


def median_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Median-frequency class weights (Eigen & Fergus 2015): rare classes weigh more."""
    counts = np.asarray(counts, np.float64)
    freq = counts / max(counts.sum(), 1)
    present = freq > 0
    weights = np.zeros_like(freq)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights.astype(np.float32)


def ensure_data(settings) -> Path:
    """The settings' data directory, generating the built-in synthetic dataset on first use."""
    data_dir = Path(settings.data_dir)
    if (data_dir / "classes.json").is_file():
        return data_dir
    if settings.data_dir_is_default:
        from helpers import synthetic

        print(f"Generating the built-in synthetic dataset in {data_dir} (first use; takes a few seconds)...")
        return synthetic.generate_dataset(
            data_dir, settings.num_train, settings.num_val, settings.num_test, seed=settings.seed
        )
    if not data_dir.is_dir():
        raise DatasetError(
            f"DEEPLAB_DATA_DIR={data_dir} does not exist. Point it at a dataset in the course layout "
            "(see data/README.md), or unset it to use the built-in synthetic data."
        )
    raise DatasetError(f"{data_dir / 'classes.json'} is missing; see data/README.md for the layout.")
