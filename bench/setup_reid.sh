#!/usr/bin/env bash
# Creates bench/.venv-reid with the face matcher the re-identification benchmark (bench/reid.py) attacks masks with:
# dlib's ResNet face descriptor (dlib-bin: prebuilt wheels) and its weights (face-recognition-models, ~100 MB), plus
# av and numpy for the shared scorer ../shared/eval/videos_gt/score_reid.py.
# Idempotent: re-running only checks that the pinned versions are installed.
# A venv of its own: a benchmark tool, never a dependency of streamproxy or of its tests.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${HERE}/.venv-reid"
PY="${PYTHON:-python3}"
PINS=(
  "dlib-bin==20.0.1.post1"
  "face-recognition-models==0.3.0"
  "av==18.1.0"
  "numpy==2.4.6"
)

if [[ ! -x "${VENV}/bin/python" ]]; then
  echo "creating ${VENV} with $(${PY} --version)"
  "${PY}" -m venv "${VENV}"
fi

missing=()
for pin in "${PINS[@]}"; do
  name="${pin%%==*}"; want="${pin##*==}"
  have="$("${VENV}/bin/python" -c "import importlib.metadata as m; print(m.version('${name}'))" 2>/dev/null || true)"
  [[ "${have}" == "${want}" ]] || missing+=("${pin}")
done
if ((${#missing[@]})); then
  "${VENV}/bin/pip" install --quiet "${missing[@]}"
fi

"${VENV}/bin/python" -c 'import dlib, face_recognition_models as f, av, numpy; print("dlib", dlib.__version__, "models", f.face_recognition_model_location())'
echo "reid ready: ${VENV}/bin/python"
