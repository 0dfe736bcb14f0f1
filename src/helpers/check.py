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

from helpers.data import SPLITS, DatasetError, DatasetInfo, read_dataset_info, scan_split


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
    def report(message: str) -> None:
        problems.append(Problem(str(mask_path), message))

    if image is not None and mask.size != image.size:
        (mw, mh), (iw, ih) = mask.size, image.size
        report(
            f"is {mw}x{mh} but its image is {iw}x{ih}. "
            "Masks must have the image's size; re-export the mask or resize it with nearest neighbour."
        )
    if info is not None and info.colors is not None:
        _check_colour_mask(mask_path, mask, info, report, counts)
        return
    if mask.mode in ("I;16", "I;16B", "I;16L", "I"):
        report("is a 16-bit mask; the course reads 8-bit class indices. Save it as 8-bit PNG (mode L or P).")
        return
    if mask.mode not in ("L", "P", "1"):
        report(
            f"has {len(mask.getbands())} channels (mode {mask.mode}) where one channel of class indices "
            "was expected. Convert colours to class indices (see data/README.md)."
        )
        return
    values = np.asarray(mask, dtype=np.uint8)
    counts += np.bincount(values.ravel(), minlength=256)
    if info is None:
        return
    bad = sorted(set(np.unique(values).tolist()) - set(range(info.num_classes)) - {info.ignore_index})
    if bad:
        report(
            f"has label value(s) {bad[:5]} that are neither a class (0..{info.num_classes - 1}) "
            f"nor the ignore index ({info.ignore_index}). Fix the mask or classes.json."
        )


def _check_colour_mask(mask_path: Path, mask: Image.Image, info, report, counts) -> None:
    """Colour-coded masks: every colour must be one of ``classes.json``'s ``colors`` (or the ignore colour)."""
    from helpers.data import colour_table

    rgb = np.asarray(mask.convert("RGB"), np.int64)
    key = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
    keys, labels = colour_table(info)
    found, inverse = np.unique(key, return_inverse=True)
    unknown = [int(k) for k in found if k not in set(keys.tolist())]
    if unknown:
        colours = [(k // 65536, k // 256 % 256, k % 256) for k in unknown[:3]]
        report(
            f'has colour(s) {", ".join(str(c) for c in colours)} that are not in classes.json "colors". '
            'Add them to "colors" (or as "ignore_color"), or fix the mask.'
        )
        return
    lookup = dict(zip(keys.tolist(), labels.tolist()))
    indices = np.array([lookup[int(k)] for k in found])[inverse.ravel()]
    counts += np.bincount(indices, minlength=256)


def check_dataset(data_dir: str | Path, splits=SPLITS) -> DataReport:
    """Read every file of ``data_dir`` once and report counts, sizes, histograms and problems."""
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
