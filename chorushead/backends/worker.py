"""The parent's side of a worker process: one JSON object per line over stdin/stdout.

Used for the backends whose models live in another interpreter (Spleeter's venv, EMOCA's Python 3.8
environment). The protocol, which ``spleeter_worker.py`` and ``emoca_worker.py`` speak:

- the worker's first JSON line is ``{"ready": true, ...}`` once its libraries are imported, or
  ``{"ready": false, "error": "..."}``, so a broken environment is told apart from a failing item;
- then each request line gets exactly one reply line; any non-JSON line on stdout is library noise;
- closing stdin asks the worker to exit.

The worker scripts import nothing of ours (they run where chorushead is not installed), so this
module is the only shared code, on the parent's side.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import tempfile
import time
from typing import Any

from chorushead.core.errors import StageError


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
        # Replies are read from the pipe's descriptor into this buffer, never through proc.stdout: a
        # buffered readline() may pull two lines off the pipe at once, and select() then waits for
        # the second one, which already sits in Python's buffer, until the timeout.
        self._buf = bytearray()
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
        """The next JSON line on the worker's stdout (other lines are library noise, skipped)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            line = self._next_line()
            if line is not None:
                if line.startswith("{"):
                    return json.loads(line)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                self.close(kill=True)
                raise StageError(f"{self.name} worker gave no answer in {timeout:.0f} s; "
                                 f"its log ends with:\n{self.stderr_tail()}")
            ready, _, _ = select.select([fd], [], [], min(left, 5.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if chunk:
                self._buf += chunk
                continue
            if self._buf:               # a last line without its newline
                self._buf += b"\n"
                continue
            rc = self.proc.wait()
            what = "could not start" if starting else "died"
            raise StageError(f"{self.name} worker {what} (exit code {rc}); its log ends with:\n"
                             f"{self.stderr_tail()}")

    def _next_line(self) -> str | None:
        """A whole line taken from the buffer (stripped), or None while none is complete."""
        end = self._buf.find(b"\n")
        if end < 0:
            return None
        line = self._buf[:end].decode(errors="replace").strip()
        del self._buf[:end + 1]
        return line

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
