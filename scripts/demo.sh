#!/usr/bin/env bash
# The main job: install, then start a simulated camera with real faces and the anonymizing proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streamproxy demo "$@"
