"""Service settings shared by the bot and the workers, read once from the environment.

Every variable here is listed in `.env.example`. Import-light: the bot imports this too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    """A setting from the environment; unset and blank both mean the default."""
    value = os.environ.get(name, "").strip()
    return value if value else default


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Durable state users chose (group modes, languages) and the requests the bot waits for. Empty: the same
    # Redis as REDIS_URL, which runs memory-only (images must never reach a disk), so a restart forgets them.
    state_redis_url: str = ""
    queue_name: str = "checks"
    models_dir: Path = REPO_ROOT / "models"
    image_ttl_s: int = 600  # image bytes live in Redis only while being checked
    result_ttl_s: int = 900  # verdicts waiting for the web page / a restarted bot
    cache_ttl_s: int = 7 * 24 * 3600  # viral forwards are answered from the cache for a week
    max_image_bytes: int = 20 * 1024 * 1024  # Telegram's own download limit for bots
    max_image_pixels: int = 40_000_000  # above this Pillow's bomb check refuses the image
    max_video_bytes: int = 20 * 1024 * 1024  # clips: Telegram's download limit for bots too
    max_video_s: float = 180.0  # longer clips are refused (clip_too_long): forwards are short
    max_video_pixels: int = 3840 * 2160  # per frame: 4K is the most a phone records
    max_video_frames: int = 20_000  # frames in the clip's stream (180 s at 110 fps); more: too_many_frames
    clip_sample_fps: float = 2.0  # at most this many frames per second are checked...
    clip_sample_frames: int = 32  # ...and at most this many per clip, spread evenly from first to last
    job_timeout_s: int = 120
    job_retries: int = 2  # tries after the first; then the user gets an honest error verdict
    max_queue_length: int = 200  # above this the bot answers "busy" instead of enqueueing
    log_level: str = "INFO"

    @classmethod
    def from_env(cls) -> "Settings":
        d = cls()
        return cls(
            redis_url=env("REDIS_URL", d.redis_url),
            state_redis_url=env("STATE_REDIS_URL"),
            queue_name=env("QUEUE_NAME", d.queue_name),
            models_dir=Path(env("MODELS_DIR", str(d.models_dir))),
            image_ttl_s=int(env("IMAGE_TTL_S", str(d.image_ttl_s))),
            result_ttl_s=int(env("RESULT_TTL_S", str(d.result_ttl_s))),
            cache_ttl_s=int(env("CACHE_TTL_S", str(d.cache_ttl_s))),
            max_image_bytes=int(env("MAX_IMAGE_BYTES", str(d.max_image_bytes))),
            max_image_pixels=int(env("MAX_IMAGE_PIXELS", str(d.max_image_pixels))),
            max_video_bytes=int(env("MAX_VIDEO_BYTES", str(d.max_video_bytes))),
            max_video_s=float(env("MAX_VIDEO_S", str(d.max_video_s))),
            max_video_pixels=int(env("MAX_VIDEO_PIXELS", str(d.max_video_pixels))),
            max_video_frames=int(env("MAX_VIDEO_FRAMES", str(d.max_video_frames))),
            clip_sample_fps=float(env("CLIP_SAMPLE_FPS", str(d.clip_sample_fps))),
            clip_sample_frames=int(env("CLIP_SAMPLE_FRAMES", str(d.clip_sample_frames))),
            job_timeout_s=int(env("JOB_TIMEOUT_S", str(d.job_timeout_s))),
            job_retries=int(env("JOB_RETRIES", str(d.job_retries))),
            max_queue_length=int(env("MAX_QUEUE_LENGTH", str(d.max_queue_length))),
            log_level=env("LOG_LEVEL", d.log_level).upper(),
        )

    @property
    def max_upload_bytes(self) -> int:
        """The most bytes anything sent may have before it is sniffed: a clip's limit or a picture's, the larger."""
        return max(self.max_image_bytes, self.max_video_bytes)

    @property
    def state_url(self) -> str:
        """Where durable state lives: STATE_REDIS_URL, or REDIS_URL in a single-Redis deployment."""
        return self.state_redis_url or self.redis_url

    def describe(self) -> str:
        """One log line of the settings, with the Redis password masked."""
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("redis_url") and "@" in str(v):
                v = str(v).split("://", 1)[0] + "://***@" + str(v).rsplit("@", 1)[1]
            parts.append(f"{f.name}={v}")
        return " ".join(parts)
