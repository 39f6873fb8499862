"""Picture or clip? Told from the first bytes (magic numbers), before anything decodes them.

The bot uses it to apply the right limits and rate-limit cost, the worker to pick its decoder. Import-light
on purpose (no Pillow, no PyAV). A wrong guess costs nothing worse than the other decoder's clear
`unreadable` reason.
"""

from __future__ import annotations

# ISO base media (MP4, MOV, 3GP, M4V): a size, then one of these box types at bytes 4..8.
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
_EBML = b"\x1a\x45\xdf\xa3"  # Matroska / WebM


def is_clip(data: bytes) -> bool:
    """True for video containers (MP4/MOV/WebM/MKV) and for animated GIF / WebP; False for still pictures."""
    head = data[:64]
    if head[4:8] in _ISO_BOXES or head.startswith(_EBML):
        return True
    if head.startswith((b"GIF87a", b"GIF89a")):
        # A GIF with a looping extension or several frames' graphic-control blocks is an animation.
        return b"NETSCAPE2.0" in data[:4096] or data.count(b"\x21\xf9\x04", 0, 1 << 20) > 1
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP" and head[12:16] == b"VP8X":
        return bool(head[20] & 0x02)  # VP8X feature flags: bit 1 = animation
    return False


def media_kind(data: bytes) -> str:
    """`clip` or `picture` (what the bot counts, limits and words by)."""
    return "clip" if is_clip(data) else "picture"
