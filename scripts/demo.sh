#!/usr/bin/env bash
# Install agentwatch into ./.venv and run the demo on the embedded store.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[server]'
exec .venv/bin/agentwatch demo "$@"
