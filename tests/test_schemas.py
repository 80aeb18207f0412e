"""Typed stage records: every stage declares Params/Outputs/Metrics, the runner refuses results of the
wrong shape, and manifests/*.schema.json are exactly what the dataclasses generate."""
from __future__ import annotations

import dataclasses
import importlib

import pytest

from chorushead import runner, schemas
from chorushead.core.decisions import record_decision
from chorushead.core.manifest import Manifest, Record
from chorushead.core.shapes import Metrics, Outputs, ShapeError
from chorushead.stages import STAGE_MODULES, get_stage
from chorushead.stages.base import Item, Result, Stage
from conftest import ROOT, validate_record


def test_schema_files_are_generated_from_the_dataclasses():
    stale = schemas.stale(ROOT / "manifests")
    assert not stale, f"stale schemas {stale}: run python -m chorushead.schemas"
    generated = set(schemas.generate())
    assert {f"{s}.schema.json" for s in STAGE_MODULES} | {"record.schema.json", "review.schema.json"} == generated
    assert {p.name for p in (ROOT / "manifests").glob("*.schema.json")} == generated   # no orphans


def test_every_stage_has_one_naming_scheme():
    for name, module in STAGE_MODULES.items():
        mod = importlib.import_module(module)
        st = mod.STAGE
        assert st.name == name
        assert st.params is mod.Params and st.outputs is mod.Outputs and st.metrics is mod.Metrics, name
        assert issubclass(mod.Outputs, Outputs) and issubclass(mod.Metrics, Metrics), name
        assert all(f.name != "fps" for f in dataclasses.fields(mod.Params)), f"{name}: fps is the pipeline's"
        schemas.shape_schema(mod.Outputs), schemas.shape_schema(mod.Metrics)   # every field type is supported


def test_check_names_the_stage_and_the_problem():
    st = get_stage("smooth")
    ok = {"segments": 1, "accel_before": 0.1, "accel_after": 0.05}
    st.check(Result(outputs={"segments": ["seg000.npz"]}, metrics=ok))
    with pytest.raises(ShapeError, match=r"stage smooth: outputs .*missing \['segments'\]"):
        st.check(Result(outputs={}, metrics=ok))
    with pytest.raises(ShapeError, match=r"stage smooth: outputs .*unknown \['extra'\]"):
        st.check(Result(outputs={"segments": [], "extra": 1}, metrics=ok))
    with pytest.raises(ShapeError, match=r"stage smooth: outputs.segments\[0\]: expected str, got 3"):
        st.check(Result(outputs={"segments": [3]}, metrics=ok))
    with pytest.raises(ShapeError, match=r"stage smooth: metrics.segments: expected int, got True"):
        st.check(Result(outputs={"segments": []}, metrics={**ok, "segments": True}))
    st.check(Result(status="skipped", reason="r", outputs={"segments": []}))     # skipped: metrics optional


def test_typed_read_of_a_record():
    from chorushead.stages import vad
    r = Record(item="a", stage="vad", status="done", fingerprint="0" * 16,
               outputs={"start_frame": 3, "end_frame": 9, "start_s": 0.1, "end_s": 0.3, "sr": 16000,
                        "vocals_16k": "v.wav", "bgm_16k": "b.wav", "singers_16k": ["s0.wav"], "newer_field": 1})
    o = vad.Outputs.of(r)
    assert (o.start_frame, o.end_frame, o.singers_16k) == (3, 9, ["s0.wav"])
    del r.outputs["end_frame"]
    o = vad.Outputs.of(r)                       # a partial record reads; the missing field raises when used
    assert o.start_frame == 3
    with pytest.raises(ShapeError, match="stage vad: the record has no outputs.end_frame .*rerun stage vad"):
        o.end_frame
    r.outputs["sr"] = "16k"
    with pytest.raises(ShapeError, match="stage vad: outputs.sr: expected int"):
        vad.Outputs.of(r)


def _bad_process(ctx, params, model):
    return Result(outputs={"segments": "seg000.npz"}, metrics={"segments": 1, "accel_before": 0, "accel_after": 0})


def test_the_runner_refuses_a_wrong_shape_at_once(tmp_path, monkeypatch):
    real = get_stage("smooth")
    bad = Stage(name="smooth", version="1", params=real.params, outputs=real.outputs, metrics=real.metrics,
                process=_bad_process, needs=())
    monkeypatch.setattr(runner, "get_stage", lambda name: bad)
    task = runner.Task("smooth", {}, Item(id="v", source="/x"), str(tmp_path), {}, "0" * 16, 30)
    with pytest.raises(ShapeError, match=r"stage smooth: outputs.segments: expected a list"):
        runner.run_task(task)
    assert not (tmp_path / "items" / "v" / "smooth").exists() and not list((tmp_path / "items" / "v").glob(".tmp-*"))


def test_review_records_validate(tmp_path):
    record_decision(tmp_path, "song-abc", 2, "reject", "jaw frozen")
    record_decision(tmp_path, "song-abc", 3, "accept")
    for r in Manifest(tmp_path, "review").read_all():
        validate_record(r.to_dict())
        schemas.ReviewOutputs.of(r)
