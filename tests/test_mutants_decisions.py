"""Review decisions (chorushead.core.decisions): cases mutation testing showed were not pinned
(docs/mutation-survivors.md). Values are stated by hand; comments name what each case guards."""
import itertools

import pytest

from chorushead.core import decisions as D
from chorushead.core.manifest import Manifest, Record


@pytest.fixture
def clock(monkeypatch):
    """Decision times 1000, 1001, ... (one per call of ``now``)."""
    ticks = itertools.count(1000)
    t = {"last": None}

    def fake():
        t["last"] = float(next(ticks))
        return t["last"]
    monkeypatch.setattr(D, "now", fake)
    return t


def test_parse_key_splits_on_the_last_colon():
    assert D.parse_key("chan:vid:3") == ("chan:vid", 3)
    assert D.parse_key(D.segment_key("a:b", 12)) == ("a:b", 12)


def test_record_decision_refuses_bad_input_with_a_message(tmp_path):
    with pytest.raises(ValueError, match="decision must be one of"):
        D.record_decision(tmp_path, "v", 0, "maybe")
    with pytest.raises(ValueError, match=r"start < end, got \(5, 5\)"):
        D.record_decision(tmp_path, "v", 0, "accept", frames=(5, 5))      # empty range: refused
    assert Manifest(tmp_path, "review").read_all() == []


def test_record_decision_outputs_and_time(tmp_path, clock):
    rec = D.record_decision(tmp_path, "v", 2, "accept", frames=(10, 20))
    assert rec.outputs == {"decision": "accept", "frames": [10, 20]}     # no reason / segmentation keys
    assert rec.started == clock["last"] and rec.started > 0
    back = Manifest(tmp_path, "review").read_all()
    assert [r.to_dict() for r in back] == [rec.to_dict()]
    rec2 = D.record_decision(tmp_path, "v", 2, "reject", reason="blur", frames=(10, 20), segmentation="fp")
    assert rec2.outputs == {"decision": "reject", "reason": "blur", "frames": [10, 20], "segmentation": "fp"}


def test_each_decision_record_has_its_own_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "now", lambda: 5.0)
    base = {"video": "v", "segment": 1, "decision": "accept", "reason": "ok", "frames": (0, 10)}
    fp = D.record_decision(tmp_path, **base).fingerprint
    for k, other in [("video", "w"), ("segment", 2), ("decision", "reject"), ("reason", "blur"),
                     ("frames", (0, 11))]:
        assert D.record_decision(tmp_path, **{**base, k: other}).fingerprint != fp, k
    # the same decision made again later is another record
    monkeypatch.setattr(D, "now", lambda: 6.0)
    assert D.record_decision(tmp_path, **base).fingerprint != fp


def test_a_partly_overridden_decision_keeps_everything_but_its_frames(tmp_path, clock):
    r = D.record_decision(tmp_path, "v", 0, "reject", reason="blur", frames=(0, 100))
    D.record_decision(tmp_path, "v", 1, "accept", frames=(40, 60))
    res = D.resolve(tmp_path, {"v": [(0, 30), (45, 55), (70, 100)]})
    t = r.started
    assert res.segments[("v", 0)] == D.Painted("v", 0, 40, "reject", "blur", t, "v:0")
    assert res.segments[("v", 2)] == D.Painted("v", 60, 100, "reject", "blur", t, "v:0")
    assert res.segments[("v", 1)].decision == "accept" and res.segments[("v", 1)].key == "v:1"
    assert res.unmatched == []


def test_undo_of_exactly_the_same_frames_leaves_nothing(tmp_path, clock):
    D.record_decision(tmp_path, "v", 0, "reject", frames=(10, 20))
    D.record_decision(tmp_path, "v", 0, "undo", frames=(10, 20))
    assert D.painted(tmp_path, {"v": [(5, 15), (15, 25)]}) == {"v": []}    # no empty remnant at 10 or 20
    res = D.resolve(tmp_path, {"v": [(5, 15), (15, 25)]})
    assert res.segments == {} and res.unmatched == []


