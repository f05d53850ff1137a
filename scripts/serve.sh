#!/usr/bin/env bash
# Install the service, then serve the default corpus on http://127.0.0.1:8000
# (the index is built on first start).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade-strategy only-if-needed -e .
# Fewer malloc arenas keep a loaded server's memory flat (docs/benchmarks.md, soak).
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
# The default corpus's readers ask in Albanian, BCS and Macedonian as well as English: serve it
# with the multilingual model (docs/evaluation.md, "Questions in the region's languages").
export QA_MODEL="${QA_MODEL:-intfloat/multilingual-e5-small}"
exec qa serve "$@"
