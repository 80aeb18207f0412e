"""EMOCA adapter: finds EMOCA's environment and assets and runs ``emoca_worker.py`` there.

EMOCA (radekd91/emoca, packages ``gdl`` + ``gdl_apps``) is on no registry, needs Python 3.8 and
pytorch3d 0.6.2, and its models are licensed downloads. So it lives in an environment of its own:

- interpreter: ``fit.python`` or $CHORUSHEAD_EMOCA_PYTHON (e.g. ~/miniconda3/envs/work38/bin/python);
  when neither is set and THIS interpreter can import ``gdl_apps``, EMOCA runs in-process.
- code: ``fit.emoca_path`` or $CHORUSHEAD_EMOCA_PATH, a clone of the emoca repo, put on PYTHONPATH
  (not needed when gdl is pip-installed into that environment with ``pip install -e .``).
- models: ``fit.models_dir`` or $CHORUSHEAD_EMOCA_MODELS, else $CHORUSHEAD_HOME/models/EMOCA, else the
  checkout's ``assets/EMOCA/models`` (core/assets.py: never the current folder); it must hold
  ``<model_name>/`` (e.g. EMOCA_v2_lr_mse_20/ with cfg.yaml + checkpoints).

Without EMOCA, ``--set fit.backend=landmarks`` fits jaw + head pose with MediaPipe (backends/landmarks.py).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from chorushead.backends.worker import JsonLinesWorker
from chorushead.core import assets
from chorushead.core.device import pick_device
from chorushead.core.errors import MissingAsset, StageError

WORKER = Path(__file__).with_name("emoca_worker.py")
OPEN_ALTERNATIVE = ("or, without EMOCA, use the open backend: `--set fit.backend=landmarks` (MediaPipe face mesh "
                    "from a registry wheel, no licensed assets; jaw + head pose only, expression = 0)")
HOW_ENV = ("install EMOCA in its own Python 3.8 environment (clone radekd91/emoca with submodules, follow its "
           "install_38.sh: pytorch3d 0.6.2 + `pip install -e .`), then set CHORUSHEAD_EMOCA_PYTHON to that "
           "environment's python (and CHORUSHEAD_EMOCA_PATH to the clone if gdl is not pip-installed there); "
           + OPEN_ALTERNATIVE)
HOW_MODELS = ("register at https://emoca.is.tue.mpg.de, run the emoca repo's "
              "gdl_apps/EMOCA/demos/download_assets.sh (it fetches EMOCA_v2_lr_mse_20 and the FLAME assets), "
              "then copy its assets/EMOCA/models folder to $CHORUSHEAD_HOME/models/EMOCA (default "
              "~/.local/share/chorushead/models/EMOCA), or point "
              "CHORUSHEAD_EMOCA_MODELS / fit.models_dir at it; " + OPEN_ALTERNATIVE)


def models_dirs(explicit: str = "") -> list[Path]:
    """Where EMOCA's model folder is looked for, in order (core/assets.py, kind "emoca_models")."""
    return assets.candidates("emoca_models", explicit)


def models_dir(explicit: str = "", model_name: str = "") -> Path:
    """The first candidate holding ``model_name/`` (any folder when no name is given), else the first."""
    cands = models_dirs(explicit)
    return next((c for c in cands if (c / model_name).is_dir()), cands[0])


def identity(models: str = "", model_name: str = "EMOCA_v2_lr_mse_20", stage: str = "detail") -> dict:
    """What will fit (for the stage's fingerprint): the model folder's cfg.yaml and checkpoint files
    (*.ckpt, *.pt, *.pth, *.pkl, *.npy anywhere below it). Never raises."""
    def make() -> dict:
        run = models_dir(models, model_name) / model_name
        if not run.is_dir():
            return {"model": model_name, "stage": stage, "missing": [str(c / model_name) for c in models_dirs(models)]}
        return {"model": model_name, "stage": stage,
                "files": assets.files_identity(run, ("*.yaml", "*.ckpt", "*.pt", "*.pth", "*.pkl", "*.npy"))}
    return assets.safe(make)


def emoca_python(explicit: str = "") -> str:
    return explicit or os.environ.get("CHORUSHEAD_EMOCA_PYTHON", "")


def emoca_code_path(explicit: str = "") -> str:
    return explicit or os.environ.get("CHORUSHEAD_EMOCA_PATH", "")


def in_process_available() -> bool:
    try:
        return importlib.util.find_spec("gdl_apps") is not None
    except (ImportError, ValueError):
        return False


@dataclass
class EmocaBackend:
    worker: Optional[JsonLinesWorker] = None
    runner: Any = None                  # in-process EmocaRunner
    device: str = ""
    where: str = ""

    @classmethod
    def open(cls, python: str = "", emoca_path: str = "", models: str = "", model_name: str = "EMOCA_v2_lr_mse_20",
             stage: str = "detail", device: str = "auto", start_timeout: float = 900.0) -> "EmocaBackend":
        mdir = models_dir(models, model_name)
        if not (mdir / model_name).is_dir():
            raise MissingAsset(f"EMOCA model '{model_name}' (fit.backend = emoca)",
                               [str(c / model_name) for c in models_dirs(models)], HOW_MODELS)
        exe = emoca_python(python)
        code = emoca_code_path(emoca_path)
        if not exe:
            if code and code not in sys.path:
                sys.path.insert(0, code)
            if in_process_available():
                from chorushead.backends.emoca_worker import EmocaRunner
                r = EmocaRunner(str(mdir), model_name, stage, pick_device(device))
                return cls(runner=r, device=r.device, where=sys.executable)
            raise MissingAsset("EMOCA environment (python with gdl / gdl_apps)",
                               ["fit.python", "$CHORUSHEAD_EMOCA_PYTHON", f"this python ({sys.executable})"], HOW_ENV)
        if not Path(exe).exists():
            raise MissingAsset("EMOCA environment python", [exe], HOW_ENV)
        env = dict(os.environ)
        env["PYTHONPATH"] = code                  # only EMOCA's code: nothing of this env leaks in
        w = JsonLinesWorker([exe, str(WORKER), "--models-dir", str(mdir), "--model-name", model_name,
                             "--stage", stage, "--device", device], env=env, name="emoca",
                            start_timeout=start_timeout)
        if not w.ready.get("ready"):
            w.close(kill=True)
            if w.ready.get("missing") == "gdl":
                raise MissingAsset("EMOCA code (gdl / gdl_apps importable by the EMOCA python)",
                                   [exe] + ([code] if code else []), f"{w.ready.get('error')}; {HOW_ENV}")
            raise StageError(f"EMOCA could not load '{model_name}' from {mdir}: {w.ready.get('error')}\n"
                             f"{w.ready.get('traceback', '')}")
        return cls(worker=w, device=w.ready.get("device", "?"), where=exe)

    def fit(self, strips: list[str], segments: list[tuple[int, int]], output_dir: Path,
            batch_size: int = 32, timeout: float = 24 * 3600.0) -> tuple[list[str], int]:
        if self.runner is not None:
            return self.runner.fit(strips, segments, str(output_dir), batch_size)
        reply = self.worker.request({"strips": [str(s) for s in strips], "segments": [list(s) for s in segments],
                                     "output_dir": str(output_dir), "batch_size": batch_size}, timeout=timeout)
        if not reply.get("ok"):
            raise StageError(f"EMOCA failed: {reply.get('error')}\n{reply.get('traceback', '')}")
        return reply["outputs"], int(reply["images"])

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
