"""The screen stage (issue 21 part 2): the paper's initial filtering, automated. Short generated duets
with real faces (chorushead.sample), 3 s at 256x512: a good one passes; a hard cut, a pan, a zoom, a
face turned away, one or three singers, a low resolution and a wrong frame rate are each rejected with
their reason; thresholds at their boundaries; the runner stops a rejected video at the screen and a
changed screen threshold reruns the screen only."""
from __future__ import annotations

import types

import cv2
import numpy as np
import pytest

from chorushead.core import media
from chorushead.core.manifest import Record, iter_records
from chorushead.runner import Pipeline, Plan, load_items
from chorushead.sample import make_duet_frames
from chorushead.stages import screen

N = 90          # 3 s at 30 fps
# The clips are 256x512 (the demo's size); three singers need smaller faces than crop's 80 px
P = dict(min_face=40.0, face_every=1)   # 3 s clips: faces on every sampled frame (9, not 3)


def _write(path, frames, fps=30):
    media.encode_video(path, frames, fps=fps)
    return path


def _profile_frames(monkeypatch) -> np.ndarray:
    """The good duet with singer 2's photo squeezed towards a profile about its nose (the landmark
    tests' yaw warp, strong)."""
    import chorushead.sample as sample
    from chorushead.backends.mtcnn import MtcnnDetector
    from warped_faces import yaw_squeeze
    orig = sample.face_images
    det = MtcnnDetector(min_face=40.0)

    def turned(size: int) -> list[np.ndarray]:
        photos = orig(size)
        boxes, lms = det.detect_all([photos[0]])[0]
        nose, iod = lms[0][2][0], lms[0][1][0] - lms[0][0][0]
        u = (np.arange(size, dtype=np.float32) - nose) / iod
        map_x = np.tile(nose + iod * (u + 0.5 * u * u), (size, 1)).astype(np.float32)
        map_y = np.repeat(np.arange(size, dtype=np.float32)[:, None], size, axis=1)
        photos[0] = cv2.remap(photos[0], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return photos

    assert yaw_squeeze is not None   # the same warp as tests/warped_faces.py, about the nose
    monkeypatch.setattr(sample, "face_images", turned)
    return make_duet_frames(N, seed=0).frames


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("screen")
    good = make_duet_frames(N, seed=0).frames
    other = np.ascontiguousarray(make_duet_frames(N, seed=3).frames[:, :, ::-1])
    other = (other.astype(np.int16) + np.array([60, -20, 40])).clip(0, 255).astype(np.uint8)   # another shot
    wide = make_duet_frames(N, size=(256, 768), seed=0).frames
    one = make_duet_frames(N, size=(256, 256), n_faces=1).frames
    out = {
        "good": _write(d / "good.mp4", good),
        "cut": _write(d / "cut.mp4", np.concatenate([good[:45], other[45:]])),
        # the camera pans: a 512 px window slides 160 px over the wider stage in 3 s (~10% of the width/s)
        "pan": _write(d / "pan.mp4", np.stack([wide[t, :, int(t * 160 / N):int(t * 160 / N) + 512] for t in range(N)])),
        # the camera zooms in by 20% of the frame over 3 s
        "zoom": _write(d / "zoom.mp4", np.stack([cv2.resize(good[t, int(t * .4):256 - int(t * .4), int(t * .8):512 - int(t * .8)],
                                                            (512, 256)) for t in range(N)])),
        "one": _write(d / "one.mp4", np.concatenate([one, np.full_like(one, 60)], axis=2)),
        "three": _write(d / "three.mp4", make_duet_frames(N, size=(256, 768), n_faces=3).frames),
        "small": _write(d / "small.mp4", good[:, ::2, ::2]),
        "slow": _write(d / "slow.mp4", good[::2], fps=15),
    }
    return out


@pytest.fixture(scope="module")
def measured(clips):
    """measure() once per clip (the expensive part), so every threshold test only decides again."""
    res = {}
    for name, path in clips.items():
        pr = media.probe(path)
        res[name] = (screen.measure(str(path), pr.width, pr.height, screen.Params(**P)), pr)
    return res


def _decide(measured, name, **kw):
    m, pr = measured[name]
    gates, reasons, out, met = screen.decide(m, screen.Params(**{**P, **kw}), pr.width, pr.height, pr.fps)
    return gates, reasons, met


def test_a_good_duet_passes_and_records_what_was_measured(measured):
    gates, reasons, met = _decide(measured, "good")
    assert gates == [], reasons
    assert met.cuts == 0 and met.max_cut_score < 0.03
    assert met.median_motion < 0.005 and met.moving_fraction == 0
    assert met.face_counts == {"2": met.frames_sampled} and met.frames_sampled == 9
    assert met.median_max_yaw < 10


@pytest.mark.parametrize("name, gate", [("cut", "cuts"), ("pan", "motion"), ("zoom", "motion"),
                                        ("one", "singers"), ("three", "singers")])
def test_each_bad_clip_fails_its_gate(measured, name, gate):
    gates, reasons, met = _decide(measured, name)
    assert gate in gates, (name, reasons, met)
    if name in ("cut", "one", "three"):      # nothing else is wrong with them
        assert gates == [gate], reasons


def test_the_cut_is_found_where_it_is(measured, clips):
    m, pr = measured["cut"]
    _, _, out, met = screen.decide(m, screen.Params(**P), pr.width, pr.height, pr.fps)
    assert met.cuts == 1 and met.max_cut_score > 0.9
    assert out.cut_times == [pytest.approx(1.5, abs=0.34)]   # the shots meet at frame 45 = 1.5 s


def test_three_singers_pass_when_the_screen_asks_for_three(measured):
    assert _decide(measured, "three", n_singers=3)[0] == []
    assert _decide(measured, "one", n_singers=1)[0] == []


def test_low_resolution_and_wrong_frame_rate_fail_on_ingests_probe(measured):
    g, reasons, _ = _decide(measured, "small", min_width=300, min_height=200)
    assert "resolution" in g and "256x128" in reasons[0]
    g, reasons, _ = _decide(measured, "slow")
    assert g == ["fps"] and "15 fps" in reasons[0]


def test_thresholds_at_their_boundaries(measured):
    _, _, met = _decide(measured, "cut")
    assert _decide(measured, "cut", max_cuts=1)[0] == []                                # one cut allowed
    assert _decide(measured, "cut", cut_threshold=met.max_cut_score + 0.01)[0] == []    # just above its score
    assert _decide(measured, "cut", cut_threshold=met.max_cut_score)[0] == ["cuts"]      # score >= threshold
    _, _, met = _decide(measured, "pan")
    assert "motion" not in _decide(measured, "pan", max_moving_fraction=met.moving_fraction)[0]
    _, _, met = _decide(measured, "good")
    assert "yaw" not in _decide(measured, "good", max_yaw_deg=met.median_max_yaw)[0]
    assert "yaw" in _decide(measured, "good", max_yaw_deg=met.median_max_yaw - 0.1)[0]
    assert "singers" not in _decide(measured, "good", min_count_fraction=1.0)[0]
    g, _, _ = _decide(measured, "good", min_width=512, min_height=256, min_fps=30, max_fps=30)
    assert g == []
    assert _decide(measured, "good", min_width=513)[0] == ["resolution"]


def test_a_face_turned_towards_profile_fails_frontality(monkeypatch, tmp_path):
    path = _write(tmp_path / "profile.mp4", _profile_frames(monkeypatch))
    pr = media.probe(path)
    p = screen.Params(**P)
    m = screen.measure(str(path), pr.width, pr.height, p)
    gates, reasons, _, met = screen.decide(m, p, pr.width, pr.height, pr.fps)
    assert "yaw" in gates, (reasons, met)
    assert met.median_max_yaw > p.max_yaw_deg


def test_yaw_from_landmarks_is_signed_and_zero_for_a_symmetric_face():
    frontal = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], float)
    assert screen.yaw_deg(frontal) == pytest.approx(0.0)
    turned = frontal.copy()
    turned[2, 0] += 10          # nose a quarter of the eye distance to the image's right
    assert screen.yaw_deg(turned) > 20 and screen.yaw_deg(turned * [-1, 1]) < -20


