"""Bot process settings, read once from the environment (all listed in `.env.example`)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from core.contract import DEFAULT_LANG
from core.settings import Settings, env as _env


@dataclass(frozen=True)
class BotSettings:
    service: Settings = field(default_factory=Settings)
    instance: str = "bot"  # stable consumer name in the outbox group: pending verdicts survive restarts
    web_host: str = "127.0.0.1"
    web_port: int = 8080
    web_wait_s: float = 60.0  # how long POST /api/check waits for a verdict before 504 + poll id
    telegram_token: str = ""
    telegram_base_url: str = "https://api.telegram.org/bot"
    telegram_base_file_url: str = "https://api.telegram.org/file/bot"
    telegram_webhook_url: str = ""  # empty: long polling
    telegram_webhook_secret: str = ""
    telegram_webhook_listen: str = "0.0.0.0"
    telegram_webhook_port: int = 8443
    line_channel_secret: str = ""
    line_channel_access_token: str = ""
    line_api_host: str = "https://api.line.me"
    line_data_api_host: str = "https://api-data.line.me"
    line_webhook_path: str = "/line/webhook"
    public_base_url: str = ""  # public HTTPS address of the web port; LINE fetches marked images from it
    group_event_max_age_s: int = 120  # older group messages are not answered: no late noise
    user_rate_per_min: int = 6
    chat_rate_per_min: int = 20
    default_lang: str = DEFAULT_LANG
    inflight_check_s: float = 10.0  # how often (and after how long) a check lost with Redis is looked for

    @property
    def telegram_enabled(self) -> bool:
        return bool(self.telegram_token)

    @property
    def line_enabled(self) -> bool:
        return bool(self.line_channel_secret and self.line_channel_access_token)

    def chat_platforms(self) -> list[str]:
        """The chat adapters to run (module `bot.<name>` each): those whose credentials are set."""
        return [name for name, on in (("telegram", self.telegram_enabled), ("line", self.line_enabled)) if on]

    @classmethod
    def from_env(cls) -> "BotSettings":
        d = cls()
        return cls(
            service=Settings.from_env(),
            instance=_env("BOT_INSTANCE", socket.gethostname()),
            web_host=_env("WEB_HOST", d.web_host),
            web_port=int(_env("WEB_PORT", str(d.web_port))),
            web_wait_s=float(_env("WEB_WAIT_S", str(d.web_wait_s))),
            telegram_token=_env("TELEGRAM_BOT_TOKEN"),
            telegram_base_url=_env("TELEGRAM_API_BASE_URL", d.telegram_base_url),
            telegram_base_file_url=_env("TELEGRAM_API_FILE_URL", d.telegram_base_file_url),
            telegram_webhook_url=_env("TELEGRAM_WEBHOOK_URL"),
            telegram_webhook_secret=_env("TELEGRAM_WEBHOOK_SECRET"),
            telegram_webhook_listen=_env("TELEGRAM_WEBHOOK_LISTEN", d.telegram_webhook_listen),
            telegram_webhook_port=int(_env("TELEGRAM_WEBHOOK_PORT", str(d.telegram_webhook_port))),
            line_channel_secret=_env("LINE_CHANNEL_SECRET"),
            line_channel_access_token=_env("LINE_CHANNEL_ACCESS_TOKEN"),
            line_api_host=_env("LINE_API_HOST", d.line_api_host),
            line_data_api_host=_env("LINE_DATA_API_HOST", d.line_data_api_host),
            line_webhook_path=_env("LINE_WEBHOOK_PATH", d.line_webhook_path),
            public_base_url=_env("PUBLIC_BASE_URL").rstrip("/"),
            group_event_max_age_s=int(_env("GROUP_EVENT_MAX_AGE_S", str(d.group_event_max_age_s))),
            user_rate_per_min=int(_env("USER_RATE_PER_MIN", str(d.user_rate_per_min))),
            chat_rate_per_min=int(_env("CHAT_RATE_PER_MIN", str(d.chat_rate_per_min))),
            default_lang=_env("DEFAULT_LANG", d.default_lang),
            inflight_check_s=float(_env("INFLIGHT_CHECK_S", str(d.inflight_check_s))),
        )
