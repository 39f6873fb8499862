"""Every Redis key name the bot, the workers and the benches use, under one prefix.

One place so that a second deployment on the same Redis (another prefix) or a key audit ("what do we
keep about users, and for how long?") is one file to read. The TTLs live with the code that writes.
"""

from __future__ import annotations

PREFIX = "zhenjia"

OUTBOX_GROUP = "bot"  # the consumer group every bot process reads its platform's outbox with
SERVING_MODEL_KEY = f"{PREFIX}:model:serving"  # name@version the workers serve now


# --- the check's way through Redis (bytes and answers: memory only, short TTLs) --------------------
def image_key(request_id: str) -> str:
    """The image bytes while they wait for a worker (short TTL)."""
    return f"{PREFIX}:image:{request_id}"


def marked_key(request_id: str) -> str:
    """The marked copy (JPEG bytes, short TTL) that bots may send back."""
    return f"{PREFIX}:marked:{request_id}"


def cache_key(sha256: str) -> str:
    """Verdict cache: keyed on the hash of the image bytes, never on the bytes themselves."""
    return f"{PREFIX}:cache:{sha256}"


def result_key(request_id: str) -> str:
    """A one-element list the web adapter BLPOPs on to wait for its verdict."""
    return f"{PREFIX}:result:{request_id}"


def published_key(request_id: str) -> str:
    """Marker that makes publishing once-only: a retried or duplicated job must not answer twice."""
    return f"{PREFIX}:published:{request_id}"


def outbox_stream(platform: str) -> str:
    """Redis Stream of finished verdicts for one chat platform (consumer group: OUTBOX_GROUP)."""
    return f"{PREFIX}:outbox:{platform}"


# --- per-chat state the bot keeps (modes and languages: in the durable state Redis) -----------------
def mode_key(platform: str, chat_id: str | int) -> str:
    """A chat's group mode (all | fake | off), chosen by its members: kept without a TTL."""
    return f"{PREFIX}:mode:{platform}:{chat_id}"


def lang_key(platform: str, user_id: str | int) -> str:
    """A user's language as read from their platform profile (cached a day)."""
    return f"{PREFIX}:lang:{platform}:{user_id}"


def rate_key(platform: str, scope: str, ident: str | int, window: int) -> str:
    """A one-minute rate-limit counter; scope `user` or `chat`, or `told` (the polite refusal was sent)."""
    return f"{PREFIX}:rate:{platform}:{scope}:{ident}:{window}"


def album_key(platform: str, album_id: str) -> str:
    """The verdicts of one album (image set) while its pictures are checked; `:done` marks the answer sent."""
    return f"{PREFIX}:album:{platform}:{album_id}"


def event_key(platform: str, event_id: str | int) -> str:
    """Marker of an inbound platform event already handled (LINE webhookEventId, Telegram update_id)."""
    return f"{PREFIX}:event:{platform}:{event_id}"


# --- in the durable state Redis (STATE_REDIS_URL) ---------------------------------------------------
def inflight_key(platform: str) -> str:
    """Hash request_id → where to answer, for every chat check the bot still waits for."""
    return f"{PREFIX}:inflight:{platform}"
