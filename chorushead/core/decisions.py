"""Review decisions: records in the ``review`` manifest, one per decision, newest per segment wins.

A segment is named ``<video id>:<segment index>`` (the index into the contiguity stage's segments).
``outputs`` holds ``decision`` ("accept" | "reject" | "undo"), an optional ``reason`` and ``frames``:
the segment's [start, end) on the pipeline's timeline when it was decided. The pack stage reads the
newest decision per segment; "undo" returns a segment to unreviewed.

An index names a segment only as long as vad, crop and contiguity are not redone differently: after
that, segment 2 may be other frames. So readers pass the segments as they are now (``ranges``), and a
decision made on other frames no longer stands (the segment is unreviewed again). A decision recorded
without frames (before they were recorded) stands as before.
"""
from __future__ import annotations

from typing import Iterable

from chorushead.core.manifest import Manifest, Record, fingerprint, now

DECISIONS = ("accept", "reject", "undo")

# video id -> its segments' [start, end) on the pipeline's timeline, as they are now
Ranges = dict[str, list[tuple[int, int]]]


def segment_key(video: str, segment: int) -> str:
    return f"{video}:{int(segment)}"


def parse_key(key: str) -> tuple[str, int]:
    video, _, seg = key.rpartition(":")
    return video, int(seg)


def timeline_ranges(start_frame: int, segments: Iterable[Iterable[int]]) -> list[tuple[int, int]]:
    """Contiguity's segments ([start, end) in crop frames) on the pipeline's timeline: crop frame t is
    timeline frame vad.start_frame + t."""
    return [(start_frame + int(a), start_frame + int(b)) for a, b in segments]


def record_decision(out, video: str, segment: int, decision: str, reason: str | None = None,
                    frames: tuple[int, int] | None = None) -> Record:
    """Append a decision on ``video``'s segment ``segment``, which covers ``frames`` of the timeline."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}")
    outputs = {"decision": decision, **({"reason": reason} if reason else {}),
               **({"frames": [int(frames[0]), int(frames[1])]} if frames is not None else {})}
    rec = Record(item=segment_key(video, segment), stage="review", status="done",
                 fingerprint=fingerprint(video, segment, decision, reason, frames, now()),
                 outputs=outputs, started=now())
    Manifest(out, "review").append(rec)
    return rec


def standing(out, ranges: Ranges | None = None) -> dict[str, Record]:
    """Segment key -> its newest review record, where that is an accept or reject that still applies:
    with ``ranges``, made on the frames the segment covers now (see the module docstring)."""
    res = {}
    for key, rec in Manifest(out, "review").latest().items():
        if rec.outputs.get("decision") not in ("accept", "reject"):
            continue
        frames = rec.outputs.get("frames")
        if ranges is not None and frames is not None:
            video, i = parse_key(key)
            now_ = ranges.get(video, [])
            if i >= len(now_) or tuple(now_[i]) != tuple(frames):
                continue        # the segments moved since: this decision was about other frames
        res[key] = rec
    return res


def decisions(out, ranges: Ranges | None = None) -> dict[tuple[str, int], str]:
    """(video, segment) -> "accept" | "reject" for every segment with a standing decision."""
    return {parse_key(key): rec.outputs["decision"] for key, rec in standing(out, ranges).items()}
