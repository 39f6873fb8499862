# Shared set-up steps for scripts/run.sh and scripts/test.sh (sourced, not run).
# Idempotent: each step checks first, so a second run only costs a few checks.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PY="$VENV/bin/python"

say() { printf '[zhenjia] %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        say "need root to run: $*"; return 1; fi
}

APT_UPDATED=0
# apt_install PKG...: install the Debian packages that are not installed yet (apt-get update once).
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    if [ "$APT_UPDATED" -eq 0 ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_venv EXTRAS: a venv in the repo with the project installed (editable) with EXTRAS (comma-separated,
# e.g. "bot,worker"), redone only when pyproject.toml changed since the last install.
ensure_venv() {
    local extras="$1" base
    base="$(command -v python3.11 || command -v python3 || true)"
    if [ -z "$base" ] || ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        say "Python 3.11 or newer is needed (python3.11 or python3 on PATH)"; exit 1
    fi
    if [ ! -x "$PY" ]; then
        say "creating $VENV"
        if ! "$base" -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            apt_install python3-venv
            "$base" -m venv "$VENV"
        fi
    fi
    local want stamp="$VENV/.zhenjia-installed${extras:+-${extras//,/-}}"
    want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
    # The test extra includes every role's (zhenjia[bot,worker,train]): an install with it satisfies any.
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] &&
            [ "$(cat "$VENV/.zhenjia-installed-test" 2>/dev/null)" != "$want" ]; then
        say "installing the project into .venv${extras:+ with [$extras]} (first run: a few minutes)"
        "$PY" -m pip install -q -e "$REPO${extras:+[$extras]}"
        echo "$want" > "$stamp"
    fi
}

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
