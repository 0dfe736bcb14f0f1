"""The dataset layout and the tf.data input pipeline.

Layout::

    DATA_DIR/classes.json            {"classes": [...], "ignore_index": 255 or null}
    DATA_DIR/<split>/images/<stem>.png|.jpg
    DATA_DIR/<split>/masks/<stem>.png   single channel, one class index per pixel

Every image is scaled by its own shorter side (aspect ratio kept), bilinearly with
antialiasing, by the one function that training, evaluation and prediction share
(:func:`resize_image`); masks with nearest neighbour (bilinear would invent labels
between two classes). Images and masks are read by :mod:`helpers.imageio`, the same
readers ``check-data`` uses. Training adds joint image/mask augmentation and
shuffles; every split is cached after decoding and prefetched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from helpers import imageio

SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")  # a dataset without a test split is normal: evaluate on val then
# The range of training zooms (images are cached with the detail the largest needs). DeepLab's papers use
# 0.5-2 for runs of hours; for runs of minutes 0.75-1.5 measured better on CamVid val (README, "Quality per minute").
TRAIN_SCALES = (0.75, 1.5)
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


def read_mask(path: str | Path, info: DatasetInfo | None = None) -> np.ndarray:
    """A mask file as ``(H, W)`` uint8 class indices, read as ``check-data`` reads it (:func:`imageio.read_mask`)."""
    if info is not None and info.colors is not None:
        return imageio.read_mask(path, info.colors, info.ignore_color, info.ignore_index)
    return imageio.read_mask(path)


def load_image(path) -> tf.Tensor:
    """An image file as an ``(H, W, 3)`` uint8 tensor: upright RGB, whatever its mode (see :mod:`helpers.imageio`)."""
    return tf.constant(imageio.read_image(_text(path)))


def load_mask(path, info: DatasetInfo | None = None) -> tf.Tensor:
    """A mask file as an ``(H, W, 1)`` uint8 tensor of class indices (see :func:`read_mask`)."""
    return tf.constant(read_mask(_text(path), info)[..., None])


def _text(path) -> str:
    if isinstance(path, tf.Tensor):
        path = path.numpy()
    return path.decode() if isinstance(path, bytes) else str(path)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def scaled_shape(height, width, short_side):
    """``(height, width)`` with the shorter side scaled to ``short_side``, aspect ratio kept.

    Works on Python numbers and on tensors alike. Every image is scaled by its own
    shorter side: squashing a 4:3 road scene, or a portrait photo, into one common
    shape would make poles and pedestrians thinner than in the photos the model will
    later be shown.
    """
    if isinstance(height, int | np.integer) and isinstance(width, int | np.integer):
        scale = short_side / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    scale = tf.cast(short_side, tf.float32) / tf.minimum(height, width)
    new_h = tf.maximum(1, tf.cast(tf.round(height * scale), tf.int32))
    return new_h, tf.maximum(1, tf.cast(tf.round(width * scale), tf.int32))


def scale_image(image: tf.Tensor, size) -> tf.Tensor:
    """Bilinear resize of a float image (or batch) to ``size``, antialiased so shrinking does not alias.

    The one image resize of the course: training, evaluation and prediction all call it.
    """
    return tf.image.resize(tf.cast(image, tf.float32), _hw(size) if isinstance(size, int) else size, antialias=True)


def resize_image(image: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """:func:`scale_image` to ``size`` (a side, for a square, or ``(height, width)``), back to uint8 0-255."""
    return tf.cast(tf.clip_by_value(tf.round(scale_image(image, size)), 0, 255), tf.uint8)


def resize_mask(mask: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """Nearest-neighbour resize: every output label is copied from the input, none invented."""
    return tf.image.resize(mask, _hw(size) if isinstance(size, int) else size, method="nearest")


def prepare_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """What the network sees of a whole image: shorter side scaled to ``image_size``, as float32 0-255."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    return scale_image(image, scaled_shape(height, width, image_size))