# ----------------------------------------------------------------------------- in a build
def _ingest_record(out, path, vid="v") -> Record:
    pr = media.probe(path)
    return Record(item=vid, stage="ingest", status="done", fingerprint="f",
                  outputs={"source": str(path), "n_frames": N, "fps": 30, "width": pr.width, "height": pr.height,
                           "duration": pr.duration, "source_fps": pr.fps})


def _run_screen(tmp_path, path, **kw):
    from chorushead.stages.base import Context, Item
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    ctx = Context(item=Item(id="v", source=str(path)), out=tmp_path, tmp=tmp, final=tmp_path / "final",
                  upstream={"ingest": _ingest_record(tmp_path, path)})
    res = screen.process(ctx, screen.Params(**{**P, **kw}), None)
    screen.STAGE.check(res)
    return res


def test_process_skips_with_a_reason_and_can_be_turned_off(clips, tmp_path):
    res = _run_screen(tmp_path, clips["cut"])
    assert res.status == "skipped" and res.reason.startswith("screened out: 1 shot cut(s)")
    assert res.outputs["failed_gates"] == ["cuts"] and len(res.outputs["cut_times"]) == 1
    off = _run_screen(tmp_path, clips["cut"], enabled=False)
    assert off.status == "done" and off.metrics["enabled"] is False and off.metrics["frames_sampled"] == 0
    small = _run_screen(tmp_path, clips["small"])   # resolution fails first: nothing decoded
    assert small.status == "skipped" and "resolution" in small.reason and small.metrics["frames_sampled"] == 0


