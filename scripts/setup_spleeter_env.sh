#!/usr/bin/env bash
# Build Spleeter's own virtual environment.
#
# Spleeter 2.4.2 pins tensorflow 2.12.1, numpy<2, typer<0.4 and Python<3.12, none of which can live
# beside the project's torch 2.14 / numpy 2 environment, so it gets a venv of its own and the
# bgm_split stage talks to it through chorushead/backends/spleeter_worker.py.
#
# Usage: scripts/setup_spleeter_env.sh [VENV_DIR]     (default: $CHORUSHEAD_HOME/envs/spleeter if set, else envs/spleeter in the repo; gitignored)
#        PYTHON=python3.11 scripts/setup_spleeter_env.sh /opt/spleeter
# Then point the pipeline at it (only needed for a non-default location):
#        export CHORUSHEAD_SPLEETER_PYTHON=/opt/spleeter/bin/python
# About 2.4 GB on disk and a few minutes on a 2-core machine (mostly tensorflow's wheel).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
# Default: where the stages look first for a new install (chorushead/core/assets.py, stdlib only):
# $CHORUSHEAD_HOME/envs/spleeter when CHORUSHEAD_HOME is set, else the checkout's envs/spleeter.
VENV="${1:-${CHORUSHEAD_SPLEETER_VENV:-$("$PY" "$REPO/chorushead/core/assets.py" install-dir spleeter)}}"

# Spleeter (and tensorflow 2.12) need Python 3.8..3.11.
"$PY" - <<'PYCHECK'
import sys
if not ((3, 8) <= sys.version_info[:2] <= (3, 11)):
    sys.exit(f"Spleeter needs Python 3.8-3.11; {sys.executable} is {sys.version.split()[0]}. "
             "Set PYTHON=/path/to/python3.11.")
PYCHECK

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# jax/jaxlib pinned: spleeter's dependency tree otherwise resolves a jax that wants numpy>=2.
"$VENV/bin/python" -m pip install --quiet "spleeter==2.4.2" "numpy==1.24.3" "jax==0.4.38" "jaxlib==0.4.38"
# Fail here, not at the first song, when the install is broken.
"$VENV/bin/python" -c "import spleeter, tensorflow as tf, numpy; from spleeter.separator import Separator; print('spleeter ok: tensorflow', tf.__version__, 'numpy', numpy.__version__)"
echo "Spleeter venv ready: $VENV (python: $VENV/bin/python)"
