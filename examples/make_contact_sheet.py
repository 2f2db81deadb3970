"""Write examples/synthetic_contact_sheet.png: a few identities of `synthetic:small`, camera by camera.

Why: the synthetic dataset only stands in for real footage if people look like people, differ
from each other in several parts, and the cameras look different. This sheet is how to check.

    python examples/make_contact_sheet.py [--ids 8] [--per-camera 1] [--colors 256] [--scale 1] [--out PATH]

The sheet is stored with a 256-colour palette by default: the images' sensor noise makes a
full-colour PNG several times larger.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from reidctl.data.synthetic import SPLIT_DIRS, ensure_synthetic

NAME = re.compile(r"([-\d]+)_c(\d)")
LABEL_H = 11


def contact_sheet(root: Path, n_ids: int, per_camera: int, scale: int) -> Image.Image:
    """Rows = test identities seen by the most cameras; columns = their images, camera by camera."""
    by_id: dict[int, dict[int, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for split in ("query", "gallery"):
        for path in sorted((root / SPLIT_DIRS[split]).glob("*.jpg")):
            pid, cam = map(int, NAME.search(path.name).groups())
            if pid > 0:
                by_id[pid][cam].append(path)
    cams = sorted({c for cams_of in by_id.values() for c in cams_of})
    chosen = sorted(by_id, key=lambda p: (-len(by_id[p]), p))[:n_ids]
    w, h = Image.open(next(iter(by_id[chosen[0]].values()))[0]).size
    cols = len(cams) * per_camera
    sheet = Image.new("RGB", (cols * w, len(chosen) * (h + LABEL_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, pid in enumerate(chosen):
        for ci, cam in enumerate(cams):
            for k, path in enumerate(by_id[pid].get(cam, [])[:per_camera]):
                x, y = (ci * per_camera + k) * w, r * (h + LABEL_H)
                sheet.paste(Image.open(path).convert("RGB"), (x, y + LABEL_H))
                draw.text((x + 2, y), f"{pid} c{cam}", fill="black")
    return sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST) if scale > 1 else sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=8, help="identities (rows)")
    ap.add_argument("--per-camera", type=int, default=1, help="images per camera (columns per camera)")
    ap.add_argument("--colors", type=int, default=256, help="palette size of the PNG (0: full colour)")
    ap.add_argument("--scale", type=int, default=1, help="integer upscaling of the sheet")
    ap.add_argument("--root", type=Path, help="an existing synthetic dataset instead of synthetic:small")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("synthetic_contact_sheet.png"))
    args = ap.parse_args()
    sheet = contact_sheet(args.root or ensure_synthetic("small"), args.ids, args.per_camera, args.scale)
    if args.colors:
        sheet = sheet.quantize(colors=args.colors, method=Image.Quantize.FASTOCTREE)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.width}×{sheet.height})")


if __name__ == "__main__":
    main()
