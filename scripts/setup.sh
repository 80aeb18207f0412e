#!/usr/bin/env bash
# One-shot set-up on a fresh machine (Python 3.11 + pip; root for apt when testing).
#   bash scripts/setup.sh          the project: torch, facenet-pytorch, chorushead + pachorus
#                                  + the face-landmark venv (envs/landmarks, fit.backend = landmarks)
#   The venvs go to $CHORUSHEAD_HOME/envs/ when CHORUSHEAD_HOME is set, else to the checkout's envs/.
#   bash scripts/setup.sh test     + everything the tests exercise: modelscope (MossFormer2), Dask, Ray,
#                                    Playwright + Debian's Chromium, and Spleeter's own venv (envs/spleeter)
# Idempotent: rerunning skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install -q --disable-pip-version-check"

# torch/torchvision first: this pair imports together (see README "Install").
$PIP "torch==2.14.1" "torchvision==0.29.1"
# facenet-pytorch pins torch<2.3 and numpy<2 in its metadata but works with the above: --no-deps.
$PIP --no-deps "facenet-pytorch==2.6.0"

if [ "${1:-}" = "test" ]; then
  # tests/test_wheel.py builds a wheel with --no-build-isolation: the build tools must be here.
  $PIP "setuptools>=70.1" wheel
  $PIP -e ".[test]"
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "Browser tests need Debian's chromium (apt-get install chromium); they will be skipped." >&2
    fi
  fi
  # The fingerprint stage's audio fingerprints: Chromaprint's fpcalc (Debian's libchromaprint-tools).
  if ! command -v fpcalc >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libchromaprint-tools >/dev/null
    else
      echo "The fingerprint stage needs Chromaprint's fpcalc (apt-get install libchromaprint-tools)." >&2
    fi
  fi
  # Spleeter pins tensorflow 2.12 / numpy<2: its own venv (~2.4 GB), driven through a worker.
  # Where: chorushead/core/assets.py (the lookup the stages use): skipped when a venv is already found
  # there; else built in $CHORUSHEAD_HOME/envs/spleeter when CHORUSHEAD_HOME is set, else envs/spleeter.
  $PY chorushead/core/assets.py find spleeter_python >/dev/null \
    || bash scripts/setup_spleeter_env.sh "$($PY chorushead/core/assets.py install-dir spleeter)"
else
  $PIP -e .
fi
# fit.backend = landmarks (open face-mesh fitter, no licensed asset): mediapipe 0.10.21 pins numpy<2 /
# protobuf<5, so it gets its own venv (~425 MB, ~30 s), driven through a worker like Spleeter.
# Where: as for Spleeter above ($CHORUSHEAD_HOME/envs/landmarks when CHORUSHEAD_HOME is set, else envs/landmarks).
$PY chorushead/core/assets.py find landmarks_python >/dev/null \
  || bash scripts/setup_landmarks_env.sh "$($PY chorushead/core/assets.py install-dir landmarks)"
