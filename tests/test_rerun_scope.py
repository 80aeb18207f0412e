"""A changed ``--set`` parameter reruns its stage and everything after it, and nothing before it
(issue 23, part 4): fast, on a build's records written directly (tests/packfixture.py) and packed
once, checked with the runner's own rule (``runner.Plan.states``) and the build's own first step
(``runner.next_task``), over every stage of the pipeline in order."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chorushead.core.manifest import iter_records
from chorushead.runner import Pipeline, Plan, StageSummary, build, load_items, next_task
from chorushead.stages import get_stage
from packfixture import make_upstream

ORDER = ["ingest", "screen", "fingerprint", "bgm_split", "duet_split", "vad", "crop", "contiguity", "fit", "smooth", "assign", "pack"]


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """Records current under the default pipeline for 2 videos, and pack run on them by a build."""
    out = tmp_path_factory.mktemp("scope") / "build"
    make_upstream(out, n_videos=2, segments=((0, 160),), seconds=6.0)
    summaries = build(None, out, Pipeline.load(), stages=["pack"], progress=False, log=lambda *_: None)
    assert [(s.stage, s.done, s.failed) for s in summaries] == [("pack", 2, 0)]
    return out


def _states(out: Path, sets: list[str]) -> dict[str, dict[str, str]]:
    pipeline = Pipeline.load(overrides=sets)
    assert pipeline.stages == ORDER
    plan = Plan.of(pipeline)
    latest = iter_records(out, pipeline.stages)
    return {vid: {name: state for name, (state, _fp) in plan.states(it, latest).items()}
            for vid, it in load_items(out).items()}


def test_the_unchanged_pipeline_reruns_nothing(packed):
    states = _states(packed, [])
    assert len(states) == 2
    for per_stage in states.values():
        assert list(per_stage) == ORDER
        assert set(per_stage.values()) == {"current"}, per_stage


# one result-changing parameter per stage, and where the rerun must start
CHANGES = [("vad", "vad.aggressiveness=3"), ("crop", "crop.min_face=60"),
           ("contiguity", "contiguity.min_seconds=4.5"), ("smooth", "smooth.sigma=2.0"),
           ("assign", "assign.min_correlation=0.2")]


@pytest.mark.parametrize("stage, setting", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_changed_setting_reruns_its_stage_and_blocks_what_follows_only(packed, stage, setting):
    name, _, value = setting.partition("=")
    assert name.split(".")[0] == stage
    assert str(getattr(get_stage(stage).make_params({}), name.split(".")[1])) != value   # really a change
    i = ORDER.index(stage)
    for vid, per_stage in _states(packed, [setting]).items():
        want = {s: "current" for s in ORDER[:i]} | {stage: "todo"} | {s: "blocked" for s in ORDER[i + 1:]}
        assert per_stage == want, (vid, per_stage)


@pytest.mark.parametrize("stage, setting", CHANGES[:3], ids=[c[0] for c in CHANGES[:3]])
def test_the_build_starts_at_the_changed_stage(packed, stage, setting):
    """What `chorushead build --set` would do first for each video: the changed stage, with every stage
    before it counted as reused and none as blocked."""
    pipeline = Pipeline.load(overrides=[setting])
    plan = Plan.of(pipeline)
    latest = iter_records(packed, pipeline.stages)
    item_stages = [s for s in ORDER if get_stage(s).kind != "global"]
    for it in load_items(packed).values():
        summaries = {s: StageSummary(s) for s in item_stages}
        task = next_task(item_stages, plan, it, packed, latest, summaries)
        assert task is not None and task.stage == stage
        before = ORDER[:ORDER.index(stage)]
        assert {s: (summaries[s].reused, summaries[s].blocked) for s in before} == {s: (1, 0) for s in before}
        assert all(summaries[s].reused == 0 for s in item_stages[len(before):])


def test_an_execution_only_setting_reruns_nothing(packed):
    for per_stage in _states(packed, ["crop.device=cpu", "crop.torch_threads=2", "fit.batch_size=8"]).values():
        assert set(per_stage.values()) == {"current"}, per_stage


def test_a_pack_setting_reruns_pack_only(packed, tmp_path):
    """pack is global (its fingerprint needs its plan over all videos): the build repacks every video
    and every stage before it stays current, reused, never redone."""
    out = tmp_path / "b"
    shutil.copytree(packed, out)
    for per_stage in _states(out, ["pack.stride_seconds=1.0"]).values():
        assert {s: per_stage[s] for s in ORDER[:-1]} == {s: "current" for s in ORDER[:-1]}
    from chorushead.core.windows import WindowReader
    before = len(WindowReader(out / "windows.lmdb", None))
    summaries = build(None, out, Pipeline.load(overrides=["pack.stride_seconds=1.0"]), progress=False,
                      log=lambda *_: None)
    by_name = {s.stage: s for s in summaries}
    for s in ORDER[:-1]:
        assert (by_name[s].done, by_name[s].failed, by_name[s].reused) == (0, 0, 2), (s, by_name[s])
    assert by_name["pack"].done == 2 and by_name["pack"].failed == 0
    # segments of 160 frames: 5 s windows at 0.5 s stride -> 1 per video; at 1 s -> 1 per video as well,
    # so the content is the same but the LMDB's geometry (stride) is rewritten
    assert len(WindowReader(out / "windows.lmdb", None)) == before
    assert WindowReader(out / "windows.lmdb", None).meta["stride"] == 30
