#!/usr/bin/env bash
# For someone with photos and videos to anonymize, no cameras: install (the first time), then serve the
# Files page on this machine only (http://127.0.0.1:8090/files). Arguments go to `streamproxy files`,
# e.g. `./scripts/files.sh --root ~/Videos` to pick files in that folder and write the results there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streamproxy files "$@"
