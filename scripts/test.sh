#!/usr/bin/env bash
# Install agentwatch with its test dependencies into ./.venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The dashboard's browser test drives Debian's chromium (through Playwright, executable_path=/usr/bin/chromium).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
    else
        sudo apt-get update
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
    fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
exec .venv/bin/python -m pytest "$@"
