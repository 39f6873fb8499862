"""The marked copy of a checked picture: each face boxed in its verdict's colour, with label and percent.

Clips get a contact sheet instead: a small grid of the most telling sampled frames, marked the same way.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from core.contract import FaceVerdict

MAX_SIDE = 1280  # chat apps show no more; keeps the copy small in Redis
COLOURS = {"fake": (220, 38, 38), "real": (22, 163, 74), "unsure": (234, 179, 8)}
SHEET_CELL = 320  # a contact sheet's cell: the frame fits in a 320 x 320 square
SHEET_COLUMNS = 3
SHEET_MAX_CELLS = 6
SHEET_MAX_BYTES = 150_000
SHEET_GAP = 4


def _draw_faces(canvas: Image.Image, faces: Sequence[FaceVerdict], scale: float, line: int, font_px: int) -> None:
    """Box each face (its box scaled by `scale`) in its label's colour with 'LABEL · NN% fake' above it."""
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=font_px)
    for f in faces:
        x, y, w, h = (v * scale for v in f.box)
        colour = COLOURS.get(f.label, (255, 255, 255))
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=line)
        # Always the calibrated chance of fake: with an asymmetric threshold a "REAL 46%" would mislead.
        text = f"{f.label.upper()} · {f.p_fake * 100:.0f}% fake"
        width = draw.textlength(text, font=font)
        tx = min(max(0.0, x), max(0.0, canvas.width - width - line))  # keep the label inside the picture
        ty = y - font.size - 2 * line
        if ty < 0:
            ty = min(y + h + line, canvas.height - font.size - 2 * line)
        box = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle((box[0] - line, box[1] - line, box[2] + line, box[3] + line), fill=colour)
        draw.text((tx, ty), text, fill=(255, 255, 255), font=font)


def marked_jpeg(image: Image.Image, faces: list[FaceVerdict], quality: int = 85) -> bytes:
    """JPEG bytes of `image` (RGB), at most MAX_SIDE px, with a box and 'LABEL · NN% fake' on each face."""
    scale = min(1.0, MAX_SIDE / max(image.size))
    canvas = image.copy() if scale == 1.0 else image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    _draw_faces(canvas, faces, scale, max(2, round(max(canvas.size) / 300)), max(12, round(max(canvas.size) / 40)))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=quality)
    return out.getvalue()


def contact_sheet(cells: Sequence[tuple[Image.Image, str, Sequence[FaceVerdict]]], quality: int = 85) -> bytes:
    """JPEG of up to SHEET_MAX_CELLS frames in a grid (3 per row), each fitted into 320 x 320 px.

    A cell is (frame picture, caption such as 'frame 3/20 · 1.0 s', faces with boxes in that picture's
    pixels). Faces are marked as on a picture; the caption sits in the cell's lower left corner. Above
    SHEET_MAX_BYTES the JPEG quality steps down.
    """
    cells = list(cells)[:SHEET_MAX_CELLS]
    if not cells:
        raise ValueError("a contact sheet needs at least one frame")
    tiles = []
    for image, caption, faces in cells:
        scale = min(SHEET_CELL / image.width, SHEET_CELL / image.height)
        tile = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                            Image.Resampling.LANCZOS)
        _draw_faces(tile, faces, scale, 2, 12)
        draw = ImageDraw.Draw(tile)
        font = ImageFont.load_default(size=11)
        box = draw.textbbox((4, tile.height - 16), caption, font=font)
        draw.rectangle((box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
        draw.text((4, tile.height - 16), caption, fill=(255, 255, 255), font=font)
        tiles.append(tile)
    cols = min(SHEET_COLUMNS, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * cell_w + (cols - 1) * SHEET_GAP, rows * cell_h + (rows - 1) * SHEET_GAP),
                      (24, 24, 24))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet.paste(tile, (c * (cell_w + SHEET_GAP) + (cell_w - tile.width) // 2,
                           r * (cell_h + SHEET_GAP) + (cell_h - tile.height) // 2))
    for q in (quality, 75, 65, 55):
        out = io.BytesIO()
        sheet.save(out, "JPEG", quality=q)
        if out.tell() <= SHEET_MAX_BYTES:
            break
    return out.getvalue()
