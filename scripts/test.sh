#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser tests drive Debian's chromium; Playwright's own browser download fails offline.
if ! command -v chromium >/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
# The [ray] extra too: the distributed tests start a real local Ray cluster.
python -m pip install --quiet --upgrade-strategy only-if-needed -e '.[test,ray]'
# Lint, format and type checks first: they take seconds, the tests minutes.
python -m ruff check .
python -m ruff format --check .
python -m mypy
python -m pytest "$@"
