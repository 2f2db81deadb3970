"""Picture sheets of rankings: one row per query, the query then its top-k, each image captioned.

Why: a number such as mAP says how often a model fails, a sheet shows *how* (clothes colour,
pose, occlusion, a camera's white balance). A sheet must explain itself when it is pasted into a
report without the command beside it, so it carries a title (what was ranked against what, by
which model, under which rule), a colour legend, and under every image its rank and distance,
its identity and camera where known, and its file name. Borders follow torchreid's ``visrank``:
green for a right identity, red for a wrong one; grey when identities are unknown, black for the
query. ``evaluate --sheet`` adds, after the top-k, the first right match and its rank, so a
failing query shows where its person went.

Pure Pillow with Pillow's bundled font (the same picture on every machine). The layout is
computed apart from the drawing (:func:`layout_sheet`), and the image size is a function of the
row and column counts only (:func:`sheet_size`), so tests can check both without reading pixels.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from reidctl.artifacts import PNG_KIND_KEY, SHEET, atomic_path
from reidctl.data.images import load_image

CELL_HEIGHT, CELL_WIDTH = 128, 64  # each image is resized to this
BORDER = 4  # coloured frame around each image
COLUMN = 124  # width of a column: the framed image, centred, and its caption lines
LINE = 12  # height of a caption line
CAPTION_LINES = 3  # rank and distance; identity and camera; file name
CAPTION = CAPTION_LINES * LINE + 2  # caption block under each image
CAPTION_SIZES = (10, 10, 9)  # font size of each caption line (a CUHK03/Market file name fits in 9)
PAD = 6  # space between cells and around the sheet
GAP = 18  # extra space between the query and its matches, and before the first right match
TITLE_LINE = 17  # height of a title line
TITLE_LINES = 3
LEGEND = 20  # height of the legend row
HEADER = PAD + TITLE_LINES * TITLE_LINE + LEGEND + LINE + PAD  # title, legend, column heads
MIN_WIDTH = 640  # wide enough for the legend, however few the columns

QUERY_COLOUR = (0, 0, 0)
RIGHT_COLOUR = (0, 170, 0)
WRONG_COLOUR = (215, 0, 0)
UNKNOWN_COLOUR = (160, 160, 160)
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
NOTE_COLOUR = (90, 90, 90)

#: What each border colour means, in the legend's order.
LEGEND_ITEMS = ((QUERY_COLOUR, "query"), (RIGHT_COLOUR, "same person as the query"),
                (WRONG_COLOUR, "another person"), (UNKNOWN_COLOUR, "identity unknown"))
FIRST_RIGHT_HEAD = "first right match"


@dataclass
class Tile:
    """One image of a sheet: the file, the caption lines under it, and what its border says
    (``right``: True same person, False another, None unknown; ``query``: the row's query)."""

    image: Path
    lines: Sequence[str]
    right: bool | None = None
    query: bool = False

    @property
    def colour(self) -> tuple[int, int, int]:
        return QUERY_COLOUR if self.query else match_colour(self.right)


@dataclass
class SheetRow:
    """A query, its matches in rank order, and (``evaluate --sheet``) its first right match."""

    query: Tile
    matches: list[Tile]
    first_right: Tile | None = None


@dataclass
class Placed:
    """Where a text or a tile goes: top-left corner in pixels."""

    x: int
    y: int
    text: str = ""
    tile: Tile | None = None
    colour: tuple[int, int, int] = TEXT_COLOUR
    size: int = 10  # font size of a text


@dataclass
class SheetLayout:
    """What a sheet draws, before any pixel: its size, every text and every tile with its place."""

    size: tuple[int, int]
    texts: list[Placed] = field(default_factory=list)
    tiles: list[Placed] = field(default_factory=list)
    swatches: list[Placed] = field(default_factory=list)  # legend colour squares

    def strings(self) -> list[str]:
        """Every text on the sheet, in the order it is placed: title, legend, column heads, captions."""
        return [t.text for t in self.texts]


def sheet_size(rows: int, columns: int, first_right: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of ``rows`` queries with ``columns`` matches each
    (plus the first-right-match column of ``evaluate --sheet`` when ``first_right``)."""
    last = cell_x(columns, True) if first_right else cell_x(columns - 1)
    return max(last + COLUMN + PAD, MIN_WIDTH), HEADER + rows * (row_height() + PAD)


def row_height() -> int:
    """Height of one sheet row: the framed image and its caption."""
    return CELL_HEIGHT + 2 * BORDER + CAPTION


def cell_x(column: int, first_right: bool = False) -> int:
    """Left edge of a column: -1 is the query, 0.. the matches; with ``first_right``, ``column``
    is the number of matches and the edge is that of the first-right-match column after them."""
    if column < 0:
        return PAD
    return PAD + COLUMN + GAP + column * (COLUMN + PAD) + (GAP if first_right else 0)


def cell_origin(row: int, column: int, first_right: bool = False) -> tuple[int, int]:
    """Top-left corner of the image frame of sheet ``row``, ``column`` (-1 query, 0.. matches;
    with ``first_right``, ``column`` is the number of matches and the frame is the first right
    match's)."""
    x = cell_x(column, first_right) + (COLUMN - CELL_WIDTH - 2 * BORDER) // 2
    return x, HEADER + row * (row_height() + PAD)


def match_colour(right: bool | None) -> tuple[int, int, int]:
    """The border colour of a match: right, wrong, or unknown identity."""
    return UNKNOWN_COLOUR if right is None else RIGHT_COLOUR if right else WRONG_COLOUR


def identity_line(pid: int | None, camid: int | None) -> str:
    """"id 650, camid 0" with what is known (camids as the CSV and --json give them)."""
    parts = [f"id {pid}" if pid is not None and pid >= 0 else "",
             f"camid {camid}" if camid is not None and camid >= 0 else ""]
    return ", ".join(p for p in parts if p)


@functools.lru_cache(maxsize=None)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans at ``size`` pixels, the font of the report figures (matplotlib ships it, and
    is found without being imported); Pillow's bundled font where it is missing."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        with contextlib.suppress(OSError, ImportError):
            return ImageFont.truetype(str(path), size)
    try:
        return ImageFont.load_default(size)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType
        return ImageFont.load_default()


def fit(text: str, size: int, width: int) -> str:
    """``text`` shortened in its middle with "…" until it is at most ``width`` pixels wide, so
    both a file name's identity prefix and its suffix stay readable."""
    f = font(size)
    if f.getlength(text) <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        head = (keep + 1) // 2
        short = text[:head] + "…" + text[len(text) - (keep - head):]
        if f.getlength(short) <= width:
            return short
    return "…"


def wrap(text: str, size: int, width: int, lines: int) -> list[str]:
    """``text`` broken at spaces into at most ``lines`` lines of ``width`` pixels; the last one
    shortened if the text does not fit."""
    f, out, current = font(size), [], ""
    words = text.split(" ")
    for i, word in enumerate(words):
        trial = f"{current} {word}".strip()
        if f.getlength(trial) <= width or not current:
            current = trial
            continue
        out.append(current)
        current = word
        if len(out) == lines - 1:
            current = " ".join(words[i:])
            break
    out.append(current)
    return [fit(line, size, width) for line in out[:lines]]


def layout_sheet(rows: list[SheetRow], title: str | Sequence[str] = ()) -> SheetLayout:
    """Place the title, the legend, the column heads and every tile of ``rows``.

    Every row gets as many columns as the longest row; missing matches stay blank.
    """
    columns = max((len(r.matches) for r in rows), default=0)
    first_right = any(r.first_right is not None for r in rows)
    width, height = sheet_size(len(rows), columns, first_right)
    out = SheetLayout((width, height))
    _title(out, [title] if isinstance(title, str) else list(title), width)
    _legend(out, rows, PAD + TITLE_LINES * TITLE_LINE)
    heads = HEADER - PAD - LINE
    out.texts.append(Placed(cell_x(-1) + 2, heads, "query", colour=NOTE_COLOUR))
    if columns:
        out.texts.append(Placed(cell_x(0) + 2, heads, "matches, nearest first", colour=NOTE_COLOUR))
    if first_right:
        out.texts.append(Placed(cell_x(columns, True) + 2, heads, FIRST_RIGHT_HEAD, colour=NOTE_COLOUR))
    for r, row in enumerate(rows):
        cells = [(-1, False, row.query), *((c, False, t) for c, t in enumerate(row.matches))]
        if row.first_right is not None:
            cells.append((columns, True, row.first_right))
        for column, after, tile in cells:
            x, y = cell_origin(r, column, after)
            out.tiles.append(Placed(x, y, tile=tile))
            left = cell_x(column, after) + 2
            for n, line in enumerate(tile.lines[:CAPTION_LINES]):
                text_y = y + CELL_HEIGHT + 2 * BORDER + 1 + n * LINE
                size = CAPTION_SIZES[n]
                out.texts.append(Placed(left, text_y, fit(line, size, COLUMN - 4), size=size,
                                        colour=TEXT_COLOUR if n == 0 else NOTE_COLOUR))
    return out


def _title(out: SheetLayout, paragraphs: list[str], width: int) -> None:
    """The headline, then the notes, wrapped to the sheet's width in :data:`TITLE_LINES` lines."""
    y, left = PAD, TITLE_LINES
    for n, text in enumerate(p for p in paragraphs if p):
        size, colour = (13, TEXT_COLOUR) if n == 0 else (11, NOTE_COLOUR)
        for line in wrap(text, size, width - 2 * PAD, left) if left else []:
            out.texts.append(Placed(PAD, y, line, colour=colour, size=size))
            y, left = y + TITLE_LINE, left - 1


def _legend(out: SheetLayout, rows: list[SheetRow], y: int) -> None:
    """The colour legend: the query's black, then each match colour the sheet uses."""
    used = {QUERY_COLOUR} | {t.colour for r in rows for t in (*r.matches, r.first_right) if t is not None}
    x = PAD
    f = font(11)
    out.texts.append(Placed(x, y + 3, "border:", colour=NOTE_COLOUR, size=11))
    x += int(f.getlength("border:")) + 8
    for colour, label in LEGEND_ITEMS:
        if colour not in used:
            continue
        out.swatches.append(Placed(x, y + 2, colour=colour))
        out.texts.append(Placed(x + 18, y + 3, label, size=11))
        x += 18 + int(f.getlength(label)) + 16


def draw_sheet(rows: list[SheetRow], out: str | os.PathLike, title: str | Sequence[str] = ()) -> SheetLayout:
    """Draw ``rows`` under ``title`` (a headline, then notes in smaller grey type) and write them
    to ``out`` as PNG (atomically); returns the layout drawn (its ``size`` and texts)."""
    layout = layout_sheet(rows, title)
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for s in layout.swatches:
        draw.rectangle([s.x, s.y, s.x + 13, s.y + 13], fill=s.colour)
    for t in layout.texts:
        draw.text((t.x, t.y), t.text, fill=t.colour, font=font(t.size))
    pictures: dict[Path, Image.Image] = {}  # an image on several tiles is read once
    for p in layout.tiles:
        _tile(sheet, draw, p.x, p.y, p.tile, pictures)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG", pnginfo=kind_chunk())
    return layout


def kind_chunk() -> PngImagePlugin.PngInfo:
    """The PNG text chunk that marks a file as a reidctl sheet, so a later ``--sheet`` may replace
    it without ``--force`` (:func:`reidctl.artifacts.existing_kind`)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KIND_KEY, SHEET)
    return info


def _tile(sheet: Image.Image, draw: ImageDraw.ImageDraw, x: int, y: int, tile: Tile,
          pictures: dict[Path, Image.Image]) -> None:
    draw.rectangle([x, y, x + CELL_WIDTH + 2 * BORDER - 1, y + CELL_HEIGHT + 2 * BORDER - 1], fill=tile.colour)
    path = Path(tile.image)
    if path not in pictures:
        pictures[path] = load_image(path).resize((CELL_WIDTH, CELL_HEIGHT), Image.BICUBIC)
    sheet.paste(pictures[path], (x + BORDER, y + BORDER))
