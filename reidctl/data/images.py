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


def load_image(path: Path) -> Image.Image:
    """Open ``path`` as a fully decoded RGB image, or raise DatasetError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        if os.path.islink(path):
            raise DatasetError(f"cannot read image {path}: a dangling symbolic link (to {os.readlink(path)})") from None
        raise DatasetError(f"cannot read image {path}: file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = str(exc) or type(exc).__name__
        raise DatasetError(f"cannot read image {path}: {reason}") from None
