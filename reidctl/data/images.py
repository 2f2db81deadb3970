"""Image files: which names count as images, and a loader that fails loudly on bad files.

A half-written JPEG silently padded with grey would poison features without anyone noticing, so
``load_image`` decodes every pixel up front and turns any failure into a :class:`DatasetError`
that names the file. (Pillow's ``LOAD_TRUNCATED_IMAGES`` is deliberately left off.)
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from reidctl.errors import DatasetError

#: Lower-case file suffixes treated as images (matching is case-insensitive).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


def is_image_name(name: str | os.PathLike) -> bool:
    """True when the file name has an image suffix (``.JPG`` counts, ``Thumbs.db`` does not)."""
    return os.path.splitext(os.fspath(name))[1].lower() in IMAGE_EXTENSIONS


#: Pillow's modes of 16- and 32-bit integer greyscale (a 16-bit greyscale PNG opens as one).
_WIDE_GREY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB; wide greyscale is scaled to 8 bits first (its top byte, as Pillow
    itself reduces 16-bit colour PNGs).

    Why: Pillow's ``convert("RGB")`` clips a 16-bit grey value to 255 instead of scaling it,
    so every pixel above 255 of 65535 (all but the blackest) turned white."""
    if img.mode in _WIDE_GREY:
        import numpy as np  # noqa: PLC0415 (only for this rare mode; image names are checked without it)

        grey = np.asarray(img).astype(np.int64)
        img = Image.fromarray((np.clip(grey, 0, 65535) >> 8).astype(np.uint8))
    return img.convert("RGB")


def load_image(path: Path) -> Image.Image:
    """Open ``path`` as a fully decoded RGB image, or raise DatasetError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DatasetError(f"cannot read image {path}: a dangling symbolic link (to {os.readlink(path)})") from None
        raise DatasetError(f"cannot read image {path}: file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DatasetError(f"cannot read image {path}: {reason}") from None
