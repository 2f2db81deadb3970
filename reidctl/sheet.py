"""Picture sheets of rankings: one row per query, the query then its top-k, distances below.

Why: a number such as mAP says how often a model fails, a sheet shows *how* (clothes colour,
pose, occlusion, a camera's white balance). Borders follow torchreid's ``visrank``: green for a
right identity, red for a wrong one; grey when identities are unknown, black for the query.
Pure Pillow; the image size is a function of the row and column counts only
(:func:`sheet_size`), so tests can check it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from reidctl.artifacts import atomic_path
from reidctl.data.images import load_image

CELL_HEIGHT, CELL_WIDTH = 128, 64  # each image is resized to this
BORDER = 4  # coloured frame around each image
CAPTION = 14  # text line under each image
PAD = 6  # space between cells and around the sheet
GAP = 18  # extra space between the query and its matches

QUERY_COLOUR = (0, 0, 0)
RIGHT_COLOUR = (0, 170, 0)
WRONG_COLOUR = (215, 0, 0)
UNKNOWN_COLOUR = (160, 160, 160)
BACKGROUND = (255, 255, 255)


@dataclass
class SheetRow:
    """A query image, its caption, and its matches: (image, caption, right? None = unknown)."""

    query: Path
    caption: str
    matches: list[tuple[Path, str, bool | None]]


def sheet_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of ``rows`` queries with ``columns`` matches each."""
    cell_w, cell_h = CELL_WIDTH + 2 * BORDER, CELL_HEIGHT + 2 * BORDER + CAPTION
    width = PAD + cell_w + GAP + columns * (cell_w + PAD)
    height = PAD + rows * (cell_h + PAD)
    return width, height


def match_colour(right: bool | None) -> tuple[int, int, int]:
    return UNKNOWN_COLOUR if right is None else RIGHT_COLOUR if right else WRONG_COLOUR


def draw_sheet(rows: list[SheetRow], out: str | os.PathLike) -> tuple[int, int]:
    """Draw ``rows`` and write them to ``out`` as PNG (atomically); returns the image size.

    Every row gets as many columns as the longest row; missing matches stay blank.
    """
    columns = max((len(r.matches) for r in rows), default=0)
    size = sheet_size(len(rows), columns)
    sheet = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    cell_w, cell_h = CELL_WIDTH + 2 * BORDER, CELL_HEIGHT + 2 * BORDER + CAPTION
    for r, row in enumerate(rows):
        y = PAD + r * (cell_h + PAD)
        _cell(sheet, draw, font, (PAD, y), row.query, row.caption, QUERY_COLOUR)
        for c, (image, caption, right) in enumerate(row.matches):
            x = PAD + cell_w + GAP + c * (cell_w + PAD)
            _cell(sheet, draw, font, (x, y), image, caption, match_colour(right))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return size


def _cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, at: tuple[int, int],
          image: Path, caption: str, colour: tuple[int, int, int]) -> None:
    x, y = at
    draw.rectangle([x, y, x + CELL_WIDTH + 2 * BORDER - 1, y + CELL_HEIGHT + 2 * BORDER - 1], fill=colour)
    picture = load_image(Path(image)).resize((CELL_WIDTH, CELL_HEIGHT), Image.BICUBIC)
    sheet.paste(picture, (x + BORDER, y + BORDER))
    draw.text((x + 1, y + CELL_HEIGHT + 2 * BORDER + 1), caption[:12], fill=(0, 0, 0), font=font)