def test_a_decision_touching_an_older_one_leaves_it_whole(tmp_path, clock):
    D.record_decision(tmp_path, "v", 0, "reject", frames=(10, 20))
    D.record_decision(tmp_path, "v", 1, "accept", frames=(20, 30))
    D.record_decision(tmp_path, "v", 2, "accept", frames=(0, 10))
    spans = D.painted(tmp_path, {"v": [(10, 20)]})["v"]
    assert [(p.start, p.end, p.decision) for p in spans] == [(10, 20, "reject"), (20, 30, "accept"), (0, 10, "accept")]


def test_an_undo_never_paints_and_is_never_unmatched(tmp_path, clock):
    D.record_decision(tmp_path, "v", 0, "undo", frames=(500, 600))
    assert D.painted(tmp_path, {"v": [(0, 10)]}) == {"v": []}
    assert D.resolve(tmp_path, {"v": [(0, 10)]}).unmatched == []


def test_an_unknown_decision_or_an_old_index_that_is_gone_skips_only_that_record(tmp_path, clock):
    Manifest(tmp_path, "review").append(Record(item="v:0", stage="review", status="done", fingerprint="x",
                                               outputs={"decision": "maybe", "frames": [0, 10]}))
    D.record_decision(tmp_path, "v", 7, "reject")                       # no frames, index 7 is gone now
    D.record_decision(tmp_path, "w", 0, "reject")                       # no frames, video unknown now
    D.record_decision(tmp_path, "v", 0, "reject", frames=(0, 10))
    D.record_decision(tmp_path, "v", 1, "accept")                       # no frames: segment 1 now
    assert D.decisions(tmp_path, {"v": [(0, 10), (20, 30)]}) == {("v", 0): "reject", ("v", 1): "accept"}


def test_a_video_not_known_now_does_not_hide_the_others(tmp_path, clock):
    D.record_decision(tmp_path, "gone", 0, "reject", frames=(0, 10))    # first in the log
    D.record_decision(tmp_path, "v", 0, "reject", frames=(0, 10))
    assert D.decisions(tmp_path, {"v": [(0, 10)]}) == {("v", 0): "reject"}


def test_the_newest_of_several_rejects_on_a_segment_stands(tmp_path, clock):
    D.record_decision(tmp_path, "v", 0, "reject", reason="old", frames=(0, 5))
    D.record_decision(tmp_path, "v", 0, "reject", reason="new", frames=(5, 10))
    D.record_decision(tmp_path, "v", 0, "reject", reason="elsewhere", frames=(100, 110))
    p = D.resolve(tmp_path, {"v": [(0, 20)]}).segments[("v", 0)]
    assert p.reason == "new" and (p.start, p.end) == (5, 10)


def test_unmatched_lists_every_video_and_touching_is_not_overlapping(tmp_path, clock):
    D.record_decision(tmp_path, "a", 0, "reject", frames=(0, 10))       # ends where a's segment starts
    D.record_decision(tmp_path, "b", 0, "accept", frames=(50, 60))      # starts where b's segment ends
    res = D.resolve(tmp_path, {"a": [(10, 20)], "b": [(40, 50)]})
    assert [(p.video, p.start, p.end) for p in res.unmatched] == [("a", 0, 10), ("b", 50, 60)]
    assert res.segments == {}


def _p(i, reason=None, key="chan:vid:3"):
    return D.Painted("vid", 10 * i, 10 * i + 5, "reject", reason, 1.0, key)


def test_describe_unmatched_lines():
    assert D.describe_unmatched([_p(1, "blur"), _p(2)]) == [
        "vid frames 10-15: reject (blur), made on segment 3; no segment covers these frames now",
        "vid frames 20-25: reject, made on segment 3; no segment covers these frames now"]


def test_describe_unmatched_limit():
    ten, eleven = [_p(i) for i in range(10)], [_p(i) for i in range(11)]
    assert len(D.describe_unmatched(ten)) == 10                          # exactly the limit: no "more" line
    lines = D.describe_unmatched(eleven)                                  # default limit 10
    assert len(lines) == 11 and lines[-1] == "... and 1 more" and lines[-2].startswith("vid frames 90-95")
    assert D.describe_unmatched(eleven, limit=3)[3:] == ["... and 8 more"]
