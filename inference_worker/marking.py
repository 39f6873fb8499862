"""The marked copy of a checked picture: each face boxed in its verdict's colour, with label and percent."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

from core.contract import FaceVerdict

MAX_SIDE = 1280  # chat apps show no more; keeps the copy small in Redis
COLOURS = {"fake": (220, 38, 38), "real": (22, 163, 74), "unsure": (234, 179, 8)}


def marked_jpeg(image: Image.Image, faces: list[FaceVerdict], quality: int = 85) -> bytes:
    """JPEG bytes of `image` (RGB), at most MAX_SIDE px, with a box and 'LABEL · NN% fake' on each face."""
    scale = min(1.0, MAX_SIDE / max(image.size))
    canvas = image.copy() if scale == 1.0 else image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(max(canvas.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(canvas.size) / 40)))
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
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=quality)
    return out.getvalue()