def augment_pair(
    image: tf.Tensor,
    mask: tf.Tensor,
    seeds: tf.Tensor,
    size: int,
    pad_label: int | None,
    scale_range: tuple[float, float] = TRAIN_SCALES,
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
    new_h, new_w = scaled_shape(height, width, size * scale)
    image = scale_image(image, (new_h, new_w))
    mask = tf.cast(resize_mask(mask, (new_h, new_w)), tf.float32)
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
    limit: int | None = None,
    first_epoch: int = 0,
    scale_range: tuple[float, float] = TRAIN_SCALES,
) -> tf.data.Dataset:
    """Batches of ``(images float32 (B,H,W,3) in 0-255, masks int32 (B,H,W))``.

    Evaluation (``training=False``): whole images, each scaled so its shorter side is
    ``image_size`` (:func:`prepare_image`, as prediction does), once, in file order,
    cached after the first pass, the last partial batch kept. Images of different shapes
    share a batch padded with the ignore index (pixels that no score counts).

    Training: an endless stream of epochs of square ``image_size`` crops (see
    :func:`training_stream`), each :func:`steps_per_epoch` batches, zoomed within ``scale_range``.
    """
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(
            f"scale_range={scale_range} must be (smallest zoom, largest zoom) with 0 < smallest <= largest."
        )
    info = info or read_dataset_info(data_dir)
    images, masks = list_pairs(data_dir, split)
    if limit is not None:
        images, masks = images[:limit], masks[:limit]
    pairs = tf.data.Dataset.from_tensor_slices((images, masks))
    pairs = pairs.map(lambda i, m: read_pair(i, m, info), num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        return training_stream(
            pairs, len(images), image_size, batch_size, seed, info.pad_label, cache, first_epoch, scale_range
        )
    return evaluation_batches(pairs, image_size, batch_size, info.ignore_index, cache, _same_shapes(images))


def read_pair(image_path: tf.Tensor, mask_path: tf.Tensor, info: DatasetInfo) -> tuple[tf.Tensor, tf.Tensor]:
    """A tf.data step: ``(image uint8 (H,W,3), mask uint8 (H,W,1))`` read by the readers ``check-data`` uses."""

    def read(image_file: bytes, mask_file: bytes):
        return imageio.read_image(image_file.decode()), read_mask(mask_file.decode(), info)[..., None]

    image, mask = tf.numpy_function(read, [image_path, mask_path], [tf.uint8, tf.uint8], stateful=False)
    image.set_shape([None, None, 3])
    mask.set_shape([None, None, 1])
    return image, mask


def evaluation_batches(pairs, image_size, batch_size, ignore_index, cache=True, same_shapes=True) -> tf.data.Dataset:
    """Whole images scaled by their shorter side, batched; mixed shapes are padded with ``ignore_index``."""

    def scale(image, mask):
        shape = scaled_shape(tf.shape(image)[0], tf.shape(image)[1], image_size)
        return prepare_image(image, image_size), tf.cast(resize_mask(mask, shape)[..., 0], tf.int32)

    ds = pairs.map(scale, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if ignore_index is not None:
        ds = ds.padded_batch(batch_size, padding_values=(0.0, ignore_index))
    else:  # nothing to pad with: images of different shapes go one at a time
        ds = ds.batch(batch_size if same_shapes else 1)
    return ds.prefetch(tf.data.AUTOTUNE)


def _same_shapes(image_paths: list[str]) -> bool:
    """Whether every image has the same size (read from the file headers only)."""
    sizes = set()
    for path in image_paths:
        with Image.open(path) as image:
            sizes.add(image.size)
    return len(sizes) <= 1


def training_stream(
    pairs, count, image_size, batch_size, seed, pad_label, cache=True, first_epoch=0, scale_range=TRAIN_SCALES
):
    """An endless stream of epochs of augmented ``image_size`` crops, reproducible by ``(seed, epoch)``.

    The split is decoded once and cached as one padded batch (each image with its own
    shape, at no more than the detail the largest zoom needs), so each epoch can take it
    in a new order: the reference tutorial never shuffles. Every random choice is a
    function of ``(seed, epoch, position)``, so ``first_epoch=k`` starts exactly where an
    uninterrupted run's epoch ``k`` starts: that is what lets an interrupted training
    resume bit for bit. A split smaller than a batch is repeated with a new augmentation
    for every copy.
    """
    steps = steps_per_epoch(count, batch_size)
    detail = round(scale_range[1] * image_size)

    def shrink(image, mask):  # never enlarge: upsampling adds no detail, only memory
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        shape = scaled_shape(height, width, tf.minimum(detail, tf.minimum(height, width)))
        return resize_image(image, shape), resize_mask(mask, shape), tf.stack(shape)

    decoded = pairs.map(shrink, num_parallel_calls=tf.data.AUTOTUNE).padded_batch(count)
    if cache:
        decoded = decoded.cache()

    def one_epoch(epoch):
        epoch_key = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = tf.argsort(tf.random.stateless_uniform([count], epoch_key))  # stateless: (seed, epoch) only
        shuffled = decoded.flat_map(
            lambda images, masks, shapes: tf.data.Dataset.from_tensor_slices(
                (tf.gather(images, order), tf.gather(masks, order), tf.gather(shapes, order))
            )
        )

        def augment(position, element):
            image, mask, shape = element
            seeds = tf.random.experimental.stateless_split(
                tf.random.experimental.stateless_fold_in(epoch_key, position), 4
            )
            image, mask = image[: shape[0], : shape[1]], mask[: shape[0], : shape[1]]
            image, mask = augment_pair(image, mask, seeds, image_size, pad_label, scale_range)
            return image, tf.cast(mask[..., 0], tf.int32)

        # positions count after the repeat, so every copy of a small split gets its own augmentation
        ds = shuffled.repeat().take(steps * batch_size).enumerate()
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        # an epoch never shares a batch with the next one, even with fewer images than a batch
        return ds.batch(batch_size, drop_remainder=True)

    epochs = tf.data.Dataset.range(first_epoch, 2**62)
    return epochs.flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


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
        counts += np.bincount(read_mask(path, info).ravel(), minlength=256)
    return counts[: info.num_classes]


def median_frequency_weights(counts: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Median-frequency class weights (Eigen & Fergus 2015): rare classes weigh more.

    ``power`` softens them: 0.5 gives their square root, so a class 100 times rarer than
    the median weighs 10, not 100. Classes absent from ``counts`` weigh 0.
    """
    counts = np.asarray(counts, np.float64)
    freq = counts / max(counts.sum(), 1)
    present = freq > 0
    weights = np.zeros_like(freq)
    weights[present] = (np.median(freq[present]) / freq[present]) ** power
    return weights.astype(np.float32)


def ensure_data(settings) -> Path:
    """The settings' dataset folder, made on first use: generated (synthetic) or downloaded (camvid, pets).

    When the profile chose a public dataset (the full profile's CamVid) and it cannot be
    downloaded, the built-in data is used instead, with one sentence saying why and how to
    get it. A dataset you asked for by name fails with the download's message.
    """
    data_dir = Path(settings.data_dir)
    if (data_dir / "classes.json").is_file():
        return data_dir
    if settings.dataset == "synthetic":
        return _generate_synthetic(settings, data_dir)
    if settings.dataset in ("camvid", "pets"):
        from helpers import datasets

        prepare = {"camvid": datasets.prepare_camvid, "pets": datasets.prepare_pets}[settings.dataset]
        print(f"Downloading and converting {settings.dataset} to {data_dir} (first use only)...")
        try:
            return prepare(data_dir)
        except (datasets.DownloadError, ImportError) as err:
            if not settings.dataset_is_default:
                raise
            fallback = data_dir.parent / f"synthetic-{settings.profile}"
            print(
                f"Could not get {settings.dataset} ({str(err).splitlines()[0]}), so this run uses the built-in "
                f"synthetic data instead. To use {settings.dataset}: run `python -m helpers prepare-data "
                f"{settings.dataset} {data_dir}` on a machine with internet, or set DEEPLAB_DATASET=synthetic "
                "to silence this."
            )
            return _generate_synthetic(settings, fallback)
    if not data_dir.is_dir():
        raise DatasetError(
            f"DEEPLAB_DATA_DIR={data_dir} does not exist. Point it at a dataset in the course layout "
            "(see data/README.md), or unset it to use the built-in synthetic data."
        )
    raise DatasetError(f"{data_dir / 'classes.json'} is missing; see data/README.md for the layout.")


def _generate_synthetic(settings, data_dir: Path) -> Path:
    if (data_dir / "classes.json").is_file():
        return data_dir
    from helpers import synthetic

    print(f"Generating the built-in synthetic dataset in {data_dir} (first use; takes a few seconds)...")
    return synthetic.generate_dataset(
        data_dir, settings.num_train, settings.num_val, settings.num_test, seed=settings.seed
    )
