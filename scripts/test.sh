#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade-strategy only-if-needed -e '.[test]'
python -m pytest "$@"
