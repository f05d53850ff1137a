#!/usr/bin/env bash
# Install the service, then serve the default corpus on http://127.0.0.1:8000
# (the index is built on first start).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade-strategy only-if-needed -e .
# Fewer malloc arenas keep a loaded server's memory flat (docs/benchmarks.md, soak).
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
exec qa serve "$@"
