"""Per-stage JSONL manifests: one record per item and attempt, appended atomically.

A stage's manifest is ``<out>/manifests/<stage>.jsonl``. The newest record for an item wins. An item
is done when its newest record says ``done`` (or ``skipped``, which downstream stages accept) AND its
fingerprint equals the fingerprint the runner computes now (inputs + parameters + stage version + fps).
Crash safety: outputs are renamed into place before the record is appended; each record is a single
``write`` of one line followed by flush + fsync; a torn last line (a crash mid-write) is ignored on read.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

STATUSES = ("done", "failed", "skipped")
RECORD_SCHEMA_VERSION = 1


@dataclass
class Record:
    item: str
    stage: str
    status: str                      # done | failed | skipped
    fingerprint: str
    outputs: dict[str, Any] = field(default_factory=dict)   # name -> path relative to <out>, or small values
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None        # why skipped
    error_class: str | None = None   # for failures
    message: str | None = None       # a message a person can act on
    stage_version: str = ""
    started: float = 0.0
    seconds: float = 0.0
    schema: int = RECORD_SCHEMA_VERSION

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        """Done or skipped: downstream stages may use it."""
        return self.status in ("done", "skipped")

    def failure_line(self, limit: int | None = None) -> str:
        """Why this record failed, on one line: ``ErrorClass: message`` with the message's first line
        (the rest is detail for the manifest), cut to ``limit`` characters with "...": the one wording of
        a failure in the CLIs, status, the demo and the card."""
        first = (self.message or "").strip().splitlines()
        msg = f"{self.error_class or 'error'}: {first[0] if first else ''}"
        return msg if limit is None or len(msg) <= limit else msg[:limit - 3] + "..."

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Record":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (dict keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def file_fingerprint(path: Path, sample: int = 1 << 20) -> str:
    """Size + mtime + hash of the first and last MiB: cheap enough for multi-GB videos, and catches
    replaced or re-encoded files. A file touched without change is redone (acceptable)."""
    st = path.stat()
    h = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(sample))
        if st.st_size > sample:
            f.seek(max(sample, st.st_size - sample))
            h.update(f.read(sample))
    return h.hexdigest()[:16]


class Manifest:
    """Append-only JSONL of :class:`Record` for one stage.

    Who appends: the runner, for the stage manifests (workers only return records to it), and the
    review server, for ``review.jsonl`` (:mod:`chorushead.core.decisions`), possibly while a build runs.
    No two writers share a file, and each record is one ``O_APPEND`` write, so concurrent appends to one
    file would still not interleave within a line."""

    def __init__(self, out_dir: Path, stage: str):
        self.path = Path(out_dir) / "manifests" / f"{stage}.jsonl"
        self.stage = stage

    def read_all(self) -> list[Record]:
        if not self.path.exists():
            return []
        records = []
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(Record.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, ValueError):
                # A torn line can only be the last one written before a crash; skip it. Anything else
                # is still skipped (never fatal) but we keep reading the rest.
                continue
        return records

    def latest(self) -> dict[str, Record]:
        """Newest record per item."""
        out: dict[str, Record] = {}
        for r in self.read_all():
            out[r.item] = r
        return out

    def append(self, record: Record) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record.to_dict(), sort_keys=True, ensure_ascii=False) + "\n"
        data = line.encode()
        # O_APPEND makes each single write land at the end; a torn line can only be the last one.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # If a previous crash left a torn last line without newline, start on a fresh line so the
            # torn fragment stays isolated and this record parses.
            if os.fstat(fd).st_size > 0:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` through a temp file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default).encode())


def _json_default(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def now() -> float:
    return time.time()


def iter_records(out_dir: Path, stages: Iterable[str]) -> dict[str, dict[str, Record]]:
    return {s: Manifest(out_dir, s).latest() for s in stages}
