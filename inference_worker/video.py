"""Safe decoding of untrusted clip bytes (MP4/MOV/WebM/MKV, animated GIF and WebP) into a few sampled frames.

Everything happens in memory (never on disk). `open_clip` checks the limits from the container's headers and
one cheap pass over its packets (no decoding): too many bytes, seconds, pixels or frames, or bytes that are no
clip we read, raise `Unreadable` with the reason the user is told. `ClipReader.samples()` then decodes and
yields only the planned frames (`sample_plan`: evenly spread from the first frame to the last, at most
`clip_sample_fps` per second and `clip_sample_frames` in all), one at a time as RGB pictures with the
container's rotation applied; every other decoded frame is dropped at once, so memory stays at about one
frame plus the decoder's own buffers however long the clip is. Where a keyframe lies between the last decoded
frame and the next planned one, the reader seeks to it instead of decoding the stretch in between, so a
long clip is not decoded whole.

Decoders: PyAV (FFmpeg, bundled in its wheels) for the video containers and GIF, with the demuxer forced
from the magic bytes (FFmpeg never guesses a format that could open other files, e.g. a playlist) and only
the codecs phones and chat apps produce. FFmpeg cannot decode animated WebP, so Pillow (libwebp) does that,
after a small RIFF walk that reads the frame count and durations without decoding anything.
"""

from __future__ import annotations

import bisect
import io
import logging
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator

from PIL import Image

from .decode import Unreadable, to_rgb

log = logging.getLogger(__name__)

# What phones, browsers and chat apps record or convert to. Anything else is refused (`not_an_image`)
# rather than handed to one of FFmpeg's hundreds of rarely used decoders.
VIDEO_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "libvpx", "libvpx-vp9", "av1", "libdav1d", "libaom-av1",
                          "mpeg4", "h263", "mjpeg", "gif", "theora", "mpeg1video", "mpeg2video"})
# Seek to a keyframe only when that skips at least this many frames; otherwise decoding on is cheaper.
SEEK_MIN_SKIP = 12
# Browsers show GIF/WebP frames with a delay of 10 ms or less for 100 ms; so do we (duration and sampling).
MIN_ANIMATION_DELAY_MS = 20
DEFAULT_ANIMATION_DELAY_MS = 100


@dataclass
class Limits:
    max_bytes: int
    max_seconds: float
    max_pixels: int
    max_frames: int
    sample_fps: float
    sample_frames: int

    @classmethod
    def from_settings(cls, s: Any) -> "Limits":
        return cls(s.max_video_bytes, s.max_video_s, s.max_video_pixels, s.max_video_frames, s.clip_sample_fps,
                   s.clip_sample_frames)


@dataclass
class Sample:
    """One sampled frame."""

    index: int  # position among the sampled frames, 0-based
    frame_no: int  # the frame's number in the clip, 0-based, in presentation order
    time_s: float  # seconds from the first frame
    image: Image.Image  # RGB, rotation applied


@dataclass
class ClipInfo:
    format: str  # MP4, MOV, WEBM, MKV, GIF, WEBP
    width: int  # as displayed (rotation applied)
    height: int
    duration_s: float
    fps: float
    frames: int  # frames in the stream
    codec: str = ""

    def info(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "format": self.format,
                "duration_s": round(self.duration_s, 3), "fps": round(self.fps, 3)}


def sample_plan(times: list[float], max_fps: float, max_frames: int) -> list[int]:
    """Indices into `times` (sorted presentation times) of the frames to check.

    k frames, evenly spread from the first frame to the last: k = 1 + floor(span * max_fps), so neighbours are
    at least 1 / max_fps apart, capped at `max_frames` and at the number of frames. Each is the frame nearest
    its ideal time; the list is increasing, and with uneven frame times a frame closer than half of 1 / max_fps
    to the one before is left out (fewer frames, never a burst).
    """
    n = len(times)
    if n == 0:
        return []
    span = times[-1] - times[0]
    k = min(n, max(1, int(max_frames)), 1 + int(span * max_fps + 1e-9)) if max_fps > 0 else min(n, max_frames)
    if k <= 1:
        return [0]
    out: list[int] = []
    for i in range(k):
        ideal = times[0] + span * i / (k - 1)
        j = bisect.bisect_left(times, ideal)
        if j > 0 and (j == n or ideal - times[j - 1] <= times[j] - ideal):
            j -= 1
        if out and (j <= out[-1] or (max_fps > 0 and times[j] - times[out[-1]] < 0.5 / max_fps)):
            continue  # uneven frame times: no frame near this one's ideal time that is not a near-repeat
        out.append(j)
    return out


