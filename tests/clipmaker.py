"""Small clips made on the fly from still faces, for tests and benches (no clip files are committed).

    make_clip([face_a, face_b], seconds=4, fps=6, size=(320, 240), fmt="mp4") -> bytes

Each face gets an equal share of the clip, one after the other (a hard cut between them), pasted into a
face-free background (smooth colour noise) and, with `moving=True`, drifting and zooming slowly, as a hand-held
phone clip would. Formats: mp4 / mov / mkv (H.264), webm (VP9), gif and webp (animated, Pillow: what chat
apps send). Everything is encoded in memory with PyAV (which bundles FFmpeg) or Pillow.

Also `truncated(data)` (the first part of a file, as an interrupted download leaves it) and `frame_times(data)`
(the presentation time of each frame, for checking what the worker sampled).
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageFilter

FaceLike = Union[bytes, str, Path, Image.Image]

CONTAINERS = {"mp4": ("mp4", "libx264"), "mov": ("mov", "libx264"), "mkv": ("matroska", "libx264"),
              "webm": ("webm", "libvpx-vp9")}
FORMATS = (*CONTAINERS, "gif", "webp")


def _face(f: FaceLike) -> Image.Image:
    if isinstance(f, Image.Image):
        return f.convert("RGB")
    if isinstance(f, (str, Path)):
        f = Path(f).read_bytes()
    with Image.open(io.BytesIO(f)) as im:
        return im.convert("RGB")


def background(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth colour noise: busy enough to look like a scene, with nothing a face detector could take for a face."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(30, 220, (9, 12, 3), dtype=np.uint8)
    return Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(5))


def frames(faces: Sequence[FaceLike | None], seconds: float, fps: float, size: tuple[int, int] = (320, 240),
           face_px: int = 120, moving: bool = True, seed: int = 0,
           places: Sequence[tuple[float, float]] | None = None) -> list[Image.Image]:
    """The clip's frames as RGB pictures. A `None` face is a stretch of background only (no face).

    `places[i]` = (x, y) of face i's centre as fractions of the frame (default: the middle). The drift is
    about a fifth of the face size per second and the zoom +-8 %: consecutive sampled frames overlap.
    """
    n = max(1, round(seconds * fps))
    w, h = size
    bg = background(size, seed)
    pics = [None if f is None else _face(f) for f in faces]
    places = list(places or [(0.5, 0.5)] * len(pics))
    out = []
    for i in range(n):
        k = min(len(pics) - 1, i * len(pics) // n)  # which face this frame shows
        t = i / fps
        frame = bg.copy()
        if pics[k] is not None:
            px = face_px * (1 + 0.08 * np.sin(2 * np.pi * t / max(seconds, 1e-3))) if moving else face_px
            px = int(round(px))
            cx, cy = places[k][0] * w, places[k][1] * h
            if moving:
                cx += 0.2 * face_px * np.sin(2 * np.pi * t / 4)
                cy += 0.1 * face_px * np.cos(2 * np.pi * t / 5)
            x = int(np.clip(cx - px / 2, 0, w - px))
            y = int(np.clip(cy - px / 2, 0, h - px))
            frame.paste(pics[k].resize((px, px), Image.Resampling.LANCZOS), (x, y))
        out.append(frame)
    return out


def encode(pictures: Sequence[Image.Image], fps: float, fmt: str = "mp4", fragmented: bool = False,
           rotation: int = 0, crf: int = 23) -> bytes:
    """Encode RGB pictures (all one size) as a clip. `rotation`: display-matrix degrees (counter-clockwise),
    the way phones store a portrait clip as landscape pixels plus a rotation tag. `fragmented`: an MP4 whose
    movie header comes first and frames follow in fragments (as streamed or recorded live), so that a cut-off
    copy still plays up to the cut; a plain MP4 from PyAV has its header at the end."""
    if fmt == "gif":
        out = io.BytesIO()
        ms = int(round(1000 / fps))
        # One adaptive palette per frame, no dithering: fast to make and small, like most GIF makers' output.
        pal = [p.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE) for p in pictures]
        pal[0].save(out, "GIF", save_all=True, append_images=pal[1:], duration=ms, loop=0, optimize=False)
        return out.getvalue()
    if fmt == "webp":
        out = io.BytesIO()
        pictures[0].save(out, "WEBP", save_all=True, append_images=list(pictures[1:]),
                         duration=int(round(1000 / fps)), loop=0, quality=80, method=0)
        return out.getvalue()
    import av

    container_fmt, codec = CONTAINERS[fmt]
    out = io.BytesIO()
    options = {"movflags": "frag_keyframe+empty_moov"} if fragmented else {}
    with av.open(out, "w", format=container_fmt, options=options) as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height = pictures[0].size
        s.pix_fmt = "yuv420p"
        if codec == "libx264":
            s.options = {"preset": "ultrafast", "crf": str(crf), "g": str(max(1, round(fps)))}
        else:
            s.options = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}
        if rotation:
            s.set_display_rotation(rotation)
        for pic in pictures:
            for packet in s.encode(av.VideoFrame.from_image(pic)):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return out.getvalue()


def make_clip(faces: Sequence[FaceLike | None], seconds: float = 2.0, fps: float = 8, size: tuple[int, int] = (320, 240),
              fmt: str = "mp4", face_px: int = 120, moving: bool = True, seed: int = 0,
              places: Sequence[tuple[float, float]] | None = None, fragmented: bool = False,
              rotation: int = 0) -> bytes:
    """A clip of `seconds` at `fps` showing each face in turn (see the module docstring)."""
    pics = frames(faces, seconds, fps, size, face_px, moving, seed, places)
    if rotation:
        # Stored sideways, displayed upright: the pixels are turned the other way before encoding.
        pics = [p.rotate(-rotation, expand=True) for p in pics]
    return encode(pics, fps, fmt, fragmented=fragmented, rotation=rotation)


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    """The first `keep` share of the bytes: a download that was cut off."""
    return data[: max(16, int(len(data) * keep))]


def frame_times(data: bytes) -> list[float]:
    """Presentation time (s, from the first frame) of every frame of a clip PyAV can decode."""
    import av

    with av.open(io.BytesIO(data)) as c:
        times = sorted(float(f.time) for f in c.decode(c.streams.video[0]) if f.time is not None)
    return [t - times[0] for t in times]
