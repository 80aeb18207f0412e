"""What pack packs: the split of each video, and which of its segments the review lets through.

Kept apart from pack so the review UI, status and tests can ask the same questions pack does.
"""
from __future__ import annotations

import hashlib

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def assign_splits(videos: list[str], fractions: list[float], seed: int,
                  groups: list[list[str]] | None = None) -> dict[str, str]:
    """Deterministic split by video: order by a seeded hash, then cut at the fractions
    (largest remainder, so 1 video -> train, 3 videos -> 2/0/1 for 60/10/30).

    ``groups``: duplicates (the same song twice, see :mod:`chorushead.stages.fingerprint`) that must
    share a split: every member gets the split its group's first member id (sorted) gets without
    groups. So a build without duplicates splits exactly as before, and finding a duplicate moves
    only the other members of its group. Members not in ``videos`` are ignored."""
    plain = _assign(videos, fractions, seed)
    for g in groups or []:
        members = sorted(v for v in g if v in plain)
        for v in members[1:]:
            plain[v] = plain[members[0]]
    return plain


def _assign(videos: list[str], fractions: list[float], seed: int) -> dict[str, str]:
    if len(fractions) != len(SPLIT_NAMES):
        raise ValueError(f"pack.split needs {len(SPLIT_NAMES)} fractions (train, val, test), got {fractions}")
    order = sorted(videos, key=lambda v: hashlib.sha1(f"{seed}:{v}".encode()).hexdigest())
    n = len(order)
    raw = [f * n for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    for i in sorted(range(len(counts)), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    names = [name for name, c in zip(SPLIT_NAMES, counts) for _ in range(c)]
    return dict(zip(order, names))


def kept_segments(decisions: dict[tuple[str, int], str], video: str, n_segments: int,
                  include_unreviewed: bool) -> list[int]:
    """Indices of ``video``'s segments to pack: accepted ones, plus unreviewed ones when asked.
    ``decisions`` is :func:`chorushead.core.decisions.decisions` (rejected segments never pass)."""
    return [i for i in range(n_segments)
            if decisions.get((video, i)) == "accept"
            or (decisions.get((video, i)) is None and include_unreviewed)]
