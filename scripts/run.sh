#!/usr/bin/env bash
# README command 1: set up (first run only) and run the service: Redis, inference worker(s), bot.
# With no chat tokens it serves the local web page; TELEGRAM_BOT_TOKEN / LINE_* add the chat bots.
# Ctrl-C (or SIGTERM) stops everything it started.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
cd "$REPO"

if [ -f .env ]; then set -a; source .env; set +a; fi  # operators' settings, never committed
WORKERS="${WORKERS:-1}"

ensure_venv "bot,worker"  # the processes it starts; scripts/test.sh's install (all extras) also does

PIDS=()       # the bot and the workers
REDIS_PIDS=()  # stopped last: workers need Redis to finish their job and unregister
RUNDIR=""
stop_all() {  # stop_all SECONDS PID...: TERM, wait up to SECONDS, then KILL what is left
    local secs="$1" p alive
    shift
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 $((secs * 10))); do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && return 0
        sleep 0.1
    done
    for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
}
cleanup() {
    trap - EXIT INT TERM
    trap '' PIPE  # the terminal or a pipe may be gone already: still stop everything
    # A worker's warm shutdown finishes the check it is running (bounded here, RQ retries it otherwise).
    [ ${#PIDS[@]} -gt 0 ] && stop_all 30 "${PIDS[@]}"
    [ ${#REDIS_PIDS[@]} -gt 0 ] && stop_all 10 "${REDIS_PIDS[@]}"
    wait 2>/dev/null || true
    [ -n "$RUNDIR" ] && rm -rf "$RUNDIR"
    say "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_redis NAME DIR ARGS...: a redis-server on a free loopback port (left in $port), in its own session
# (so that Ctrl-C in the terminal does not stop it before the workers have finished with it).
start_redis() {
    local name="$1" dir="$2" i
    shift 2
    port="$(free_port)"
    setsid redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --loglevel warning \
        --logfile "$RUNDIR/$name.log" "$@" >/dev/null &
    REDIS_PIDS+=($!)
    for i in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        if [ "$i" -eq 100 ]; then say "redis-server ($name) did not start:"; cat "$RUNDIR/$name.log" >&2; exit 1; fi
        sleep 0.1
    done
}

if [ -z "${REDIS_URL:-}" ]; then
    command -v redis-server >/dev/null || apt_install redis-server
    RUNDIR="$(mktemp -d)"
    # The queue Redis: memory only, so images never reach the disk.
    start_redis queue "$RUNDIR" --save "" --appendonly no
    export REDIS_URL="redis://127.0.0.1:$port/0"
    say "private Redis on 127.0.0.1:$port"
    if [ -z "${STATE_REDIS_URL:-}" ]; then
        # The state Redis: group modes, languages and checks in flight, kept across restarts in state/
        # (git-ignored). No image bytes are ever written to it.
        mkdir -p "$REPO/state"
        start_redis state "$REPO/state" --save "" --appendonly yes --appendfsync everysec
        export STATE_REDIS_URL="redis://127.0.0.1:$port/0"
        say "state Redis on 127.0.0.1:$port (data in state/)"
    fi
fi

for _ in $(seq 1 "$WORKERS"); do
    "$PY" -m inference_worker &
    PIDS+=($!)
done
"$PY" -m bot &
BOT_PID=$!
PIDS+=("$BOT_PID")

url="http://${WEB_HOST:-127.0.0.1}:${WEB_PORT:-8080}/"
for _ in $(seq 1 150); do
    kill -0 "$BOT_PID" 2>/dev/null || break  # it failed (e.g. the port is taken): reported below
    if "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + 'healthz', timeout=1)" "$url" \
            2>/dev/null; then
        say "web page: $url  (workers: $WORKERS; Ctrl-C stops everything)"
        break
    fi
    sleep 0.2
done

# When any process exits on its own (a crash, a bad setting), stop the rest and report it.
set +e
wait -n
rc=$?
say "a process exited (status $rc); stopping the others"
exit "$rc"