def test_a_rejected_video_stops_at_the_screen_and_a_threshold_reruns_the_screen_only(tmp_path):
    """The runner's rule (Plan.states) on a build's records (tests/packfixture.py): a skipped screen
    record blocks bgm_split, duet_split, crop and all after them (fingerprint does not need it); a
    changed screen threshold leaves every passing video's later records current (a gate's fingerprint is
    not in theirs); a pipeline without the screen (an older build's) ignores it."""
    from packfixture import make_upstream
    from chorushead.core.manifest import Manifest
    out = tmp_path / "b"
    make_upstream(out, n_videos=2, segments=((0, 160),), seconds=6.0)
    pipeline = Pipeline.load()
    plan = Plan.of(pipeline)
    items = load_items(out)
    latest = iter_records(out, pipeline.stages)
    def item_states(pl, it):   # pack (global) is "ready": nothing packed here
        return {s for name, (s, _) in pl.states(it, latest).items() if name != "pack"}

    for it in items.values():
        assert item_states(plan, it) == {"current"}
    # a changed threshold: the screen is todo, the expensive stages wait for it; once it has rerun
    # (passed) they are current again, not redone
    plan2 = Plan.of(Pipeline.load(overrides=["screen.max_yaw_deg=40"]))
    it = items["song0-abcdef"]
    st = plan2.states(it, latest)
    assert st["screen"][0] == "todo" and st["fingerprint"][0] == "current" and st["bgm_split"][0] == "blocked"
    old = latest["screen"][it.id]
    Manifest(out, "screen").append(Record(item=it.id, stage="screen", status="done", fingerprint=st["screen"][1],
                                          outputs=old.outputs, metrics=old.metrics))
    latest = iter_records(out, pipeline.stages)
    assert item_states(plan2, it) == {"current"}
    # rejected: everything that needs the screen is blocked, nothing failed
    Manifest(out, "screen").append(Record(item=it.id, stage="screen", status="skipped", fingerprint=st["screen"][1],
                                          reason="screened out: 1 shot cut(s) at 1.5 s"))
    latest = iter_records(out, pipeline.stages)
    st = plan2.states(it, latest)
    assert st["screen"][0] == "current" and st["fingerprint"][0] == "current"
    assert {s for s, (state, _) in st.items() if state == "blocked"} == set(pipeline.stages) - {"ingest", "screen", "fingerprint"}
    # an older build's pipeline, without the screen: the screen is no need, the records stay current
    old_pl = Pipeline(stages=[s for s in pipeline.stages if s != "screen"],
                      params={k: v for k, v in pipeline.params.items() if k != "screen"}, fps=pipeline.fps)
    assert item_states(Plan.of(old_pl), items["song1-abcdef"]) == {"current"}
    # the card's funnel: the screen row names the reason, the rejected video is not pending after it
    from chorushead.report.card import _funnel, read_build
    rows = {r.stage: r for r in _funnel(read_build(out, pipeline))}
    assert rows["screen"].reasons == {"skipped: screened out: 1 shot cut(s) at 1.5 s": 1}
    assert rows["screen"].videos == 1 and rows["bgm_split"].pending == 0


def test_faces_are_looked_for_on_every_face_every_th_sampled_frame(clips, measured, monkeypatch):
    """The default looks for faces at 1 fps (every 3rd frame sampled at 3 fps): the counts and yaw come
    from those frames; cuts and motion still from every sampled pair."""
    _, pr = measured["good"]
    calls = []
    p = screen.Params(min_face=40.0)
    real = screen.setup(p)

    class Spy:          # the worker's detector, counting what measure() asks it to look at
        def resized(self, min_face):
            det = real.resized(min_face)
            assert det.pnet is real.pnet          # the nets stay loaded: only the face size changes
            return types.SimpleNamespace(detect_all=lambda frames: calls.append(len(frames)) or det.detect_all(frames))

    got = screen.measure(str(clips["good"]), pr.width, pr.height, p, Spy())
    assert calls == [3] and got["frames"] == 9 and len(got["counts"]) == 3 and len(got["motions"]) == 8
    with pytest.raises(ValueError, match="face_every"):
        screen.Params(face_every=0)
