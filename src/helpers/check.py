"""``python -m helpers check-data DIR``: read every file once and report every problem with its fix.

Counts per split, image sizes, the class histogram per split, and problems such
as unpaired files, unreadable or truncated files, masks that differ in size from
their image, colour, 16-bit or JPEG masks, labels that are neither a class nor
the ignore index, and a ``classes.json`` that is missing, malformed or wrong.
Training runs this first and refuses to start on a dataset that fails it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.data import REQUIRED_SPLITS, SPLITS, DatasetError, DatasetInfo, read_dataset_info, scan_split
from helpers.imageio import MaskError, mask_indices


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class SplitReport:
    pairs: int = 0
    image_sizes: Counter = field(default_factory=Counter)
    label_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))


@dataclass
class DataReport:
    data_dir: Path
    info: DatasetInfo | None
    splits: dict[str, SplitReport]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"Dataset {self.data_dir}"]
        if self.info is not None:
            names = ", ".join(self.info.classes)
            lines.append(f"  classes ({self.info.num_classes}): {names}; ignore index {self.info.ignore_index}")
        for name, split in self.splits.items():
            sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in split.image_sizes.most_common(3))
            lines.append(f"  {name}: {split.pairs} pairs; image sizes (W x H): {sizes or '-'}")
            if self.info is not None and split.label_counts.sum():
                total = split.label_counts.sum()
                shares = [f"{c} {split.label_counts[i] / total:.1%}" for i, c in enumerate(self.info.classes)]
                if self.info.ignore_index is not None:
                    shares.append(f"ignored {split.label_counts[self.info.ignore_index] / total:.1%}")
                lines.append("    pixels: " + ", ".join(shares))
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("No problems found.")
        return "\n".join(lines)


IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG


def _open(path: Path, problems: list[Problem], what: str) -> Image.Image | None:
    """Open and fully decode an image file; record a problem if that fails."""
    try:
        with Image.open(path) as handle:
            handle.load()
            return handle.copy()
    except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
        with open(path, "rb") as raw:
            looks_like_image = raw.read(8).startswith(IMAGE_SIGNATURES)
        if looks_like_image:
            message = f"cannot be read ({err}); the file is truncated or corrupt. Re-export or remove it."
        else:
            message = f"is not an image file. Remove it from the {what} folder."
        problems.append(Problem(str(path), message))
    return None


def _check_mask(mask_path: Path, mask: Image.Image, image: Image.Image | None, info, problems, counts) -> None:
    """Size, decoding and label values of one mask, decoded as training decodes it (:func:`mask_indices`)."""

    def report(message: str) -> None:
        problems.append(Problem(str(mask_path), message))

    if image is not None and mask.size != image.size:
        (mw, mh), (iw, ih) = mask.size, image.size
        report(
            f"is {mw}x{mh} but its image is {iw}x{ih}. "
            "Masks must have the image's size; re-export the mask or resize it with nearest neighbour."
        )
    colors = info.colors if info is not None else None
    try:
        if colors is not None:
            values = mask_indices(mask, mask_path, colors, info.ignore_color, info.ignore_index)
        else:
            values = mask_indices(mask, mask_path)
    except MaskError as err:
        report(str(err).removeprefix(str(mask_path)).lstrip(": "))
        return
    counts += np.bincount(values.ravel(), minlength=256)
    if info is None:
        return
    bad = sorted(set(np.unique(values).tolist()) - set(range(info.num_classes)) - {info.ignore_index})
    if bad:
        report(
            f"has label value(s) {bad[:5]} that are neither a class (0..{info.num_classes - 1}) "
            f"nor the ignore index ({info.ignore_index}). Fix the mask or classes.json."
        )


def check_dataset(data_dir: str | Path, splits=SPLITS) -> DataReport:
    """Read every file of ``data_dir`` once and report counts, sizes, histograms and problems.

    train and val are required; a split folder that is absent altogether (often test) is
    skipped and left out of the report, as datasets with only train and val are normal.
    """
    data_dir = Path(data_dir)
    problems: list[Problem] = []
    info = None
    try:
        info = read_dataset_info(data_dir)
    except DatasetError as err:
        where, message = str(data_dir / "classes.json"), str(err)
        problems.append(Problem(where, message[len(where) :].lstrip(": ") if message.startswith(where) else message))
    reports = {}
    for split in splits:
        if split not in REQUIRED_SPLITS and not (data_dir / split).exists():
            continue
        report = reports[split] = SplitReport()
        scan = scan_split(data_dir, split)
        problems += [Problem(str(path), message) for path, message in scan.problems]
        for image_path, mask_path in scan.pairs:
            image = _open(image_path, problems, "images")
            mask = _open(mask_path, problems, "masks")
            if image is not None:
                report.image_sizes[image.size] += 1
            if mask is not None:
                _check_mask(mask_path, mask, image, info, problems, report.label_counts)
            report.pairs += image is not None and mask is not None
    return DataReport(data_dir, info, reports, problems)
