"""Review decisions: records in the ``review`` manifest, one per decision, newest per segment wins.

A segment is named ``<video id>:<segment index>`` (the index into the contiguity stage's segments).
``outputs`` holds ``decision`` ("accept" | "reject" | "undo") and an optional ``reason``. The pack
stage reads the newest decision per segment; "undo" returns a segment to unreviewed.
"""
from __future__ import annotations

from chorushead.core.manifest import Manifest, Record, fingerprint, now

DECISIONS = ("accept", "reject", "undo")


def segment_key(video: str, segment: int) -> str:
    return f"{video}:{int(segment)}"


def parse_key(key: str) -> tuple[str, int]:
    video, _, seg = key.rpartition(":")
    return video, int(seg)


def record_decision(out, video: str, segment: int, decision: str, reason: str | None = None) -> Record:
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}")
    rec = Record(item=segment_key(video, segment), stage="review", status="done",
                 fingerprint=fingerprint(video, segment, decision, reason, now()),
                 outputs={"decision": decision, **({"reason": reason} if reason else {})}, started=now())
    Manifest(out, "review").append(rec)
    return rec


def decisions(out) -> dict[tuple[str, int], str]:
    """(video, segment) -> "accept" | "reject" for every segment with a standing decision."""
    res = {}
    for key, rec in Manifest(out, "review").latest().items():
        d = rec.outputs.get("decision")
        if d in ("accept", "reject"):
            res[parse_key(key)] = d
    return res
