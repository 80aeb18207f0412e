"""Spleeter adapter: finds Spleeter's environment and model, and runs the worker.

Spleeter lives in its own venv (scripts/setup_spleeter_env.sh), so the usual path is a long-lived
subprocess running ``spleeter_worker.py`` with that venv's python. When the CURRENT interpreter can
import spleeter (someone installed everything in one env), the same code runs in-process instead.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from chorushead.backends.worker import JsonLinesWorker
from chorushead.core import assets
from chorushead.core.errors import MissingAsset, StageError

WORKER = Path(__file__).with_name("spleeter_worker.py")
SETUP_HINT = ("run `bash scripts/setup_spleeter_env.sh` (builds the venv, ~2.4 GB, ~2 min, in $CHORUSHEAD_HOME/envs/"
              "spleeter when CHORUSHEAD_HOME is set, else in the checkout's envs/spleeter), or point "
              "CHORUSHEAD_SPLEETER_PYTHON / bgm_split.python at a python that can `import spleeter`; "
              "or skip separation by giving the stems (`chorushead build --stems DIR`)")


# ----------------------------------------------------------------------------------------------
# Where things are (the one lookup: chorushead.core.assets).

def spleeter_pythons(explicit: str = "") -> list[str]:
    """Where to look, first found wins: the parameter (alone: a configured path that is wrong must not
    silently fall back to another env), else $CHORUSHEAD_SPLEETER_PYTHON (alone), else
    $CHORUSHEAD_HOME/envs/spleeter, else the checkout's envs/spleeter (see core/assets.py)."""
    return [str(c) for c in assets.candidates("spleeter_python", explicit)]


def find_spleeter_python(explicit: str = "") -> Optional[str]:
    for c in spleeter_pythons(explicit):
        if Path(c).exists():
            return c
    return None


def in_process_available() -> bool:
    return importlib.util.find_spec("spleeter") is not None


def model_paths(explicit: str = "") -> list[Path]:
    """Where Spleeter's model folder (the one holding 2stems/) is looked for: bgm_split.model_path, else
    $MODEL_PATH (Spleeter's own variable), else $CHORUSHEAD_HOME/models/spleeter, else the checkout's
    pretrained_models/ (never the current folder)."""
    return [c.absolute() for c in assets.candidates("spleeter_models", explicit)]


def model_path(explicit: str = "", model: str = "2stems") -> Path:
    """The model folder Spleeter will be given as MODEL_PATH: the first candidate holding ``model``
    (usable or not), else the first candidate (what the error names as where to put it)."""
    cands = model_paths(explicit)
    return next((c for c in cands if (c / model).is_dir()), cands[0])


def model_problem(path: Path, model: str) -> Optional[str]:
    """None when ``path/model`` is usable, else what is wrong (same rule as the worker's check)."""
    folder = path / model
    if (folder / ".probe").exists():
        return None
    if (folder / "checkpoint").exists():
        return f"{folder} has a checkpoint but no .probe marker (Spleeter would re-download): touch {folder}/.probe"
    return "missing"


def model_how(path: Path, model: str) -> str:
    return (f"download {model}.tar.gz from Spleeter's v1.4.0 GitHub release (deezer/spleeter), "
            f"`mkdir -p {path / model} && tar -xzf {model}.tar.gz -C {path / model} && touch "
            f"{path / model / '.probe'}`; or set MODEL_PATH / bgm_split.model_path to the folder holding {model}/; "
            f"or skip separation by giving the stems (`chorushead build --stems DIR`)")


def uses_in_process(python: str = "", in_process: str = "auto") -> bool:
    """Whether Spleeter runs in THIS interpreter (the same rule as SpleeterBackend.open)."""
    return in_process == "always" or (in_process == "auto" and not python
                                      and not os.environ.get("CHORUSHEAD_SPLEETER_PYTHON")
                                      and in_process_available())


