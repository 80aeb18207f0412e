"""Values of chorushead.core.shapes that mutation testing showed were not pinned
(docs/mutation-survivors.md, `scripts/mutation.sh shapes`).

The shapes are the runner's check on what a stage returns, so each test pins the verdict (None or the
exact line) for one type, on both sides of what it accepts.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

import pytest

from chorushead.core.manifest import Record
from chorushead.core.shapes import Metrics, Outputs, ShapeError, json_type, type_error


@pytest.mark.parametrize("value, tp, verdict", [
    (None, type(None), None),
    (0, type(None), "w: expected null, got 0"),
    (True, bool, None),
    (1, bool, "w: expected bool, got 1"),
    (3, int, None),
    (True, int, "w: expected int, got True"),
    (1, float, None),
    (1.5, float, None),
    (True, float, "w: expected float, got True"),
    ("1", float, "w: expected float, got '1'"),
    ("a", str, None),
    (1, str, "w: expected str, got 1"),
    (object(), Any, None),
    # unions: any member that accepts the value accepts it; else one line naming the whole type
    (None, int | None, None),
    (2, int | None, None),
    ("x", int | None, "w: 'x' is not int | None"),
    ("x", typing.Optional[typing.List[int]], "w: 'x' is not Optional[List[int]]"),
    ([1, None], list[int | None], None),
    ([1, "a"], list[int], "w[1]: expected int, got 'a'"),
    ((1, 2), list[int], None),
    ({"a": 1}, list[int], "w: expected a list, got {'a': 1}"),
    ([1, "a", None], typing.List, None),           # a bare List holds anything
    ({"a": 1, "b": 2}, dict[str, int], None),
    ({"a": 1, "b": "x"}, dict[str, int], "w.b: expected int, got 'x'"),
    ({"a": {"c": [1, 2.5]}}, dict[str, dict[str, list[int]]], "w.a.c[1]: expected int, got 2.5"),
    ([1], dict[str, int], "w: expected an object, got [1]"),
    ({"a": object()}, typing.Dict, None),         # a bare Dict holds anything
])
def test_type_error_verdicts(value, tp, verdict):
    assert type_error(value, tp, "w") == verdict


def test_an_unsupported_type_is_a_type_error_naming_where():
    with pytest.raises(TypeError) as e:
        type_error(1, set, "stage x: outputs.n")
    assert str(e.value) == "stage x: outputs.n: unsupported field type <class 'set'> in a record shape"
    # inside a union, the member's own where is kept
    with pytest.raises(TypeError) as e:
        type_error(1, int | set, "w")
    assert str(e.value) == "w: unsupported field type <class 'set'> in a record shape"
    with pytest.raises(TypeError) as e:
        json_type(set)
    assert str(e.value) == "unsupported field type <class 'set'> in a record shape"


@dataclass
class _Out(Outputs):
    path: str
    n: int
    note: str | None = None
    score: float | None = 0.5


@dataclass
class _Met(Metrics):
    seconds: float
    frames: int = 0


def test_check_names_the_stage_part_and_what_differs():
    _Out.check({"path": "a", "n": 1}, "crop")
    with pytest.raises(ShapeError) as e:
        _Out.check(["path"], "crop")
    assert str(e.value) == "stage crop: outputs must be an object, got list"
    with pytest.raises(ShapeError) as e:
        _Out.check({"path": "a"}, "crop")
    assert str(e.value) == ("stage crop: outputs do not match _Out: unknown none, missing ['n']")
    with pytest.raises(ShapeError) as e:
        _Out.check({"path": "a", "n": 1, "extra": 2}, "crop")
    assert str(e.value) == ("stage crop: outputs do not match _Out: unknown ['extra'], missing none")
    with pytest.raises(ShapeError) as e:
        _Out.check({"path": "a", "n": "1"}, "crop")
    assert str(e.value) == "stage crop: outputs.n: expected int, got '1'"


def test_to_dict_leaves_out_only_optional_fields_left_at_none():
    assert _Out("a", 1).to_dict() == {"path": "a", "n": 1, "score": 0.5}
    # score's default is 0.5, so None there is information and is kept
    assert _Out("a", 1, note="x", score=None).to_dict() == {"path": "a", "n": 1, "note": "x", "score": None}
    assert _Met(2.0).to_dict() == {"seconds": 2.0, "frames": 0}


def test_metrics_of_a_record_reads_its_metrics_under_its_stage():
    r = Record(item="v", stage="vad", status="done", fingerprint="f",
               outputs={"seconds": "not this one"}, metrics={"seconds": 1.5, "frames": 7, "newer": 1})
    m = _Met.of(r)
    assert (m.seconds, m.frames) == (1.5, 7)
    old = Record(item="v", stage="vad", status="done", fingerprint="f", metrics={"frames": 7})
    m = _Met.of(old)
    assert m.frames == 7
    with pytest.raises(ShapeError) as e:
        m.seconds
    assert str(e.value) == ("stage vad: the record has no metrics.seconds (written by an older version?); "
                            "rerun stage vad")
    with pytest.raises(ShapeError, match=r"^stage vad: metrics.frames: expected int, got 'x'$"):
        _Met.of(Record(item="v", stage="vad", status="done", fingerprint="f", metrics={"frames": "x"}))


def test_json_type_of_bare_and_nested_containers():
    assert json_type(typing.List) == {"type": "array", "items": {}}
    assert json_type(typing.Dict) == {"type": "object", "additionalProperties": {}}
    assert json_type(list[int | None]) == {"type": "array", "items": {"anyOf": [{"type": "integer"},
                                                                              {"type": "null"}]}}
    assert json_type(dict[str, float]) == {"type": "object", "additionalProperties": {"type": "number"}}
