#!/usr/bin/env bash
# README command 1: set up (first run only) and run the service: Redis, inference worker(s), bot.
# With no chat tokens it serves the local web page; TELEGRAM_BOT_TOKEN / LINE_* add the chat bots.
# Ctrl-C (or SIGTERM) stops everything it started.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
cd "$REPO"

if [ -f .env ]; then set -a; source .env; set +a; fi  # operators' settings, never committed
WORKERS="${WORKERS:-1}"

ensure_venv ""

PIDS=()
RUNDIR=""
cleanup() {
    trap - EXIT INT TERM
    trap '' PIPE  # the terminal or a pipe may be gone already: still stop everything
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    # Give each a moment to finish its job and close, then make sure nothing is left behind.
    for _ in $(seq 1 100); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "$RUNDIR" ] && rm -rf "$RUNDIR"
    say "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${REDIS_URL:-}" ]; then
    command -v redis-server >/dev/null || apt_install redis-server
    RUNDIR="$(mktemp -d)"
    port="$(free_port)"
    # A private, memory-only Redis on loopback: images never reach the disk.
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUNDIR" \
        --loglevel warning --logfile "$RUNDIR/redis.log" &
    PIDS+=($!)
    export REDIS_URL="redis://127.0.0.1:$port/0"
    for i in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        if [ "$i" -eq 100 ]; then say "redis-server did not start:"; cat "$RUNDIR/redis.log" >&2; exit 1; fi
        sleep 0.1
    done
    say "private Redis on 127.0.0.1:$port"
fi

for _ in $(seq 1 "$WORKERS"); do
    "$PY" -m inference_worker &
    PIDS+=($!)
done
"$PY" -m bot &
PIDS+=($!)

url="http://${WEB_HOST:-127.0.0.1}:${WEB_PORT:-8080}/"
for _ in $(seq 1 100); do
    "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + 'healthz', timeout=1)" "$url" \
        2>/dev/null && break
    sleep 0.2
done
say "web page: $url  (workers: $WORKERS; Ctrl-C stops everything)"

# When any process exits on its own (a crash, a bad setting), stop the rest and report it.
set +e
wait -n
rc=$?
say "a process exited (status $rc); stopping the others"
exit "$rc"