def _format_of(data: bytes) -> str:
    """MP4 / MOV / WEBM / MKV / GIF / WEBP from the magic bytes (core.media.is_clip let them through)."""
    head = data[:64]
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "WEBM" if b"webm" in head else "MKV"
    if head[4:8] == b"ftyp" and head[8:12] == b"qt  ":
        return "MOV"
    return "MP4"


_DEMUXERS = {"MP4": "mov", "MOV": "mov", "WEBM": "matroska", "MKV": "matroska", "GIF": "gif"}


# Top-level boxes of ISO base media files (ISO/IEC 14496-12, QuickTime): anything else is not such a file.
_ISO_TOP_LEVEL = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"meta", b"pdin", b"moof",
                            b"mfra", b"styp", b"sidx", b"ssix", b"prft", b"emsg", b"pnot", b"junk", b"PICT"})


def _iso_damage(data: bytes) -> str:
    """Why FFmpeg could not open an ISO (MP4/MOV) file: `truncated` when its top-level boxes run past the end
    of the bytes or the movie header never comes, `not_an_image` when the boxes are not boxes at all."""
    pos, seen_moov = 0, False
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind not in _ISO_TOP_LEVEL:
            return "not_an_image"
        if size == 1 and pos + 16 <= len(data):
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        elif size == 0:
            size = len(data) - pos
        if size < 8:
            return "not_an_image"
        seen_moov |= kind == b"moov"
        if pos + size > len(data):
            return "truncated"
        pos += size
    return "not_an_image" if seen_moov else "truncated"


class ClipReader:
    """A clip that passed every limit; `samples()` decodes the planned frames."""

    def __init__(self, data: bytes, info: ClipInfo, plan_frames: list[int], plan_times: list[float],
                 limits: Limits) -> None:
        self._data = data
        self.info = info
        self.plan = plan_frames  # frame numbers to sample, increasing
        self.plan_times = plan_times
        self.limits = limits
        self.notes: list[str] = []  # reasons to report: "truncated" when the clip ends before its header says
        self.decoded = 0  # frames the decoder produced (sampled or not): how much of the clip was decoded

    def samples(self) -> Iterator[Sample]:
        raise NotImplementedError


class _AvReader(ClipReader):
    def __init__(self, data: bytes, info: ClipInfo, plan_frames: list[int], plan_times: list[float],
                 limits: Limits, demuxer: str, pts: list[int], keyframes: list[int]) -> None:
        super().__init__(data, info, plan_frames, plan_times, limits)
        self._demuxer = demuxer
        self._pts = pts  # every frame's presentation timestamp, sorted
        self._keyframes = keyframes  # keyframes' timestamps, sorted

    def samples(self) -> Iterator[Sample]:
        import av

        targets = [self._pts[i] for i in self.plan]
        got = 0
        try:
            container = av.open(io.BytesIO(self._data), mode="r", format=self._demuxer)
        except Exception as exc:  # it opened a moment ago: only a decoder bug gets here
            raise Unreadable("truncated", type(exc).__name__) from None
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames: Iterator[Any] | None = None
            last_pts: int | None = None  # of the last frame decoded
            for i, target in enumerate(targets):
                kf_i = bisect.bisect_right(self._keyframes, target) - 1
                kf = self._keyframes[kf_i] if kf_i >= 0 else None
                if frames is None or (kf is not None and last_pts is not None and kf > last_pts and
                                      bisect.bisect_left(self._pts, kf) - bisect.bisect_right(self._pts, last_pts)
                                      >= SEEK_MIN_SKIP):
                    if frames is not None:
                        container.seek(kf, stream=stream, backward=True, any_frame=False)
                    frames = container.decode(stream)
                frame = None
                for candidate in frames:
                    self.decoded += 1
                    pts = candidate.pts if candidate.pts is not None else (last_pts or 0) + 1
                    last_pts = pts
                    if candidate.width * candidate.height > self.limits.max_pixels:
                        raise Unreadable("too_many_pixels", f"{candidate.width}x{candidate.height} mid-stream")
                    if pts >= target:
                        frame = candidate
                        break
                if frame is None:
                    break  # the stream ended before this frame: cut short
                image = _rotated(frame.to_image(), frame)
                del frame
                if got == 0:
                    self.info.width, self.info.height = image.size  # as displayed
                got += 1
                yield Sample(i, self.plan[i], self.plan_times[i], image)
        except Unreadable:
            raise
        except Exception as exc:  # FFmpeg's errors (corrupt or cut-off data) and any decoder surprise
            log.info("clip_decode_stopped after=%d/%d error=%s", got, len(targets), type(exc).__name__)
        finally:
            container.close()
        if got == 0:
            raise Unreadable("truncated", "no decodable frame")
        if got < len(targets) and "truncated" not in self.notes:
            self.notes.append("truncated")


