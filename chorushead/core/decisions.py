"""Review decisions: records in the ``review`` manifest, one per decision, about frames of a video.

A decision's record is named ``<video id>:<segment index>`` (the index it had on the review page) and
its ``outputs`` hold ``decision`` ("accept" | "reject" | "undo"), an optional ``reason`` and ``frames``:
the segment's [start, end) on the pipeline's timeline (vad's start frame + crop frame) when it was made,
and ``segmentation``: the fingerprint of the contiguity record whose segments the reviewer saw.

Decisions belong to frames, not to segment numbers: a rebuild (another vad setting, contiguity
threshold, crop...) renumbers segments and moves their edges, and a decision must still land on the
frames it was made on. The rule, per video:

- Decisions paint the timeline in the order they were made: a decision on frames F overrides, on F
  only, whatever older decisions said there; "undo" clears F.
- A segment as it is now is **rejected** when any of its frames is painted "reject" (rejected frames
  never come back into the dataset by a renumbering), else **accepted** when "accept" covers at least
  ``ACCEPT_COVER`` of its frames, else unreviewed.
- A painted stretch that overlaps no segment of the video as it is now is **unmatched**: it is listed
  (status, dataset card, review page) and applies to nothing, until the segments come back or the
  reviewer decides again.

A decision recorded without frames (before frames were recorded) applies by its segment index to the
segment that has that index now.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from chorushead.core.manifest import Manifest, Record, fingerprint, now

DECISIONS = ("accept", "reject", "undo")
ACCEPT_COVER = 0.9   # accepted frames needed to call a moved segment accepted (its new frames were not seen)

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
                    frames: tuple[int, int] | None = None, segmentation: str | None = None) -> Record:
    """Append a decision on ``video``'s segment ``segment``, which covers ``frames`` of the timeline;
    ``segmentation``: the fingerprint of the contiguity record the segment came from (provenance: which
    segmentation the reviewer saw; the frames are what the decision applies to)."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}")
    if frames is not None and not int(frames[0]) < int(frames[1]):
        raise ValueError(f"frames must be [start, end) with start < end, got {frames}")
    outputs = {"decision": decision, **({"reason": reason} if reason else {}),
               **({"frames": [int(frames[0]), int(frames[1])]} if frames is not None else {}),
               **({"segmentation": segmentation} if segmentation else {})}
    rec = Record(item=segment_key(video, segment), stage="review", status="done",
                 fingerprint=fingerprint(video, segment, decision, reason, frames, now()),
                 outputs=outputs, started=now())
    Manifest(out, "review").append(rec)
    return rec


@dataclass(frozen=True)
class Painted:
    """A stretch [start, end) of a video's timeline and the decision that stands there."""
    video: str
    start: int
    end: int
    decision: str                 # accept | reject
    reason: str | None
    time: float                   # when the decision was made
    key: str                      # the segment key it was made on


@dataclass
class Resolution:
    """What the review decisions say about the segments as they are now."""
    segments: dict[tuple[str, int], Painted] = field(default_factory=dict)   # (video, index) -> decision
    unmatched: list[Painted] = field(default_factory=list)                   # stands on no segment now


def _subtract(spans: list[Painted], a: int, b: int) -> list[Painted]:
    res = []
    for p in spans:
        if p.end <= a or p.start >= b:
            res.append(p)
            continue
        if p.start < a:
            res.append(Painted(p.video, p.start, a, p.decision, p.reason, p.time, p.key))
        if p.end > b:
            res.append(Painted(p.video, b, p.end, p.decision, p.reason, p.time, p.key))
    return res


def painted(out, ranges: Ranges) -> dict[str, list[Painted]]:
    """Video -> the stretches its decisions paint, in the order they were made (module docstring)."""
    spans: dict[str, list[Painted]] = {}
    for rec in Manifest(out, "review").read_all():
        decision = rec.outputs.get("decision")
        if decision not in DECISIONS:
            continue
        video, index = parse_key(rec.item)
        frames = rec.outputs.get("frames")
        if frames is None:   # an old decision: the segment that has its index now
            now_ = ranges.get(video, [])
            if index >= len(now_):
                continue
            frames = now_[index]
        a, b = int(frames[0]), int(frames[1])
        spans[video] = _subtract(spans.get(video, []), a, b)
        if decision != "undo":
            spans[video].append(Painted(video, a, b, decision, rec.outputs.get("reason"), rec.started, rec.item))
    return spans


def resolve(out, ranges: Ranges) -> Resolution:
    """Apply the review log to the segments of ``ranges`` (video -> segments now); see the docstring."""
    res = Resolution()
    for video, spans in painted(out, ranges).items():
        segs = ranges.get(video)
        if segs is None:
            continue     # a video whose segments are not known now (not built, removed): nothing to say
        for i, (a, b) in enumerate(segs):
            over = [p for p in spans if p.start < b and p.end > a]
            rejects = [p for p in over if p.decision == "reject"]
            accepted = sum(min(b, p.end) - max(a, p.start) for p in over if p.decision == "accept")
            if rejects:
                res.segments[(video, i)] = max(rejects, key=lambda p: p.time)
            elif accepted >= ACCEPT_COVER * (b - a):
                res.segments[(video, i)] = max((p for p in over if p.decision == "accept"), key=lambda p: p.time)
        res.unmatched += [p for p in spans if not any(p.start < b and p.end > a for a, b in segs)]
    return res


def decisions(out, ranges: Ranges) -> dict[tuple[str, int], str]:
    """(video, segment index now) -> "accept" | "reject" for every segment a decision applies to."""
    return {k: p.decision for k, p in resolve(out, ranges).segments.items()}


def describe_unmatched(unmatched: list[Painted], limit: int = 10) -> list[str]:
    """One line per unmatched decision, for status and the dataset card."""
    lines = [f"{p.video} frames {p.start}-{p.end}: {p.decision}{f' ({p.reason})' if p.reason else ''}, made on "
             f"segment {p.key.rpartition(':')[2]}; no segment covers these frames now" for p in unmatched[:limit]]
    if len(unmatched) > limit:
        lines.append(f"... and {len(unmatched) - limit} more")
    return lines
