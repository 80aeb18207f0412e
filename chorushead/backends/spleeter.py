"""Spleeter adapter: finds Spleeter's environment and model, and runs the worker.

Spleeter lives in its own venv (scripts/setup_spleeter_env.sh), so the usual path is a long-lived
subprocess running ``spleeter_worker.py`` with that venv's python. When the CURRENT interpreter can
import spleeter (someone installed everything in one env), the same code runs in-process instead.

Also home of :class:`JsonLinesWorker`, the small subprocess client the EMOCA adapter reuses.
"""
from __future__ import annotations

import atexit
import importlib.util
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from chorushead.core.errors import MissingAsset, StageError

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("spleeter_worker.py")
DEFAULT_VENV = REPO / "envs" / "spleeter"
SETUP_HINT = ("run `scripts/setup_spleeter_env.sh` (builds envs/spleeter, ~2.4 GB, ~2 min), or point "
              "CHORUSHEAD_SPLEETER_PYTHON / bgm_split.python at a python that can `import spleeter`")


# ----------------------------------------------------------------------------------------------
# A line-oriented JSON subprocess client (used for Spleeter and EMOCA workers).

class JsonLinesWorker:
    """Starts ``cmd``; waits for its ``{"ready": ...}`` line; then one JSON request -> one JSON reply.

    The worker's stderr goes to a temp file (TensorFlow and PyTorch Lightning log a lot; a pipe
    nobody reads would fill up and deadlock the worker) and its tail is quoted when things fail.
    """

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None, name: str = "worker",
                 start_timeout: float = 600.0):
        self.name = name
        self._err = tempfile.NamedTemporaryFile(prefix=f"chorushead-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                     text=True, env=env, bufsize=1)
        atexit.register(self.close, True)
        self.ready = self._read(start_timeout, starting=True)

    def stderr_tail(self, n: int = 1500) -> str:
        try:
            with open(self._err.name, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _read(self, timeout: float, starting: bool = False) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close(kill=True)
                raise StageError(f"{self.name} worker gave no answer in {timeout:.0f} s; "
                                 f"its log ends with:\n{self.stderr_tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 5.0))
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                rc = self.proc.wait()
                what = "could not start" if starting else "died"
                raise StageError(f"{self.name} worker {what} (exit code {rc}); its log ends with:\n"
                                 f"{self.stderr_tail()}")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
            # anything else on stdout is noise from a library; ignore it

    def request(self, job: dict[str, Any], timeout: float = 3600.0) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise StageError(f"{self.name} worker is not running (exit code {self.proc.returncode}); "
                             f"its log ends with:\n{self.stderr_tail()}")
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            try:
                if not kill:
                    self.proc.stdin.close()
                    self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, OSError, BrokenPipeError):
                pass
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self._err.name)
        except OSError:
            pass

    def __del__(self):  # best effort: a worker process must not outlive its stage
        try:
            self.close(kill=True)
        except Exception:
            pass


# ----------------------------------------------------------------------------------------------
# Where things are.

def spleeter_pythons(explicit: str = "") -> list[str]:
    """Where to look, first found wins: the parameter (alone: a configured path that is wrong must not
    silently fall back to another env), else $CHORUSHEAD_SPLEETER_PYTHON, else envs/spleeter."""
    if explicit:
        return [explicit]
    env = os.environ.get("CHORUSHEAD_SPLEETER_PYTHON", "")
    if env:
        return [env]
    return [str(DEFAULT_VENV / "bin" / "python")]


def find_spleeter_python(explicit: str = "") -> Optional[str]:
    for c in spleeter_pythons(explicit):
        if Path(c).exists():
            return c
    return None


def in_process_available() -> bool:
    return importlib.util.find_spec("spleeter") is not None


def model_path(explicit: str = "") -> Path:
    """Spleeter's own convention: $MODEL_PATH, default ./pretrained_models."""
    return Path(explicit or os.environ.get("MODEL_PATH", "pretrained_models")).resolve()


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
            f"{path / model / '.probe'}`; or set MODEL_PATH / bgm_split.model_path to where it is")


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
        mp = model_path(model_path_)
        problem = model_problem(mp, model)
        if problem == "missing":
            raise MissingAsset(f"Spleeter model '{model}'", [str(mp / model)], model_how(mp, model))
        if problem:
            raise MissingAsset(f"Spleeter model '{model}' (.probe marker)", [str(mp / model)], problem)
        use_inproc = in_process == "always" or (in_process == "auto" and not python
                                                 and not os.environ.get("CHORUSHEAD_SPLEETER_PYTHON")
                                                 and in_process_available())
        if use_inproc:
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
