"""Tests that kill the mutants of chorushead/stages/base.py that survived the existing tests
(docs/mutation-survivors.md, `scripts/mutation.sh stage_base`): where an item's folder and an upstream
path are, what a Result keeps of typed outputs, when Stage.check looks at the metrics, the whole lines
of make_params' and check_chunking's refusals (at their boundaries), and which parameters count.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from chorushead.core.shapes import Metrics, Outputs, ShapeError
from chorushead.stages.base import (DEFAULT_FPS, EXEC, Context, GlobalContext, Item, Result, Stage, check_chunking,
                                    params_dict, result_params)


def full(msg: str) -> str:
    return "^" + re.escape(msg) + "$"


@dataclass
class Out(Outputs):
    path: str
    note: str | None = None


@dataclass
class Met(Metrics):
    n: int


@dataclass
class Params:
    size: int = 3
    name: str = "x"
    device: str = field(default="cpu", metadata=EXEC)
    batch: int = field(default=8, metadata={"exec": False})

    def __post_init__(self):
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")


STAGE = Stage(name="demo", version="1", params=Params, outputs=Out, metrics=Met)


def test_item_dir_and_context_path(tmp_path):
    it = Item(id="song-1", source="/raw/song.mp4")
    assert it.dir(tmp_path) == tmp_path / "items" / "song-1"
    assert it.dir(str(tmp_path)) == tmp_path / "items" / "song-1"          # a str root is taken too
    assert (it.stems, it.origin) == (None, None)
    ctx = Context(item=it, out=tmp_path, tmp=tmp_path / "t", final=tmp_path / "f", upstream={})
    assert ctx.path("items/song-1/vad/a.wav") == tmp_path / "items/song-1/vad/a.wav"
    assert (ctx.fps, ctx.fingerprint, DEFAULT_FPS) == (30, "", 30)
    g = GlobalContext(out=tmp_path, fps=25, upstream={}, previous={}, fingerprints={})
    assert (g.progress, g.items) == (True, [])


def test_result_keeps_typed_outputs_as_their_dicts():
    r = Result(outputs=Out(path="a"), metrics=Met(n=2))
    assert r.outputs == {"path": "a"} and r.metrics == {"n": 2}                 # note=None left out
    r = Result(outputs={"path": "b", "extra": 1}, metrics={})
    assert r.outputs == {"path": "b", "extra": 1} and r.metrics == {}
    r = Result()
    assert (r.outputs, r.metrics, r.status, r.reason, r.seconds, r.error_class) == ({}, {}, "done", None, None, None)


def test_check_needs_metrics_of_a_done_result_only():
    STAGE.check(Result(outputs={"path": "a"}, metrics={"n": 1}))
    with pytest.raises(ShapeError, match=full("stage demo: metrics do not match Met: unknown none, missing ['n']")):
        STAGE.check(Result(outputs={"path": "a"}, metrics={}))
    STAGE.check(Result(outputs={"path": "a"}, status="skipped", reason="why"))   # skipped: may leave them empty
    with pytest.raises(ShapeError, match=full("stage demo: metrics.n: expected int, got 'x'")):
        STAGE.check(Result(outputs={"path": "a"}, metrics={"n": "x"}, status="skipped"))   # given: checked
    with pytest.raises(ShapeError, match=full("stage demo: outputs do not match Out: unknown ['p'], missing ['path']")):
        STAGE.check(Result(outputs={"p": "a"}, metrics={"n": 1}))


def test_make_params():
    assert STAGE.make_params(None) == Params()
    assert STAGE.make_params({}) == Params()
    values = {"size": 5}
    assert STAGE.make_params(values) == Params(size=5) and values == {"size": 5}
    msg = "stage demo: unknown parameter(s) ['bogus', 'nope']; known: ['batch', 'device', 'name', 'size']"
    with pytest.raises(ValueError, match=full(msg)):
        STAGE.make_params({"nope": 1, "size": 2, "bogus": 3})
    with pytest.raises(ValueError, match=full("stage demo: size must be >= 0, got -1")) as e:
        STAGE.make_params({"size": -1})
    assert isinstance(e.value.__cause__, ValueError) and str(e.value.__cause__) == "size must be >= 0, got -1"


def test_make_params_names_the_stage_for_a_type_error_too():
    @dataclass
    class Typed:
        n: int = 1

        def __post_init__(self):
            if not isinstance(self.n, int):
                raise TypeError(f"n must be an int, got {self.n!r}")
    s = Stage(name="typed", version="1", params=Typed, outputs=Out, metrics=Met)
    with pytest.raises(ValueError, match=full("stage typed: n must be an int, got 'a'")) as e:
        s.make_params({"n": "a"})
    assert type(e.value) is ValueError and isinstance(e.value.__cause__, TypeError)


def test_params_dict_and_result_params():
    p = Params(size=4, device="cuda")
    assert params_dict(p) == {"size": 4, "name": "x", "device": "cuda", "batch": 8}
    assert result_params(p) == {"size": 4, "name": "x", "batch": 8}       # only metadata exec=True is left out
    assert list(result_params(p)) == ["size", "name", "batch"]
    assert EXEC == {"exec": True}


@pytest.mark.parametrize("chunk, overlap", [(10.0, 0.0), (10.0, 9.99)])
def test_check_chunking_takes(chunk, overlap):
    assert check_chunking(chunk, overlap) is None


@pytest.mark.parametrize("chunk, overlap", [(10.0, 10.0), (10.0, 11.0), (10.0, -0.5)])
def test_check_chunking_refuses(chunk, overlap):
    msg = f"overlap_seconds ({overlap}) must be >= 0 and less than chunk_seconds ({chunk})"
    with pytest.raises(ValueError, match=full(msg)):
        check_chunking(chunk, overlap)


def test_stage_defaults():
    assert (STAGE.process, STAGE.setup, STAGE.needs, STAGE.kind, STAGE.plan, STAGE.process_all, STAGE.plan_reads,
            STAGE.gpu, STAGE.preload, STAGE.identity, STAGE.gate, STAGE.description) == \
        (None, None, (), "item", None, None, (), False, (), None, False, "")
