#!/usr/bin/env bash
# README command 2: install what the tests need (first run only) and run pytest.
# Extra arguments go to pytest (e.g. `scripts/test.sh tests/test_web.py -x`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
cd "$REPO"

# redis-server for the tests' private Redis, Chromium for the browser test,
# docker-compose (v1) to validate docker-compose.yml.
apt_install redis-server chromium chromium-driver docker-compose
ensure_venv test

set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    say "pytest collected no tests: that is a failure"
    exit 1
fi
exit "$rc"
