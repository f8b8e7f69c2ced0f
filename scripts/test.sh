#!/usr/bin/env bash
# Every test: install, then ruff (lint and format), mypy (package, simulator, tests and bench:
# pyproject's [tool.mypy] files) and the whole pytest suite, warnings as errors (slow end-to-end
# tests included; locally `.venv/bin/pytest -m "not slow"` skips them). The 25 slowest are listed:
# the suite is held under ~20 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check streamproxy streamproxy_sim tests bench
.venv/bin/ruff format --check streamproxy streamproxy_sim tests bench
.venv/bin/mypy
set +e
.venv/bin/python -m pytest -q -ra --durations=25 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
