"""Where a raw video came from: the records `chorushead fetch` appends to ``<raw>/fetch.jsonl``.

The format lives on the ground floor because two floors read it: ``chorushead.fetch`` (beside the
CLIs) writes it and resumes from it, and the runner's ``discover`` reads it so that a build of that
folder registers each fetched video with its origin (URL, title, uploader, licence, duration). One
JSON object per line, one line per attempt, the newest line for a URL wins; each line is one
``O_APPEND`` write followed by fsync, so a crash loses at most the line being written and a torn last
line is skipped on read (the same rule as the stage manifests, :mod:`chorushead.core.manifest`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

FETCH_MANIFEST = "fetch.jsonl"
# What a build keeps of a done record (Item.origin): the facts about the source, not the attempt.
ORIGIN_FIELDS = ("url", "title", "uploader", "license", "duration", "extractor", "yt_dlp")


@dataclass
class FetchRecord:
    url: str
    status: str                       # done | failed
    file: str | None = None           # the video, relative to the folder holding fetch.jsonl
    title: str | None = None          # as yt-dlp reports them (None where the site gives none)
    uploader: str | None = None
    license: str | None = None
    duration: float | None = None     # seconds
    extractor: str | None = None      # yt-dlp's extractor ("generic" for a plain file URL)
    yt_dlp: str | None = None         # yt-dlp's version
    bytes: int | None = None          # size of the file written
    reason: str | None = None         # failed: one line a person can act on
    at: float = 0.0                   # time.time() of the attempt

    def origin(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ORIGIN_FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FetchRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def append(folder: Path, rec: FetchRecord) -> None:
    """One line, one write, fsync'd; after a torn last line (a crash mid-write) start on a fresh line."""
    path = Path(folder) / FETCH_MANIFEST
    data = (json.dumps(asdict(rec), sort_keys=True, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read(folder: Path) -> dict[str, FetchRecord]:
    """URL -> its newest record (lines that do not parse, e.g. a torn last one, are skipped)."""
    path = Path(folder) / FETCH_MANIFEST
    latest: dict[str, FetchRecord] = {}
    if not path.exists():
        return latest
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if not isinstance(d, dict):     # valid JSON but not a record (a hand edit): skipped too
                continue
            rec = FetchRecord.from_dict(d)
        except (TypeError, ValueError):     # json.JSONDecodeError is a ValueError
            continue
        latest[rec.url] = rec
    return latest


def origins(folder: Path) -> dict[Path, dict[str, Any]]:
    """File (``folder / record.file``, as the caller spelled ``folder``) -> origin, for every fetch.jsonl
    under ``folder``: what `chorushead build --videos folder` registers beside each video it finds."""
    res: dict[Path, dict[str, Any]] = {}
    for manifest in sorted(Path(folder).rglob(FETCH_MANIFEST)):
        for rec in read(manifest.parent).values():
            if rec.status == "done" and rec.file:
                res[Path(os.path.normpath(manifest.parent / rec.file))] = rec.origin()
    return res
