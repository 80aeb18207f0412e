"""crop keeps its progress per chunk of video: a kill redoes at most one chunk, and the outputs are the
same bytes as an uninterrupted run (real MTCNN on a generated duet with real faces, CPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synth_video import make_duet_frames  # noqa: E402

pytest.importorskip("facenet_pytorch")

import chorushead.stages.crop as crop  # noqa: E402
from chorushead.core.manifest import Record  # noqa: E402
from chorushead.core.media import encode_video, ffmpeg_exe, iter_frames, iter_frames_from, timeline_origin  # noqa: E402
from chorushead.stages.base import Context, Item  # noqa: E402

N_FRAMES, START, END = 100, 7, 97         # vad keeps 90 frames: 3 chunks of 1 s
SIZE = (256, 512)
ABSENT = (30, 45)                          # strip 1's singer leaves across a chunk edge
TIMING = {"decode_wait_s", "detect_s", "save_s", "seconds", "frames_per_s"}


def make_ctx(out: Path, video: Path, fingerprint: str, attempt: int = 0) -> Context:
    """As the runner does: a fresh temp folder per attempt, the final folder beside it."""
    item = Item(id="duet", source=str(video))
    final = item.dir(out) / "crop"
    tmp = item.dir(out) / f".tmp-crop-{attempt}"
    tmp.mkdir(parents=True)
    rec = lambda stage, outputs: Record(item=item.id, stage=stage, status="done", fingerprint="x", outputs=outputs)
    upstream = {"ingest": rec("ingest", {"source": str(video), "width": SIZE[1], "height": SIZE[0], "fps": 30,
                                         "n_frames": N_FRAMES, "duration": N_FRAMES / 30, "source_fps": 30.0}),
                "vad": rec("vad", {"start_frame": START, "end_frame": END, "start_s": START / 30, "end_s": END / 30,
                                   "sr": 16000, "vocals_16k": "v.wav", "bgm_16k": "b.wav", "singers_16k": []})}
    return Context(item=item, out=out, tmp=tmp, final=final, upstream=upstream, fps=30, fingerprint=fingerprint)


def params() -> crop.Params:
    return crop.Params(min_face=48, chunk_seconds=1.0)


@pytest.fixture(scope="module")
def duet(tmp_path_factory):
    frames, _ = make_duet_frames(N_FRAMES, size=SIZE, absent=ABSENT, seed=5)
    video = tmp_path_factory.mktemp("video") / "duet.mp4"
    encode_video(video, frames, fps=30)
    return video


@pytest.fixture(scope="module")
def detector():
    return crop.STAGE.setup(params())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, duet, detector):
    """An uninterrupted run: its outputs, metrics and files."""
    ctx = make_ctx(tmp_path_factory.mktemp("ref"), duet, "fp")
    res = crop.STAGE.process(ctx, params(), detector)
    assert not (ctx.final.parent / crop.PARTIAL).exists()       # retired once assembled
    return res, snapshot(ctx.tmp)


def snapshot(folder: Path) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}
    with np.load(folder / "detections.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return files, arrays


def assert_same(res, snap, ref_res, ref_snap) -> None:
    files, arrays = snap
    ref_files, ref_arrays = ref_snap
    assert sorted(files) == sorted(ref_files)
    assert [f for f in files if files[f] != ref_files[f]] == []                 # the same JPEG bytes
    assert sorted(arrays) == sorted(ref_arrays)
    for k in arrays:
        assert arrays[k].dtype == ref_arrays[k].dtype and np.array_equal(arrays[k], ref_arrays[k], equal_nan=True), k
    assert res.outputs == ref_res.outputs
    drop = lambda m: {k: v for k, v in m.items() if k not in TIMING}
    assert drop(res.metrics) == drop(ref_res.metrics)


class Spy:
    """Counts the chunks computed; ``fail_at``: the first time that chunk runs, the decoder raises
    after 10 of its frames (a kill in the middle of it: its half-written folder stays behind)."""

    def __init__(self, monkeypatch, fail_at: int | None = None):
        self.computed: list[int] = []
        self.fail_at = fail_at
        real = crop._crop_chunk

        def spy(frames, detector, p, tp, a, part, c, bar):
            self.computed.append(c)
            if c == self.fail_at:
                self.fail_at = None
                frames = self._die_after(frames, 10)
            return real(frames, detector, p, tp, a, part, c, bar)
        monkeypatch.setattr(crop, "_crop_chunk", spy)

    @staticmethod
    def _die_after(frames, k):
        for x in frames:
            if k < len(x):
                raise RuntimeError("killed")
            k -= len(x)
            yield x


def test_a_run_killed_in_chunk_3_redoes_only_chunk_3(tmp_path, duet, detector, reference, monkeypatch):
    out = tmp_path / "out"
    spy = Spy(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError, match="killed"):
        crop.STAGE.process(make_ctx(out, duet, "fp", 0), params(), detector)
    part = out / "items" / "duet" / crop.PARTIAL
    assert sorted(p.name for p in part.iterdir()) == [".tmp-chunk_000002", "chunk_000000", "chunk_000001",
                                                      "key.json"]
    assert spy.computed == [0, 1, 2]

    spy.computed.clear()
    ctx = make_ctx(out, duet, "fp", 1)
    res = crop.STAGE.process(ctx, params(), detector)
    assert spy.computed == [2]                                   # chunks 0 and 1 were reused
    assert not part.exists() and not list(part.parent.glob(".old-crop-partial-*"))
    assert_same(res, snapshot(ctx.tmp), *reference)
    assert res.metrics["frames"] == END - START and sum(res.metrics["faces_per_strip"]) > 0


def test_a_partial_folder_from_another_fingerprint_is_discarded(tmp_path, duet, detector, reference, monkeypatch):
    out = tmp_path / "out"
    spy = Spy(monkeypatch, fail_at=2)
    with pytest.raises(RuntimeError, match="killed"):
        crop.STAGE.process(make_ctx(out, duet, "other-settings", 0), params(), detector)
    part = out / "items" / "duet" / crop.PARTIAL
    assert json.loads((part / "key.json").read_text())["fingerprint"] == "other-settings"
    assert (part / "chunk_000001").is_dir()

    spy.computed.clear()
    ctx = make_ctx(out, duet, "fp", 1)
    res = crop.STAGE.process(ctx, params(), detector)
    assert spy.computed == [0, 1, 2]                             # nothing of the other run reused
    assert not part.exists()
    assert_same(res, snapshot(ctx.tmp), *reference)

    # No fingerprint (a direct call outside the runner): never resumed either.
    with pytest.raises(RuntimeError, match="killed"):
        spy.fail_at = 1
        crop.STAGE.process(make_ctx(out, duet, "", 2), params(), detector)
    spy.computed.clear()
    crop.STAGE.process(make_ctx(out, duet, "", 3), params(), detector)
    assert spy.computed == [0, 1, 2]


def test_sigkill_between_chunks_then_rerun(tmp_path, duet, detector, reference, monkeypatch):
    """A real process killed with SIGKILL once its second chunk is committed (its third is slowed
    down so the kill lands inside it); the rerun computes only the third chunk."""
    out = tmp_path / "out"
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); import test_crop_resume as t, chorushead.stages.crop as c\n"
            "real = c._crop_chunk\n"
            "def slow(frames):\n"
            "    for x in frames:\n"
            "        time.sleep(0.5); yield x\n"
            "c._crop_chunk = lambda f, *a: real(slow(f) if a[-2] == 2 else f, *a)\n"
            "c.STAGE.process(t.make_ctx(t.Path(sys.argv[2]), t.Path(sys.argv[3]), 'fp'), t.params(), "
            "c.STAGE.setup(t.params()))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), str(out), str(duet)],
                            cwd=Path(__file__).parents[1])
    part = out / "items" / "duet" / crop.PARTIAL
    try:
        deadline = time.time() + 120
        while not (part / "chunk_000001").is_dir():
            assert proc.poll() is None and time.time() < deadline, "the crop process ended before chunk 2"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (part / "chunk_000002").exists()

    spy = Spy(monkeypatch)
    ctx = make_ctx(out, duet, "fp", 1)
    res = crop.STAGE.process(ctx, params(), detector)
    assert spy.computed == [2]
    assert_same(res, snapshot(ctx.tmp), *reference)


def test_chunk_spans():
    assert crop.chunk_spans(90, 30, 1.0) == [(0, 30), (30, 60), (60, 90)]
    assert crop.chunk_spans(95, 30, 1.0)[-1] == (90, 95)
    assert crop.chunk_spans(95, 30, 0.0) == [(0, 95)]


@pytest.mark.parametrize("convert", ["opencv", "ffmpeg"])
def test_chunk_decodes_give_the_frames_of_one_decode(tmp_path, duet, convert):
    """iter_frames_from (a seek to the keyframe before the range, file timestamps kept, trim by pts)
    gives exactly the frames iter_frames gives for the same timeline range from a decode from the
    start, chunk by chunk, also for a 25 fps source with keyframes every 12 frames and B-frames whose
    video starts 0.47 s after its audio (timeline origin pts 14, seeks that really skip)."""
    odd = tmp_path / "odd.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(duet), "-r", "25",
                    "-c:v", "libx264", "-g", "12", "-bf", "3", "-pix_fmt", "yuv420p", str(tmp_path / "v25.mp4")],
                   check=True)
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=d=5",
                    "-itsoffset", "0.47", "-i", str(tmp_path / "v25.mp4"), "-map", "1:v", "-map", "0:a",
                    "-c:v", "copy", "-c:a", "aac", str(odd)], check=True)
    assert timeline_origin(odd) == 14 and timeline_origin(duet) == 0
    for video in (duet, odd):
        whole = np.concatenate(list(iter_frames(video, start_frame=START, n_frames=END - START, chunk=7,
                                                convert=convert)))
        assert len(whole) == END - START
        for a, b in crop.chunk_spans(END - START, 30, 0.7):          # 21-frame chunks: edges mid-GOP
            part = np.concatenate(list(iter_frames_from(video, start_frame=START + a, n_frames=b - a, chunk=4,
                                                        convert=convert)))
            assert np.array_equal(part, whole[a:b]), (video.name, a, b)
        # One decode cut into the chunks (as crop does for the chunks still to do) = the same frames.
        cut = crop._Cut(iter(iter_frames_from(video, start_frame=START + 21, n_frames=END - START - 21, chunk=4,
                                              convert=convert)))
        got = [np.concatenate(list(cut.take(b - a))) for a, b in crop.chunk_spans(END - START, 30, 0.7)[1:]]
        assert np.array_equal(np.concatenate(got), whole[21:])
        # Past the end: fewer frames, as iter_frames.
        tail = list(iter_frames_from(video, start_frame=N_FRAMES - 5, n_frames=30, convert=convert))
        assert sum(len(x) for x in tail) == sum(len(x) for x in iter_frames(video, start_frame=N_FRAMES - 5,
                                                                               n_frames=30, convert=convert))
