"""One logging configuration for every process: `key=value` lines, easy to grep.

Never log image bytes or message text: log request ids, hashes' prefixes, sizes and labels.
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "ts=%(asctime)s level=%(levelname)s proc=%(processName)s pid=%(process)d logger=%(name)s msg=%(message)s"


def configure_logging(level: str | None = None) -> None:
    level = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)
    # Libraries that log request URLs would leak bot tokens (Telegram puts the token in the path).
    for noisy in ("httpx", "httpcore", "telegram.ext.ExtBot", "urllib3", "aiohttp.access", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