def _rotated(image: Image.Image, frame: Any) -> Image.Image:
    """Apply the display matrix's rotation (phones store portrait clips as landscape pixels plus a tag)."""
    try:
        deg = int(round(frame.rotation or 0)) % 360
    except Exception:  # no display matrix, or a PyAV without the attribute
        return image
    if deg == 0:
        return image
    exact = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    if deg in exact:  # counter-clockwise, like PyAV's angle
        return image.transpose(exact[deg])
    return image.rotate(deg, expand=True, resample=Image.Resampling.BILINEAR)


def _open_av(data: bytes, fmt: str, limits: Limits) -> ClipReader:
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r", format=_DEMUXERS[fmt])
    except Exception as exc:  # av.FFmpegError subclasses, and ValueError/OSError/EOFError from the reader
        reason = _iso_damage(data) if fmt in ("MP4", "MOV") else ("truncated" if fmt == "GIF" else "not_an_image")
        raise Unreadable(reason, type(exc).__name__) from None
    try:
        if not container.streams.video:
            raise Unreadable("not_an_image", "no video stream")
        stream = container.streams.video[0]
        cc = stream.codec_context
        codec = cc.name if cc is not None else ""
        if codec not in VIDEO_CODECS:
            raise Unreadable("not_an_image", f"codec {codec!r}")
        w, h = int(cc.width or 0), int(cc.height or 0)
        if w * h > limits.max_pixels:
            raise Unreadable("too_many_pixels", f"{w}x{h}")
        if container.duration and container.duration / 1e6 > limits.max_seconds:
            raise Unreadable("clip_too_long", f"{container.duration / 1e6:.1f} s")
        if stream.frames and stream.frames > limits.max_frames:
            raise Unreadable("too_many_frames", f"{stream.frames} frames")
        declared_frames = int(stream.frames or 0)
        declared_s = (container.duration or 0) / 1e6
        tb = float(stream.time_base or 0) or 1e-3
        # One pass over the packets, nothing decoded: the real frame count and times, whatever the header says.
        pts: list[int] = []
        keyframes: list[int] = []
        cut = False
        try:
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None or packet.size == 0:
                    continue
                pts.append(stamp)
                if packet.is_keyframe:
                    keyframes.append(stamp)
                if len(pts) > limits.max_frames:
                    raise Unreadable("too_many_frames", f"> {limits.max_frames} frames")
                if len(pts) % 64 == 0 and (max(pts) - min(pts)) * tb > limits.max_seconds:
                    raise Unreadable("clip_too_long", "by its packets")
        except Unreadable:
            raise
        except Exception as exc:
            cut = True
            log.info("clip_demux_stopped packets=%d error=%s", len(pts), type(exc).__name__)
    finally:
        container.close()
    if fmt == "GIF" and not data.rstrip(b"\0").endswith(b";") and len(pts) > 1:
        cut = True  # no trailer: the last frame's data may be partial
        pts.pop()
    if not pts:
        raise Unreadable("truncated", "no frames")
    pts = sorted(set(pts))
    keyframes = sorted(set(keyframes)) or [pts[0]]
    times = [(p - pts[0]) * tb for p in pts]
    if times[-1] > limits.max_seconds:
        raise Unreadable("clip_too_long", f"{times[-1]:.1f} s")
    step = _median_step(times)
    duration = times[-1] + step
    # Fewer frames than the header counts, or a much shorter stretch than it declares: the file was cut off.
    if (declared_frames and len(pts) < declared_frames) or (
            declared_s and duration < declared_s - max(0.5, 2 * step)):
        cut = True
    fps = (len(times) - 1) / times[-1] if times[-1] > 0 else (1 / step if step else 0.0)
    if w <= 0 or h <= 0:
        raise Unreadable("not_an_image", "zero size")
    plan = sample_plan(times, limits.sample_fps, limits.sample_frames)
    info = ClipInfo(fmt, w, h, duration, fps, len(times), codec)  # turned by the first frame's rotation
    reader = _AvReader(data, info, plan, [times[i] for i in plan], limits, _DEMUXERS[fmt], pts, keyframes)
    if cut:
        reader.notes.append("truncated")
    return reader


