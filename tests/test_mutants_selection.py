"""Values of chorushead.stages.selection that mutation testing showed were not pinned
(docs/mutation-survivors.md, `scripts/mutation.sh selection`).
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter

import pytest

from chorushead.stages.selection import SPLIT_NAMES, assign_splits, kept_segments


def test_wrong_number_of_fractions_names_what_is_needed():
    msg = "pack.split needs 3 fractions (train, val, test), got [0.7, 0.3]"
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        assign_splits(["a", "b"], [0.7, 0.3], 0)
    with pytest.raises(ValueError, match=re.escape("got [0.5, 0.2, 0.2, 0.1]")):
        assign_splits(["a", "b"], [0.5, 0.2, 0.2, 0.1], 0)


def test_order_is_the_seeded_sha1_and_the_cut_is_by_largest_remainder():
    """Worked out by hand: 7 videos at 60/10/30 -> raw 4.2 / 0.7 / 2.1 -> floor 4/0/2, one left over,
    which goes to val (remainder 0.7 beats 0.2 and 0.1). The videos are taken in sha1("seed:video") order."""
    videos = [f"vid{i}" for i in range(7)]
    order = sorted(videos, key=lambda v: hashlib.sha1(f"5:{v}".encode()).hexdigest())
    got = assign_splits(videos, [0.6, 0.1, 0.3], 5)
    assert got == dict(zip(order, ["train"] * 4 + ["val"] + ["test"] * 2))
    assert list(got) == order


def test_equal_remainders_go_to_the_earlier_split():
    # 2 videos at 1/3 each: raw 0.67 each, all floors 0, two left over; ties keep train, val, test order
    got = Counter(assign_splits(["a", "b"], [1 / 3, 1 / 3, 1 / 3], 0).values())
    assert got == Counter({"train": 1, "val": 1})
    assert set(assign_splits([], [0.6, 0.1, 0.3], 0).values()) == set()
    assert SPLIT_NAMES == ("train", "val", "test")


def test_kept_segments_accept_reject_unreviewed_and_other_videos():
    d = {("v", 0): "accept", ("v", 1): "reject", ("w", 2): "accept", ("v", 4): "accept", ("v", 5): "accept"}
    assert kept_segments(d, "v", 5, include_unreviewed=False) == [0, 4]      # index 5 is past n_segments
    assert kept_segments(d, "v", 5, include_unreviewed=True) == [0, 2, 3, 4]
    assert kept_segments(d, "w", 3, include_unreviewed=False) == [2]
    assert kept_segments({}, "v", 0, include_unreviewed=True) == []


def test_a_duplicate_group_takes_its_first_sorted_members_plain_split():
    """Every member gets the plain split of the group's first member (sorted); members outside
    ``videos`` are ignored and nobody outside the group moves."""
    videos = [f"v{i:02d}" for i in range(12)]
    plain = assign_splits(videos, [0.5, 0.25, 0.25], seed=3)
    first = "v00"    # the smallest id: first of any group it is in
    others = [v for v in videos if plain[v] != plain[first]][:2]    # both in another split
    group = [others[1], "zz-not-a-video", first, others[0]]
    grouped = assign_splits(videos, [0.5, 0.25, 0.25], seed=3, groups=[group])
    assert [grouped[v] for v in (first, *others)] == [plain[first]] * 3
    assert "zz-not-a-video" not in grouped
    assert {v: s for v, s in grouped.items() if v not in (first, *others)} == \
        {v: s for v, s in plain.items() if v not in (first, *others)}
