"""Benchmark figures as JSON beside the printed text: benchmarks/results/<name>.json (git-ignored), or
$BENCH_RESULTS/<name>.json. Runs never write into the tracked tree: ``python benchmarks/table.py --take
NAME`` records a result (benchmarks/recorded/) and rewrites the README's table, on request only.

Every file carries the machine it ran on (cores, CPU model, GPU if any), the load average before and
after the run, when it ran and at which git commit, the command line, and the figures as rows
(``label``/``figure`` strings for the README table, plus the raw numbers). ``benchmarks/table.py``
turns the files into the README's table.

    rec = Recorder("bench_lmdb")             # load average now
    rec.say("...")                           # printed, and kept as the run's text
    rec.row("LMDB reads/s, warm", f"{x:.0f}/s", reads_s=x)
    rec.write()                              # load average now, then the JSON file
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = Path(os.environ.get("BENCH_RESULTS") or HERE / "results")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "gpu": None}
    if "torch" in sys.modules:   # only when the benchmark uses torch anyway (importing it costs seconds)
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


@dataclass
class Recorder:
    name: str
    rows: list[dict] = field(default_factory=list)
    load_before: list[float] = field(default_factory=lambda: [round(x, 2) for x in os.getloadavg()])
    started: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    lines: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        """Print a line and keep it: the kept lines are the text :meth:`write` stores."""
        print(text, flush=True)
        self.lines.append(text)

    def row(self, label: str, figure: str, **numbers: float | int | str | None) -> None:
        """One README table row: what was measured and the figure as it should read; ``numbers`` keeps
        the raw values for anyone comparing runs."""
        self.rows.append({"label": label, "figure": figure, "numbers": numbers})

    def write(self, text: str | None = None, note: str = "", path: Path | None = None) -> Path:
        """Write ``results/<name>.json`` (or ``path``); ``text`` is what the script printed (default: the
        lines it said through :meth:`say`), ``note`` says anything the reader must know (e.g. a
        random-weight model, stems mode)."""
        rec = {"name": self.name, "started": self.started,
               "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "commit": git_commit(), "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
               "machine": machine(), "load_before": self.load_before,
               "load_after": [round(x, 2) for x in os.getloadavg()], "note": note, "rows": self.rows,
               "text": "\n".join(self.lines) if text is None else text}
        path = path or RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rec, indent=2) + "\n")
        os.replace(tmp, path)
        print(f"figures written to {path}")
        return path


def cpu_seconds() -> float:
    """User + system CPU of this process (all threads) and of its finished children (ffmpeg, workers
    it waited for): on a shared machine wall time swings with the others' load, CPU time much less."""
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
