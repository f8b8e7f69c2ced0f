#!/usr/bin/env bash
# Creates bench/.venv-deface with deface==1.5.0 (the reference tool the benchmarks compare against).
# Idempotent: re-running only checks that the pinned version is installed.
# deface lives in its own venv so that its pins (onnxruntime, imageio, ...) never touch the project's .venv.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${HERE}/.venv-deface"
PY="${PYTHON:-python3}"
DEFACE_VERSION="1.5.0"

if [[ ! -x "${VENV}/bin/python" ]]; then
  echo "creating ${VENV} with $(${PY} --version)"
  "${PY}" -m venv "${VENV}"
fi

have="$("${VENV}/bin/python" -c 'import importlib.metadata as m; print(m.version("deface"))' 2>/dev/null || true)"
if [[ "${have}" != "${DEFACE_VERSION}" ]]; then
  "${VENV}/bin/pip" install --quiet "deface==${DEFACE_VERSION}"
fi

"${VENV}/bin/deface" --version
echo "deface ready: ${VENV}/bin/deface"