def _median_step(times: list[float]) -> float:
    steps = sorted(b - a for a, b in zip(times, times[1:]) if b > a)
    return steps[len(steps) // 2] if steps else 0.0


# ---------------------------------------------------------------- animated WebP (Pillow)

def webp_frames(data: bytes) -> tuple[int, int, list[int]]:
    """(canvas width, height, each frame's duration in ms) from the RIFF chunks, without decoding; raises
    Unreadable(`truncated` / `not_an_image`)."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise Unreadable("not_an_image", "not a RIFF WEBP")
    riff_end = 8 + struct.unpack("<I", data[4:8])[0]
    width = height = 0
    durations: list[int] = []
    pos = 12
    end = min(len(data), riff_end)
    while pos + 8 <= end:
        kind, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if len(body) < size:
            raise Unreadable("truncated", f"chunk {kind!r} runs past the end")
        if kind == b"VP8X" and size >= 10:
            width = 1 + int.from_bytes(body[4:7], "little")
            height = 1 + int.from_bytes(body[7:10], "little")
        elif kind == b"ANMF" and size >= 16:
            durations.append(int.from_bytes(body[12:15], "little"))
        pos += 8 + size + (size & 1)
    if riff_end > len(data):
        raise Unreadable("truncated", "RIFF size past the end")
    if not durations or not width:
        raise Unreadable("not_an_image", "no animation frames")
    return width, height, durations


class _WebpReader(ClipReader):
    def samples(self) -> Iterator[Sample]:
        got = 0
        try:
            with Image.open(io.BytesIO(self._data), formats=("WEBP",)) as im:
                wanted = set(self.plan)
                order = {f: i for i, f in enumerate(self.plan)}
                for frame_no in range(max(self.plan) + 1):
                    im.seek(frame_no)  # sequential: libwebp composes each frame on the previous one
                    if frame_no in wanted:
                        im.load()
                        image = to_rgb(im.copy())
                        got += 1
                        i = order[frame_no]
                        yield Sample(i, frame_no, self.plan_times[i], image)
        except Unreadable:
            raise
        except Exception as exc:  # Pillow: OSError / EOFError / ValueError on corrupt frames
            log.info("clip_decode_stopped after=%d/%d error=%s", got, len(self.plan), type(exc).__name__)
        if got == 0:
            raise Unreadable("truncated", "no decodable frame")
        if got < len(self.plan) and "truncated" not in self.notes:
            self.notes.append("truncated")


def _open_webp(data: bytes, limits: Limits) -> ClipReader:
    width, height, durations = webp_frames(data)
    if width * height > limits.max_pixels:
        raise Unreadable("too_many_pixels", f"{width}x{height}")
    if len(durations) > limits.max_frames:
        raise Unreadable("too_many_frames", f"{len(durations)} frames")
    ms = [d if d >= MIN_ANIMATION_DELAY_MS else DEFAULT_ANIMATION_DELAY_MS for d in durations]
    duration = sum(ms) / 1000
    if duration > limits.max_seconds:
        raise Unreadable("clip_too_long", f"{duration:.1f} s")
    times, t = [], 0
    for d in ms:
        times.append(t / 1000)
        t += d
    fps = len(ms) / duration if duration else 0.0
    plan = sample_plan(times, limits.sample_fps, limits.sample_frames)
    info = ClipInfo("WEBP", width, height, duration, fps, len(ms), "webp")
    return _WebpReader(data, info, plan, [times[i] for i in plan], limits)


def open_clip(data: bytes, limits: Limits) -> ClipReader:
    """Check a clip against the limits and plan its samples; raise Unreadable(reason) when it must not or
    cannot be checked. Nothing is decoded yet."""
    if len(data) > limits.max_bytes:
        raise Unreadable("too_large_bytes", f"{len(data)} > {limits.max_bytes} bytes")
    if len(data) < 16:
        raise Unreadable("not_an_image", "too short")
    fmt = _format_of(data)
    if fmt == "WEBP":
        return _open_webp(data, limits)
    return _open_av(data, fmt, limits)


@dataclass
class DecodedClip:
    """A whole sampled clip in memory (tests and tools; the worker streams `samples()` instead)."""

    info: ClipInfo
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def decode_clip(data: bytes, limits: Limits) -> DecodedClip:
    reader = open_clip(data, limits)
    samples = list(reader.samples())
    return DecodedClip(reader.info, samples, list(reader.notes))
