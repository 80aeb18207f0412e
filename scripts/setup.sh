#!/usr/bin/env bash
# One-shot set-up on a fresh machine (Python 3.11, pip): the project, torch, facenet-pytorch, test tools.
# Usage: bash scripts/setup.sh            (core + tests)
#        WITH_SPLEETER=1 bash scripts/setup.sh   (also the Spleeter environment, ~2.4 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch/torchvision first: these versions are the pair that imports together (see README "Install").
$PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
# facenet-pytorch pins torch<2.3 and numpy<2 in its metadata but works with the above: --no-deps.
$PY -m pip install -q --no-deps "facenet-pytorch==2.6.0"
$PY -m pip install -q -e ".[test]"
if [ "${WITH_SPLEETER:-0}" = "1" ] && [ -f scripts/setup_spleeter_env.sh ]; then
  bash scripts/setup_spleeter_env.sh
fi
