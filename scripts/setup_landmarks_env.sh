#!/usr/bin/env bash
# Build the face-landmark model's own virtual environment (fit.backend = "landmarks").
#
# MediaPipe 0.10.21 is the last 0.10.x wheel that ships the face-mesh models inside the package
# (mediapipe/modules/face_landmark/*.tflite + face_detection/*.tflite; later wheels need a separately
# downloaded .task file). Its metadata pins numpy<2 and protobuf<5, which cannot live beside the
# project's numpy 2 / protobuf 7, so it gets a venv and the fit stage talks to it through
# chorushead/backends/landmarks_worker.py.
#
# Only what `mediapipe.solutions.face_mesh` imports is installed (no jax/jaxlib/sentencepiece/
# sounddevice, which the metadata lists for other solutions): ~425 MB, ~15 s from a warm pip cache.
#
# Usage: scripts/setup_landmarks_env.sh [VENV_DIR]   (default: $CHORUSHEAD_HOME/envs/landmarks if set, else envs/landmarks in the repo; gitignored)
# For a non-default location point the pipeline at it: export CHORUSHEAD_LANDMARKS_PYTHON=DIR/bin/python
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
# Default: where the stages look first for a new install (chorushead/core/assets.py, stdlib only):
# $CHORUSHEAD_HOME/envs/landmarks when CHORUSHEAD_HOME is set, else the checkout's envs/landmarks.
VENV="${1:-${CHORUSHEAD_LANDMARKS_VENV:-$("$PY" "$REPO/chorushead/core/assets.py" install-dir landmarks)}}"

"$PY" - <<'PYCHECK'
import sys
if not ((3, 9) <= sys.version_info[:2] <= (3, 12)):
    sys.exit(f"mediapipe 0.10.21 wheels exist for Python 3.9-3.12; {sys.executable} is "
             f"{sys.version.split()[0]}. Set PYTHON=/path/to/python3.11.")
PYCHECK

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip install --quiet --disable-pip-version-check"
# Dependencies first, mediapipe last without its metadata's extras (see above).
$PIP "numpy==1.26.4" "protobuf>=4.25.3,<5" "absl-py" "attrs>=19.1.0" "flatbuffers>=2.0" "matplotlib" \
     "opencv-contrib-python-headless>=4.8,<4.12"
$PIP --no-deps "mediapipe==0.10.21"
# Fail here, not at the first video, when the install is broken: load the model once.
"$VENV/bin/python" - <<'PYCHECK'
import os
import mediapipe as mp
import numpy as np
model = os.path.join(os.path.dirname(mp.__file__), "modules", "face_landmark", "face_landmark_with_attention.tflite")
assert os.path.exists(model), f"{model} is not in the mediapipe wheel"
with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True) as fm:
    fm.process(np.zeros((224, 224, 3), np.uint8))
print("landmarks env ok: mediapipe", mp.__version__, "numpy", np.__version__)
PYCHECK
echo "Landmarks venv ready: $VENV (python: $VENV/bin/python)"
