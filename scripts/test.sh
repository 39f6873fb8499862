#!/usr/bin/env bash
# README command 2: install what the tests need (first run only) and run pytest.
# Extra arguments go to pytest (e.g. `scripts/test.sh tests/test_web.py -x`).
# `--fresh-clone` (CI's mode): run the suite in a new `git clone` of HEAD in a temporary folder, with no
# `../shared` sample beside it and FACES_DATA_DIR unset, so it proves a fresh clone passes. It tests the
# committed files only: uncommitted edits are not in the clone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
cd "$REPO"

FRESH_CLONE=0
ARGS=()
for a in "$@"; do
    if [ "$a" = "--fresh-clone" ]; then FRESH_CLONE=1; else ARGS+=("$a"); fi
done

# redis-server for the tests' private Redis, Chromium for the browser test,
# docker-compose (v1) to validate docker-compose.yml.
apt_install redis-server chromium chromium-driver docker-compose
ensure_venv test

if [ "$FRESH_CLONE" -eq 1 ]; then
    if ! git diff --quiet HEAD -- pyproject.toml; then
        # The clone's scripts would reinstall .venv from its own (committed) pyproject.toml.
        say "pyproject.toml has uncommitted changes: commit them before --fresh-clone"; exit 1
    fi
    CLONE_PARENT="$(mktemp -d)"
    trap 'rm -rf "$CLONE_PARENT"' EXIT
    CLONE="$CLONE_PARENT/zhenjia"
    git clone -q --no-checkout "$REPO" "$CLONE"
    git -C "$CLONE" checkout -q --detach "$(git rev-parse HEAD)"
    # The same venv (git-ignored in the clone): scripts the tests start from the clone find it there.
    ln -s "$VENV" "$CLONE/.venv"
    cd "$CLONE"
    unset FACES_DATA_DIR
    # The clone's code first on every path, also in subprocesses started elsewhere (the venv's editable
    # install points at $REPO).
    export PYTHONPATH="$CLONE"
    where="$("$PY" -c 'import core, bot, inference_worker, trainer, tests; print(core.__file__)')"
    if [ "$where" != "$CLONE/core/__init__.py" ]; then
        say "the clone's code is not the one imported (core from $where)"; exit 1
    fi
    say "fresh clone of $(git rev-parse --short HEAD) in $CLONE (committed files only)"
fi

set +e
"$PY" -m pytest ${ARGS[@]+"${ARGS[@]}"}
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    say "pytest collected no tests: that is a failure"
    exit 1
fi
exit "$rc"