def identity(python: str = "", model_path_: str = "", model: str = "2stems", in_process: str = "auto") -> dict:
    """What will separate (for the stage's fingerprint): the model folder's files (.probe marker aside)
    and the Spleeter + TensorFlow versions of the environment that runs it, read from its dist-info
    METADATA (TensorFlow is not started). Never raises."""
    def make() -> dict:
        mp = model_path(model_path_, model)
        folder = mp / model
        out: dict = {"model": model}
        if not folder.is_dir():
            out["missing"] = str(folder)
        else:
            out["files"] = assets.files_identity(folder)
        if uses_in_process(python, in_process):
            from importlib import metadata
            vers = {}
            for d in ("spleeter", "tensorflow"):
                try:
                    vers[d] = metadata.version(d)
                except metadata.PackageNotFoundError:
                    vers[d] = None
            out["env"] = {"python": "in-process", **vers}
        else:
            exe = find_spleeter_python(python)
            if exe is None:
                out["env"] = {"missing": spleeter_pythons(python)}
            else:
                sites = assets.venv_site_packages(exe)
                out["env"] = {d: assets.dist_version(d, sites) for d in ("spleeter", "tensorflow")}
        return out
    return assets.safe(make)


# ----------------------------------------------------------------------------------------------

@dataclass
class SpleeterBackend:
    """Separates (n, 2) float32 arrays at 44.1 kHz into {'vocals', 'accompaniment'}."""
    model_path: Path
    model: str
    worker: Optional[JsonLinesWorker] = None
    runner: Any = None                 # in-process SpleeterRunner
    where: str = ""                    # which interpreter, for the record

    @classmethod
    def open(cls, python: str = "", model_path_: str = "", model: str = "2stems",
             in_process: str = "auto", start_timeout: float = 600.0) -> "SpleeterBackend":
        mp = model_path(model_path_, model)
        problem = model_problem(mp, model)
        if problem == "missing":
            raise MissingAsset(f"Spleeter model '{model}'", [str(c / model) for c in model_paths(model_path_)],
                               model_how(mp, model))
        if problem:
            raise MissingAsset(f"Spleeter model '{model}' (.probe marker)", [str(mp / model)], problem)
        if uses_in_process(python, in_process):
            from chorushead.backends.spleeter_worker import SpleeterRunner
            return cls(mp, model, runner=SpleeterRunner(str(mp), model), where=sys.executable)
        exe = find_spleeter_python(python)
        if exe is None:
            raise MissingAsset("Spleeter environment", spleeter_pythons(python), SETUP_HINT)
        env = dict(os.environ, MODEL_PATH=str(mp), TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("PYTHONPATH", None)   # the project's packages (numpy 2...) must not leak into that venv
        w = JsonLinesWorker([exe, str(WORKER), "--model-path", str(mp), "--model", model], env=env,
                            name="spleeter", start_timeout=start_timeout)
        if not w.ready.get("ready"):
            w.close(kill=True)
            if w.ready.get("missing"):
                raise MissingAsset(f"Spleeter model '{model}'", [str(mp / model)], w.ready.get("error", ""))
            raise MissingAsset("a working Spleeter environment", [exe],
                               f"{w.ready.get('error')}; rebuild it: {SETUP_HINT}")
        return cls(mp, model, worker=w, where=exe)

    def separate(self, mix: np.ndarray, workdir: Path, chunk_seconds: float = 60.0,
                 overlap_seconds: float = 4.0, timeout: float = 7200.0) -> dict[str, np.ndarray]:
        mix = np.ascontiguousarray(mix, dtype=np.float32)
        if self.runner is not None:
            return self.runner.separate(mix, chunk_seconds, overlap_seconds)
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        src = workdir / "_spleeter_in.npy"
        np.save(src, mix)
        try:
            reply = self.worker.request({"input": str(src), "output_dir": str(workdir),
                                         "chunk_seconds": chunk_seconds, "overlap_seconds": overlap_seconds},
                                        timeout=timeout)
            if not reply.get("ok"):
                raise StageError(f"Spleeter failed: {reply.get('error')}\n{reply.get('traceback', '')}")
            stems = {}
            for name, path in reply["outputs"].items():
                stems[name] = np.load(path)
                os.unlink(path)
            return stems
        finally:
            src.unlink(missing_ok=True)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
