"""Safe decoding of untrusted image bytes into an RGB picture, or a clear `unreadable` reason."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats a chat app forwards. Limiting Pillow's plugins keeps exotic parsers away from untrusted bytes.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG also opens MPO (phone photos)

# The IJG (libjpeg) standard luminance table; encoders scale it by the quality setting.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


def _scaled_luma(quality: int) -> np.ndarray:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((_STD_LUMA * scale + 50) / 100), 1, 255)


# Sums are independent of zig-zag vs natural ordering of the table, which Pillow versions differ on.
_LUMA_SUMS = np.array([_scaled_luma(q).sum() for q in range(1, 101)])


class Unreadable(Exception):
    """The bytes cannot be checked; `reason` is one of contract.REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Decoded:
    image: Image.Image  # RGB, EXIF orientation applied
    format: str
    reasons: list[str] = field(default_factory=list)
    jpeg_quality: int | None = None  # estimated from the quantisation tables; None when not a JPEG

    def info(self) -> dict[str, object]:
        return {"width": self.image.width, "height": self.image.height, "format": self.format,
                "jpeg_quality": self.jpeg_quality}


def estimate_jpeg_quality(im: Image.Image) -> int | None:
    """The IJG quality (1-100) whose luminance table is closest to this JPEG's, or None."""
    tables = getattr(im, "quantization", None)
    if not tables or 0 not in tables:
        return None
    luma = np.asarray(tables[0], dtype=np.float64)
    if luma.size != 64:
        return None
    return int(np.argmin(np.abs(_LUMA_SUMS - luma.sum()))) + 1


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is flattened onto white like chat apps show it."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # A plain convert() clips 16-bit values at 255 (a white picture): rescale to 8 bits instead.
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        if im.mode == "I" and a.max() <= 255:
            top = 255.0
        return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> Decoded:
    """Decode untrusted bytes; raise Unreadable(reason) for anything we must not or cannot check."""
    if len(data) > max_bytes:
        raise Unreadable("too_large_bytes", f"{len(data)} > {max_bytes} bytes")
    if not data:
        raise Unreadable("not_an_image", "empty")
    reasons: list[str] = []
    # Pillow's bomb guard is a module global: set it from our settings (errors above 2x, warns above 1x).
    Image.MAX_IMAGE_PIXELS = max_pixels
    Image.init()  # registers every plugin: `formats=` below raises KeyError for one not yet loaded
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
            if im.width * im.height > max_pixels:
                raise Unreadable("too_many_pixels", f"{im.width}x{im.height}")
            fmt = im.format or "unknown"
            quality = estimate_jpeg_quality(im) if fmt in ("JPEG", "MPO") else None
            if getattr(im, "is_animated", False) and getattr(im, "n_frames", 1) > 1:
                reasons.append("animated_first_frame")
                im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im) or im
            rgb = to_rgb(im)
    except Unreadable:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Unreadable("too_many_pixels", type(exc).__name__) from None
    except UnidentifiedImageError:
        raise Unreadable("not_an_image") from None
    except (OSError, SyntaxError, EOFError) as exc:
        # Pillow reports a file that ends early as OSError("image file is truncated ...").
        reason = "truncated" if "truncat" in str(exc).lower() or isinstance(exc, EOFError) else "not_an_image"
        raise Unreadable(reason, type(exc).__name__) from None
    except (ValueError, TypeError, MemoryError) as exc:
        raise Unreadable("not_an_image", type(exc).__name__) from None
    if rgb.width < 1 or rgb.height < 1:
        raise Unreadable("not_an_image", "zero size")
    return Decoded(image=rgb, format=fmt, reasons=reasons, jpeg_quality=quality)
