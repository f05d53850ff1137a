#!/usr/bin/env bash
# Install the service, then serve the default corpus on http://127.0.0.1:8000
# (the index is built on first start).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade-strategy only-if-needed -e .
# Fewer malloc arenas keep a loaded server's memory flat (docs/benchmarks.md, soak).
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
# The chat page names the default corpus (QA_PAGE_TITLE and QA_PAGE_TAGLINE are yours to set).
export QA_PAGE_TITLE="${QA_PAGE_TITLE:-Ask the reports}"
export QA_PAGE_TAGLINE="${QA_PAGE_TAGLINE:-Questions answered from reports on child trafficking in the Western Balkans, with a link to every passage used.}"
exec qa serve "$@"
