"""`python -m bot`: the web page always, plus Telegram and LINE when their credentials are set."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import re
import signal
import sys
from pathlib import Path

from aiohttp import web

from bot import web as web_adapter
from bot.checks import Checker, deliver_forever
from bot.adapter import Platform
from bot.inflight import watch_forever
from bot.settings import BotSettings
from core.logs import configure_logging

log = logging.getLogger("bot")


async def serve(settings: BotSettings, stop_event: asyncio.Event) -> None:
    """Run the web page and every enabled chat adapter on one aiohttp Application until `stop_event` is set.

    Each chat platform is a module `bot.<name>` with a class `Adapter` (the `bot.adapter.Platform` interface:
    start, stop, send); its outbox of finished checks is read here, so an adapter never sees Redis streams.
    """
    checker = Checker(settings.service)
    app = web.Application(client_max_size=web_adapter.client_max_size(settings))
    web_adapter.setup(app, checker, settings)
    # Imported only when enabled: a web-only deployment never loads the chat SDKs.
    adapters: list[Platform] = [importlib.import_module(f"bot.{name}").Adapter(checker, settings, app)
                                for name in settings.chat_platforms()]
    # No access log (it would carry query strings; handlers log their own lines). A short shutdown
    # timeout: a page still waiting for a verdict must not hold a restart for WEB_WAIT_S.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    started: list[Platform] = []
    deliveries: list[asyncio.Task] = []
    try:
        await runner.setup()
        for adapter in adapters:  # before the web port opens: a LINE webhook may arrive at once
            await adapter.start()
            started.append(adapter)
            deliveries.append(asyncio.create_task(
                deliver_forever(checker, adapter.name, adapter.send, consumer=settings.instance),
                name=f"{adapter.name}-delivery"))
            deliveries.append(asyncio.create_task(
                watch_forever(checker.inflight, adapter.name, adapter.flow.send_again, settings.inflight_check_s),
                name=f"{adapter.name}-inflight"))
        site = web.TCPSite(runner, settings.web_host, settings.web_port)
        await site.start()
        log.info("web_listening url=http://%s:%d/ chat=%s", settings.web_host, settings.web_port,
                 ",".join(a.name for a in adapters) or "none")
        await stop_event.wait()
        log.info("shutting_down")
    finally:
        for task in deliveries:
            task.cancel()
        await asyncio.gather(*deliveries, return_exceptions=True)
        for adapter in reversed(started):
            await adapter.stop()
        await runner.cleanup()
        await checker.close()
        log.info("stopped")


async def amain() -> None:
    settings = BotSettings.from_env()
    configure_logging(settings.service.log_level)
    log.info("starting %s web_host=%s web_port=%d", settings.service.describe(), settings.web_host,
             settings.web_port)
    if bool(settings.line_channel_secret) != bool(settings.line_channel_access_token):
        # Half a LINE configuration is a typo, not a choice: say so instead of silently running without LINE.
        log.warning("line_disabled reason=needs_both_LINE_CHANNEL_SECRET_and_LINE_CHANNEL_ACCESS_TOKEN")
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    await serve(settings, stop_event)


ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def settings_help() -> str:
    """Every setting with its default and one-line meaning, from `.env.example` (the one documented list)."""
    try:
        lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    except OSError:
        return "Settings come from the environment; .env.example in the repository lists them all."
    out = ["settings it reads (environment variables; .env.example has every process's):"]
    ours = True
    for prev, line in zip(lines, lines[1:]):
        if line.startswith("# ---"):  # sections name their readers; skip the workers' and the scripts' own
            ours = "worker" not in line.split("(")[0].lower() and "scripts/" not in line
            continue
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=(.*)$", line)
        if ours and m and prev.startswith("# "):
            default = m.group(2).strip() or "(empty)"
            out.append(f"  {m.group(1)}={default}\n      {prev[2:].strip()}")
    return "\n".join(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bot", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve the web page and JSON API, plus the Telegram and LINE bots when their credentials "
                    "are set. Takes no options: everything is a setting from the environment.",
        epilog=settings_help())
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parse_args(sys.argv[1:] if argv is None else argv)  # --help exits 0, unknown flags exit 2, before any I/O
    try:
        asyncio.run(amain())
    except OSError as exc:  # the port is taken, most often
        logging.getLogger("bot").error("cannot_start error=%s", exc)
        return 2
    except ValueError as exc:  # a malformed number in the environment
        print(f"bad setting: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
