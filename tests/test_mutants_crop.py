"""crop stage (chorushead.stages.crop): cases mutation testing showed were not pinned
(docs/mutation-survivors.md). The stage runs in-process with a detector that reads each strip's face
from its top-left pixel and a decoder that serves frames from an array, so every box, file, chunk
and metric is known by hand. Values are stated by hand; comments name what each case guards."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import chorushead.stages.crop as crop
from chorushead.backends import mtcnn
from chorushead.backends.mtcnn import Faces, TrackParams, track_strips
from chorushead.core import media
from chorushead.core.errors import BadInput
from chorushead.core.manifest import Record
from chorushead.stages.base import Context, Item

H, W = 40, 96                   # two 48-px strips
FPS = 30


# ----------------------------------------------------------------------------- geometry

def test_emoca_crop_box_of_a_tall_box_and_its_parameters():
    # w 40, h 60: side 50, centre (30, 50 + 0.12·50 = 56), half floor(62.5)/2 = 31
    np.testing.assert_array_equal(crop.emoca_crop_box([10, 20, 50, 80]), [-1.0, 25.0, 61.0, 87.0])
    # scale 2, shift 0: half floor(100)/2 = 50 around (30, 50)
    np.testing.assert_array_equal(crop.emoca_crop_box([10, 20, 50, 80], scale=2.0, shift=0.0),
                                  [-20.0, 0.0, 80.0, 100.0])
    # side 21 · 1.25 = 26.25 -> floor 26 (EMOCA's int()), half 13
    np.testing.assert_array_equal(crop.emoca_crop_box([0, 0, 21, 21], shift=0.0), [-2.5, -2.5, 23.5, 23.5])


def test_emoca_crop_box_on_stacked_integer_boxes_is_float64():
    boxes = np.array([[[10, 20, 50, 80]], [[0, 0, 20, 20]]], np.int32)      # (2, 1, 4)
    cb = crop.emoca_crop_box(boxes)
    assert cb.shape == (2, 1, 4) and cb.dtype == np.float64
    np.testing.assert_allclose(cb[0, 0], [-1.0, 25.0, 61.0, 87.0])
    np.testing.assert_allclose(cb[1, 0], [-2.5, 2.4 - 2.5, 22.5, 2.4 + 22.5])     # half floor(25)/2 = 12.5
    assert crop.emoca_crop_box(np.array([10, 20, 50, 80], np.float32)).dtype == np.float64   # computed in float64


def ramp(h: int = 12, w: int = 12) -> np.ndarray:
    """Channel 0 = 10·x, channel 1 = 10·y, channel 2 = 7: linear, so bilinear samples are exact."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([10 * x, 10 * y, np.full_like(x, 7)], axis=-1).astype(np.uint8)


def test_warp_crop_maps_the_corners_to_0_and_size_minus_1():
    img = ramp()
    out = crop.warp_crop(img, np.array([2.0, 3.0, 6.0, 7.0]), 5)       # scale (5-1)/(6-2) = 1
    np.testing.assert_array_equal(out, img[3:8, 2:7])
    # y2 is not read: the crop is square, its side is x2 - x1
    np.testing.assert_array_equal(crop.warp_crop(img, np.array([2.0, 3.0, 6.0, 99.0]), 5), img[3:8, 2:7])
    big = crop.warp_crop(img, np.array([2.0, 3.0, 6.0, 7.0]), 9)       # scale 2: half-pixel samples
    assert big.shape == (9, 9, 3)
    assert big[0, 0].tolist() == [20, 30, 7] and big[8, 8].tolist() == [60, 70, 7]
    assert big[0, 1].tolist() == [25, 30, 7] and big[1, 0].tolist() == [20, 35, 7]   # bilinear, not nearest


def test_warp_crop_default_size_is_emocas_224():
    assert crop.warp_crop(ramp(), np.array([0.0, 0.0, 11.0, 11.0])).shape == (224, 224, 3)


def test_warp_crop_is_black_outside_the_image():
    img = np.full((10, 10, 3), 200, np.uint8)
    out = crop.warp_crop(img, np.array([-10.0, -10.0, 9.0, 9.0]), 20)   # scale 1: pixel (i, j) = img[i-10, j-10]
    assert out[:10].max() == 0 and out[:, :10].max() == 0                  # black, not the edge pixel
    assert out[10:, 10:].min() == 200


# ----------------------------------------------------------------------------- chunks and the decode cut

def test_chunk_spans_edges():
    assert crop.chunk_spans(7, 30, 0.1) == [(0, 3), (3, 6), (6, 7)]
    assert crop.chunk_spans(6, 25, 0.5) == [(0, 6)]                       # 12.5 frames rounds to 12
    assert crop.chunk_spans(30, 25, 0.5) == [(0, 12), (12, 24), (24, 30)]
    assert crop.chunk_spans(3, 30, 0.001) == [(0, 1), (1, 2), (2, 3)]    # never below one frame
    assert crop.chunk_spans(5, 30, -1.0) == [(0, 5)]                      # <= 0: one chunk
    assert crop.chunk_spans(0, 30, 0.0) == []
    assert crop.chunk_spans(1, 30, 0.0) == [(0, 1)]


def took(cut, m: int) -> list[list[int]]:
    """cut.take(m) as lists (at most 10 chunks: a take that never ends fails instead of hanging)."""
    import itertools
    return [list(x) for x in itertools.islice(cut.take(m), 10)]


def test_cut_hands_out_consecutive_ranges_splitting_decode_chunks():
    src = np.arange(10)
    cut = crop._Cut(iter([src[0:4], src[4:8], src[8:10]]))
    got = [took(cut, m) for m in (3, 3, 1, 5)]
    # 3 = first 3 of chunk 0; 3 = its last one + 2 of chunk 1; 1 more; then 5 asked, 3 left
    assert got == [[[0, 1, 2]], [[3], [4, 5]], [[6]], [[7], [8, 9]]]
    assert took(cut, 2) == [] and took(cut, 0) == []


def test_cut_take_of_zero_consumes_nothing():
    cut = crop._Cut(iter([np.arange(4)]))
    assert took(cut, 0) == []
    assert took(cut, 4) == [[0, 1, 2, 3]]


def test_cut_of_exactly_a_decode_chunk_leaves_no_empty_piece():
    cut = crop._Cut(iter([np.arange(4), np.arange(4, 8)]))
    assert took(cut, 4) == [[0, 1, 2, 3]]
    assert took(cut, 2) == [[4, 5]]                       # not an empty chunk first


# ----------------------------------------------------------------------------- prefetch thread

def in_thread(fn, timeout: float = 10.0):
    """Run ``fn`` in a daemon thread; its result, or a failed assertion if it does not return in time."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:     # noqa: BLE001 - handed back below
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} did not return within {timeout} s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_prefetch_hands_over_every_item_then_ends():
    pf = crop._Prefetch((i for i in range(7)), depth=2)
    assert pf.thread.daemon                                             # never keeps a process alive
    assert in_thread(lambda: list(pf)) == list(range(7))
    in_thread(pf.close)
    assert not pf.thread.is_alive()


def test_prefetch_reraises_the_producers_error_after_its_items():
    def gen():
        yield 1
        yield 2
        raise BadInput("bad frame")
    pf = crop._Prefetch(gen())
    got = []

    def consume():
        for x in pf:
            got.append(x)
    with pytest.raises(BadInput, match="bad frame"):
        in_thread(consume, timeout=5.0)
    assert got == [1, 2]
    in_thread(pf.close)


def test_prefetch_counts_the_time_spent_waiting():
    def slow():
        for i in range(3):
            time.sleep(0.05)
            yield i
    pf = crop._Prefetch(slow())
    assert in_thread(lambda: list(pf)) == [0, 1, 2] and pf.wait_s >= 0.1
    in_thread(pf.close)


def test_prefetch_close_stops_the_producer_early_and_closes_it():
    pulled = []
    state = {"closed": False}

    def endless():
        try:
            for i in range(100000):
                pulled.append(i)
                yield i
        finally:
            state["closed"] = True
    pf = crop._Prefetch(endless(), depth=2)
    it = iter(pf)
    assert in_thread(lambda: next(it)) == 0
    in_thread(pf.close)
    assert not pf.thread.is_alive()
    assert state["closed"] and len(pulled) <= 6            # stopped a few items on, not at the end


# ----------------------------------------------------------------------------- writer thread

def test_writer_writes_bgr_jpegs_named_by_frame_at_the_quality_given(tmp_path):
    dirs = [tmp_path / "s0", tmp_path / "s1"]
    for d in dirs:
        d.mkdir()
    p = crop.Params(jpeg_quality=40, crop_size=16)
    view = np.zeros((20, 20, 3), np.uint8)
    view[..., 0] = 250                                            # red in RGB
    view[5:9, 5:9] = (0, 80, 160)
    cb = np.array([2.0, 2.0, 18.0, 18.0])
    w = crop._Writer(p, dirs)
    w.put(7, [(1, view, cb)])
    w.put(1234567, [(0, view, cb), (1, view, cb)])
    in_thread(w.close)
    assert sorted(f.name for f in dirs[0].iterdir()) == ["1234567.jpg"]
    assert sorted(f.name for f in dirs[1].iterdir()) == ["000007.jpg", "1234567.jpg"]
    want = cv2.imencode(".jpg", cv2.cvtColor(crop.warp_crop(view, cb, 16), cv2.COLOR_RGB2BGR),
                        [int(cv2.IMWRITE_JPEG_QUALITY), 40])[1].tobytes()
    assert (dirs[1] / "000007.jpg").read_bytes() == want
    back = cv2.imread(str(dirs[1] / "000007.jpg"))               # BGR on disk
    assert back.shape == (16, 16, 3) and back[0, 0, 2] > 200 and back[0, 0, 0] < 50
    assert w.busy_s > 0


def test_writer_reports_a_failed_write_with_the_file_and_refuses_more(tmp_path, monkeypatch):
    d = tmp_path / "s0"
    d.mkdir()
    monkeypatch.setattr(crop.cv2, "imwrite", lambda *a, **k: False)
    w = crop._Writer(crop.Params(crop_size=8), [d], depth=1)
    view = np.zeros((10, 10, 3), np.uint8)
    in_thread(lambda: w.put(3, [(0, view, np.array([0.0, 0.0, 9.0, 9.0]))]))
    deadline = time.time() + 5
    while w.error is None and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(OSError) as e:
        in_thread(lambda: w.put(4, [(0, view, np.array([0.0, 0.0, 9.0, 9.0]))]))
    assert str(e.value) == f"could not write {d / '000003.jpg'} (disk full?)"
    with pytest.raises(OSError, match="000003.jpg"):
        in_thread(w.close)


def test_writer_drains_the_queue_after_a_failure(tmp_path, monkeypatch):
    """Frames queued after the failing one are taken off the queue (not written), so close() never
    blocks on a full queue, and the first error is the one reported. The first write is held until
    frames 2 and 3 wait (queue depth 1: frame 3 waits for room)."""
    d = tmp_path / "s0"
    d.mkdir()
    calls = []
    gate = threading.Event()

    def imwrite(path, img, params):
        calls.append(Path(path).name)
        gate.wait(10)
        return False
    monkeypatch.setattr(crop.cv2, "imwrite", imwrite)
    view = np.zeros((10, 10, 3), np.uint8)
    cb = np.array([0.0, 0.0, 9.0, 9.0])
    w = crop._Writer(crop.Params(crop_size=8), [d], depth=1)
    w.put(1, [(0, view, cb)])
    deadline = time.time() + 5
    while not calls and time.time() < deadline:         # the writer is inside frame 1's write
        time.sleep(0.005)
    w.put(2, [(0, view, cb)])                           # queued
    third = threading.Thread(target=w.put, args=(3, [(0, view, cb)]), daemon=True)
    third.start()                                       # waits for room
    time.sleep(0.05)
    gate.set()
    with pytest.raises(OSError, match="000001.jpg"):
        in_thread(w.close, timeout=5.0)
    third.join(5)
    assert calls == ["000001.jpg"] and not third.is_alive()


def test_writer_busy_time_is_summed_over_frames(tmp_path, monkeypatch):
    """busy_s starts at 0 and adds each frame's time (a clock moving 1 s per reading, read only by the
    writer's thread: 2 frames, 1 s each)."""
    d = tmp_path / "s0"
    d.mkdir()
    readings = iter(range(1, 100))

    class Clock:
        @staticmethod
        def perf_counter():
            return float(next(readings))
    monkeypatch.setattr(crop, "time", Clock)
    w = crop._Writer(crop.Params(crop_size=8), [d])
    assert w.busy_s == 0.0 and w.thread.daemon                        # never keeps a process alive
    view = np.zeros((10, 10, 3), np.uint8)
    w.put(0, [(0, view, np.array([0.0, 0.0, 9.0, 9.0]))])
    w.put(1, [(0, view, np.array([0.0, 0.0, 9.0, 9.0]))])
    in_thread(w.close)
    assert w.busy_s == 2.0


def test_an_idle_writer_was_busy_for_no_time(tmp_path):
    w = crop._Writer(crop.Params(), [tmp_path])
    in_thread(w.close)
    assert w.busy_s == 0.0 and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- partial folder

def test_open_partial_makes_a_keyed_folder(tmp_path):
    part = tmp_path / "a" / "b" / crop.PARTIAL
    key = {"fingerprint": "fp", "frames": 9, "chunks": [[0, 9]]}
    assert crop._open_partial(part, key) == part
    assert json.loads((part / "key.json").read_text()) == key
    assert sorted(p.name for p in part.iterdir()) == ["key.json"]


def test_open_partial_keeps_the_chunks_of_the_same_key_and_drops_half_written_ones(tmp_path):
    part = tmp_path / crop.PARTIAL
    key = {"fingerprint": "fp", "frames": 9}
    crop._open_partial(part, key)
    for name in ("chunk_000000", ".tmp-chunk_000001", ".tmp-chunk_000002"):
        (part / name).mkdir()
        (part / name / "x").write_text("1")
    assert crop._open_partial(part, dict(key)) == part
    assert sorted(p.name for p in part.iterdir()) == ["chunk_000000", "key.json"]
    assert (part / "chunk_000000" / "x").read_text() == "1"


@pytest.mark.parametrize("case", ["other key", "no fingerprint", "unreadable key", "no key file"])
def test_open_partial_starts_afresh_for_anything_else(tmp_path, case):
    part = tmp_path / crop.PARTIAL
    key = {"fingerprint": "" if case == "no fingerprint" else "fp", "frames": 9}
    crop._open_partial(part, {**key, "frames": 8} if case == "other key" else key)
    (part / "chunk_000000").mkdir()
    if case == "unreadable key":
        (part / "key.json").write_text("{not json")
    elif case == "no key file":
        (part / "key.json").unlink()
    assert crop._open_partial(part, key) == part
    assert sorted(p.name for p in part.iterdir()) == ["key.json"]
    assert json.loads((part / "key.json").read_text()) == key


def test_load_chunk(tmp_path):
    assert crop._load_chunk(tmp_path / "none") is None
    good = tmp_path / "good"
    good.mkdir()
    np.savez(good / "chunk.npz", frames=np.int64(3), probs=np.ones((2, 3), np.float32))
    got = crop._load_chunk(good)
    assert sorted(got) == ["frames", "probs"] and int(got["frames"]) == 3 and got["probs"].shape == (2, 3)
    torn = tmp_path / "torn"
    torn.mkdir()
    (torn / "chunk.npz").write_bytes(b"PK\x03\x04 torn")
    assert crop._load_chunk(torn) is None and not torn.exists()          # deleted, to be redone
    empty = tmp_path / "empty"
    empty.mkdir()
    assert crop._load_chunk(empty) is None and not empty.exists()


def test_retire_removes_the_folder_and_its_renamed_copy(tmp_path):
    part = tmp_path / crop.PARTIAL
    (part / "chunk_000000").mkdir(parents=True)
    (part / "chunk_000000" / "a.jpg").write_bytes(b"x")
    crop._retire(part)
    assert list(tmp_path.iterdir()) == []
    crop._retire(part)                                                    # nothing there: nothing to do


def test_link_is_a_hard_link_or_a_copy_where_links_fail(tmp_path, monkeypatch):
    src = tmp_path / "a.jpg"
    src.write_bytes(b"jpeg bytes")
    crop._link(src, tmp_path / "b.jpg")
    assert (tmp_path / "b.jpg").stat().st_ino == src.stat().st_ino

    def no_links(a, b):
        raise OSError("cross-device link")
    monkeypatch.setattr(crop.os, "link", no_links)
    crop._link(src, tmp_path / "c.jpg")
    assert (tmp_path / "c.jpg").read_bytes() == b"jpeg bytes"
    assert (tmp_path / "c.jpg").stat().st_ino != src.stat().st_ino


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux /proc")
def test_fsync_tree_without_syncfs_fsyncs_every_file_and_folder(tmp_path, monkeypatch):
    (tmp_path / "w" / "strip0").mkdir(parents=True)
    (tmp_path / "w" / "strip1").mkdir()
    for rel in ("w/chunk.npz", "w/strip0/000000.jpg", "w/strip0/000001.jpg", "w/strip1/000000.jpg"):
        (tmp_path / rel).write_bytes(b"x")
    synced = []
    real = os.fsync
    monkeypatch.setattr(crop.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    monkeypatch.setattr(crop, "_syncfs", lambda root: False)
    n0 = open_fds()
    crop._fsync_tree(tmp_path / "w")
    assert open_fds() == n0                                                # every fd closed
    rel = sorted(os.path.relpath(p, tmp_path) for p in synced)
    assert rel == ["w", "w/chunk.npz", "w/strip0", "w/strip0/000000.jpg", "w/strip0/000001.jpg", "w/strip1",
                   "w/strip1/000000.jpg"]
    synced.clear()
    monkeypatch.setattr(crop, "_syncfs", lambda root: True)
    crop._fsync_tree(tmp_path / "w")
    assert synced == []                                                   # one syncfs did it all


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux /proc")
def test_syncfs(tmp_path, monkeypatch):
    n0 = open_fds()
    assert crop._syncfs(tmp_path) is True
    assert open_fds() == n0
    assert crop._syncfs(tmp_path / "missing") is False
    monkeypatch.setattr(crop.sys, "platform", "darwin")
    assert crop._syncfs(tmp_path) is False


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux /proc")
def test_fsync_dir_is_best_effort(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(crop.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    n0 = open_fds()
    crop._fsync_dir(tmp_path)
    assert synced == [str(tmp_path)] and open_fds() == n0
    assert crop._fsync_dir(tmp_path / "missing") is None                  # cannot open: nothing, no error

    def fails(fd):
        raise OSError("EINVAL")
    monkeypatch.setattr(crop.os, "fsync", fails)
    crop._fsync_dir(tmp_path)                                             # swallowed
    assert open_fds() == n0


# ----------------------------------------------------------------------------- the stage, with fakes

class Reader:
    """MTCNN stand-in: a strip's pixel (0, 0) holds (faces, x1, y1) of a 20-px box; probability ``prob``
    (0.95: below TrackParams.steady_prob, so keyframe spacing never grows). ``detect`` counts images
    and adds 0.123 s to ``seconds`` per call (as the real one's timers)."""

    def __init__(self, prob: float = 0.95):
        self.seconds = 0.0
        self.images = 0
        self.prob = prob

    def _read(self, images) -> Faces:
        out = Faces.empty((len(images),))
        for i, im in enumerate(images):
            n, x, y = (int(v) for v in im[0, 0])
            if n:
                out.boxes[i] = [x, y, x + 20, y + 20]
                out.probs[i], out.n_faces[i] = self.prob, n
                out.landmarks[i] = [[x + 2 * j, y + j] for j in range(5)]
        return out

    def detect(self, images) -> Faces:
        out = self._read(images)
        out.detected[:] = True
        self.images += len(images)
        self.seconds += 0.123
        return out

    def refine(self, images, boxes) -> Faces:
        return self._read(images)


class Decoder:
    """iter_frames_from / timeline_origin over an in-memory video (timeline frame i = video[i])."""

    def __init__(self, video: np.ndarray, fail_after: int | None = None):
        self.video, self.fail_after = video, fail_after
        self.calls: list[dict] = []
        self.origins = 0
        self.cv_threads: list[int] = []

    def iter_frames_from(self, path, fps=30, start_frame=0, n_frames=None, chunk=32, convert="ffmpeg", origin=None):
        self.calls.append({"path": Path(path).name, "fps": fps, "start": start_frame, "n": n_frames, "chunk": chunk,
                           "convert": convert, "origin": origin})
        self.cv_threads.append(cv2.getNumThreads())
        end = min(len(self.video), start_frame + n_frames)

        def gen():
            sent = 0
            for a in range(start_frame, end, chunk):
                x = self.video[a:min(a + chunk, end)]
                if self.fail_after is not None and sent + len(x) > self.fail_after:
                    k, self.fail_after = self.fail_after - sent, None
                    if k:
                        yield x[:k]
                    raise RuntimeError("killed")
                sent += len(x)
                yield x
        return gen()

    def timeline_origin(self, path, fps=30):
        self.origins += 1
        self.origin_args = (Path(path).name, fps)
        return 3


def make_video(n: int, width: int = W) -> np.ndarray:
    """Strip 0: one face at x1 = 2 + i, y1 = 6 on every frame i, two faces on frames 4 and 5.
    Strip 1 (from x = width // 2): a face at (10, 3) on frames 2-5 and 8-9 only."""
    v = np.zeros((n, H, width, 3), np.uint8)
    for i in range(n):
        v[i, 0, 0] = (2 if i in (4, 5) else 1, 2 + i, 6)
        if i in (2, 3, 4, 5, 8, 9):
            v[i, 0, width // 2] = (1, 10, 3)
        v[i, 10:, :] = (i * 20) % 256           # something to crop
    return v


def make_ctx(root: Path, start: int, end: int, fingerprint: str = "fp", attempt: int = 0,
             width: int = W, height: int = H, fps: int = FPS) -> Context:
    item = Item(id="v", source=str(root / "v.mp4"))
    out = root / "out"
    final = item.dir(out) / "crop"
    tmp = item.dir(out) / f".tmp-crop-{attempt}"
    tmp.mkdir(parents=True)
    rec = lambda stage, o: Record(item="v", stage=stage, status="done", fingerprint="x", outputs=o)
    upstream = {"ingest": rec("ingest", {"source": str(root / "v.mp4"), "width": width, "height": height, "fps": FPS,
                                         "n_frames": 12, "duration": 0.4, "source_fps": 30.0}),
                "vad": rec("vad", {"start_frame": start, "end_frame": end, "start_s": start / FPS, "end_s": end / FPS,
                                   "sr": 16000, "vocals_16k": "v.wav", "bgm_16k": "b.wav", "singers_16k": []})}
    return Context(item=item, out=out, tmp=tmp, final=final, upstream=upstream, fps=fps, fingerprint=fingerprint)


EVERY = dict(keyframe_every=1, keyframe_max=1, search_every=1)     # the pyramid on every strip and frame


@pytest.fixture
def decoder(monkeypatch):
    def install(video, **kw):
        dec = Decoder(video, **kw)
        monkeypatch.setattr(media, "iter_frames_from", dec.iter_frames_from)
        monkeypatch.setattr(media, "timeline_origin", dec.timeline_origin)
        return dec
    return install


def run(ctx, params, detector=None):
    """The stage, in a thread given 10 s (it takes ~0.1 s): a loop that never ends fails the test."""
    return in_thread(lambda: crop.process(ctx, params, detector or Reader()), timeout=10.0)


def read_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}


def arrays(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "detections.npz") as z:
        return {k: z[k] for k in z.files}


def test_process_by_hand(tmp_path, decoder):
    video = make_video(12)
    dec = decoder(video)
    ctx = make_ctx(tmp_path, 2, 10)                  # frames 2..9: 8 frames, chunks of 3 (0.1 s at 30 fps)
    p = crop.Params(chunk_seconds=0.1, crop_size=16, jpeg_quality=90, **EVERY)
    cv2.setNumThreads(3)
    try:
        res = run(ctx, p)
        assert cv2.getNumThreads() == 3                                   # restored
    finally:
        cv2.setNumThreads(-1)
    assert dec.cv_threads == [1]                                          # one OpenCV thread while cropping
    # One decode from the first frame to do (OpenCV colours, chunks of 4 frames), origin probed once.
    assert dec.calls == [{"path": "v.mp4", "fps": 30, "start": 2, "n": 8, "chunk": 4, "convert": "opencv",
                          "origin": 3}]
    assert dec.origins == 1
    assert res.status == "done"
    assert res.outputs == {"detections": "detections.npz", "strips": ["strip0", "strip1"], "n_strips": 2,
                           "frames": 8, "start_frame": 2, "crop_size": 16}
    m = res.metrics
    assert (m["frames"], m["frames_expected"], m["faces_per_strip"], m["multi_face_frames"]) == (8, 8, [8, 6], 2)
    assert m["detected_fraction"] == 1.0 and m["detector_images"] == 16
    assert m["detect_s"] == 0.98                                          # 8 calls × 0.123 s, 2 decimals
    crop.STAGE.check(res)

    files = read_files(ctx.tmp)
    assert sorted(files) == [f"strip0/{t:06d}.jpg" for t in range(8)] + \
        [f"strip1/{t:06d}.jpg" for t in (0, 1, 2, 3, 6, 7)]
    # crop t of strip 1 = timeline frame 2 + t, its own half only, EMOCA's box around (10, 3, 30, 23)
    cb1 = crop.emoca_crop_box(np.array([10, 3, 30, 23], np.float32)).astype(np.float32)
    want = cv2.imencode(".jpg", cv2.cvtColor(crop.warp_crop(video[4][:, 48:], cb1, 16), cv2.COLOR_RGB2BGR),
                        [int(cv2.IMWRITE_JPEG_QUALITY), 90])[1].tobytes()
    assert files["strip1/000002.jpg"] == want

    a = arrays(ctx.tmp)
    t = np.arange(8)
    np.testing.assert_array_equal(a["boxes"][0], np.stack([4 + t, 6 + 0 * t, 24 + t, 26 + 0 * t], 1))
    has1 = np.isin(t + 2, [2, 3, 4, 5, 8, 9])
    assert np.isnan(a["boxes"][1, ~has1]).all() and (a["boxes"][1, has1] == [10, 3, 30, 23]).all()
    np.testing.assert_array_equal(a["probs"][1], np.where(has1, np.float32(0.95), 0))
    np.testing.assert_array_equal(a["n_faces"], [[1, 1, 2, 2, 1, 1, 1, 1], has1.astype(int)])
    np.testing.assert_array_equal(a["crop_boxes"][1, 0], cb1)
    assert np.isnan(a["crop_boxes"][1, 4]).all()
    np.testing.assert_array_equal(a["landmarks"][0, 3], [[7 + 2 * j, 6 + j] for j in range(5)])
    assert a["detected"].all()
    assert a["strip_x0"].tolist() == [0, 48] and int(a["strip_width"]) == 48
    assert (int(a["fps"]), int(a["start_frame"]), int(a["crop_size"])) == (30, 2, 16)
    assert {k: str(v.dtype) for k, v in a.items()} == {
        "boxes": "float32", "probs": "float32", "landmarks": "float32", "n_faces": "int16", "crop_boxes": "float32",
        "detected": "bool", "strip_x0": "int32", "strip_width": "int32", "fps": "int32", "start_frame": "int32",
        "crop_size": "int32"}
    assert not (ctx.final.parent / crop.PARTIAL).exists()
    assert not list(ctx.final.parent.glob(".old-crop-partial-*"))
    det = crop.Outputs.of(Record(item="v", stage="crop", status="done", fingerprint="x", outputs=res.outputs)).load(
        ctx.tmp, fps=30)
    assert det.n_frames == 8 and det.n_strips == 2


def test_outputs_load_checks_frames_start_and_fps(tmp_path, decoder):
    decoder(make_video(12))
    ctx = make_ctx(tmp_path, 2, 10)
    run(ctx, crop.Params(chunk_seconds=0.1, **EVERY))
    good = dict(detections="detections.npz", strips=["strip0", "strip1"], n_strips=2, frames=8, start_frame=2,
                crop_size=224)
    assert crop.Outputs(**good).load(ctx.tmp, 30).n_frames == 8
    for bad, what in [({"frames": 7}, "frame count"), ({"start_frame": 3}, "start frame")]:
        with pytest.raises(Exception, match=what):
            crop.Outputs(**{**good, **bad}).load(ctx.tmp)
    with pytest.raises(Exception, match="fps"):
        crop.Outputs(**good).load(ctx.tmp, fps=25)


def test_each_chunk_starts_from_a_clean_tracker(tmp_path, decoder):
    """Keyframes and searches: the detections are those of track_strips run on each chunk separately
    with a fresh state, and detected_fraction is their mean to 3 decimals. The face is held steadily
    (probability 0.999), so strip 0's keyframe spacing grows 2, 4 and stays at keyframe_max = 4."""
    video = make_video(40)
    decoder(video)
    tp = dict(keyframe_every=2, keyframe_max=4, search_every=2)
    p = crop.Params(chunk_seconds=0.8, crop_size=16, **tp)          # chunks of 24: (0, 24), (24, 30)
    ctx = make_ctx(tmp_path, 1, 31)
    res = run(ctx, p, Reader(prob=0.999))
    want = []
    for a, b in crop.chunk_spans(30, 30, 0.8):
        out = list(track_strips(iter([video[1 + a:1 + b]]), Reader(prob=0.999), 2, TrackParams(**tp)))
        want.append(np.stack([f.detected for _, _, f in out], 1))
    want = np.concatenate(want, 1)
    got = arrays(ctx.tmp)["detected"]
    np.testing.assert_array_equal(got, want)
    assert np.flatnonzero(got[0]).tolist() == [0, 2, 6, 10, 14, 18, 22, 24, 26]   # chunk 2 starts afresh

    assert res.metrics["detected_fraction"] == round(float(want.mean()), 3) != float(want.mean())
    assert res.metrics["detector_images"] == int(want.sum())


def test_three_strips_and_a_large_frame_decoded_one_at_a_time(tmp_path, decoder):
    dec = decoder(make_video(6, width=96))
    # the record says 4096×2048: 24 MB a frame, so one frame per decode chunk
    ctx = make_ctx(tmp_path, 0, 6, width=4096, height=2048)
    res = run(ctx, crop.Params(strips=3, chunk_seconds=0, crop_size=8, **EVERY))
    assert dec.calls[0]["chunk"] == 1 and dec.calls[0]["n"] == 6
    a = arrays(ctx.tmp)
    assert a["strip_x0"].tolist() == [0, 32, 64] and int(a["strip_width"]) == 32
    assert res.outputs["strips"] == ["strip0", "strip1", "strip2"] and res.outputs["n_strips"] == 3
    assert res.metrics["faces_per_strip"] == [6, 0, 0]                # the face at x = 48 is strip 1's pixel 16
    assert [len(list((ctx.tmp / f"strip{k}").iterdir())) for k in range(3)] == [6, 0, 0]


@pytest.mark.parametrize("w, h, chunk", [(2048, 2048, 2), (1024, 1024, 4), (0, 0, 4), (0, 1024, 4),
                                         (2150, 2000, 1)])     # 12.9 MB: one frame under 24 MiB, two under 25
def test_decode_chunk_size_follows_the_frame_size(tmp_path, decoder, w, h, chunk):
    dec = decoder(make_video(3))
    run(make_ctx(tmp_path, 0, 3, width=w, height=h), crop.Params(chunk_seconds=0, **EVERY))
    assert dec.calls[0]["chunk"] == chunk


def test_bad_input_messages(tmp_path, decoder):
    decoder(make_video(12, width=30))
    with pytest.raises(BadInput) as e:
        run(make_ctx(tmp_path / "a", 5, 5), crop.Params())
    assert str(e.value) == "empty trimmed range [5, 5) from vad: nothing to crop"
    with pytest.raises(BadInput, match=r"^empty trimmed range \[6, 5\)"):
        run(make_ctx(tmp_path / "b", 6, 5), crop.Params())
    with pytest.raises(BadInput) as e:
        run(make_ctx(tmp_path / "c", 0, 5), crop.Params(strips=0))
    assert str(e.value) == "crop.strips must be >= 1, got 0"
    with pytest.raises(BadInput) as e:
        run(make_ctx(tmp_path / "d", 0, 5, width=30), crop.Params(**EVERY))
    assert str(e.value) == "frame width 30 is too narrow for 2 strips"
    with pytest.raises(BadInput) as e:
        run(make_ctx(tmp_path / "e", 20, 25), crop.Params(**EVERY))      # past the end: nothing decoded
    assert str(e.value) == "v.mp4: decoding frames 20..25 produced no frames"
    assert not (tmp_path / "e" / "out" / "items" / "v" / crop.PARTIAL).exists()


def test_one_strip_is_the_whole_frame(tmp_path, decoder):
    decoder(make_video(4))
    ctx = make_ctx(tmp_path, 0, 4)
    res = run(ctx, crop.Params(strips=1, chunk_seconds=0, crop_size=8, **EVERY))
    assert res.outputs["strips"] == ["strip0"] and res.metrics["faces_per_strip"] == [4]
    assert arrays(ctx.tmp)["strip_x0"].tolist() == [0] and int(arrays(ctx.tmp)["strip_width"]) == W


def test_sixteen_pixel_strips_and_a_one_frame_range(tmp_path, decoder):
    decoder(make_video(3, width=32))
    ctx = make_ctx(tmp_path, 1, 2, width=32)
    res = run(ctx, crop.Params(chunk_seconds=0, crop_size=8, **EVERY))
    assert res.outputs["frames"] == 1 and res.metrics["faces_per_strip"] == [1, 0]
    assert int(arrays(ctx.tmp)["strip_width"]) == 16


def test_a_truncated_video_keeps_the_frames_it_has(tmp_path, decoder):
    dec = decoder(make_video(7))                     # timeline frames 0..6; vad asks for 2..9
    ctx = make_ctx(tmp_path, 2, 10)
    res = run(ctx, crop.Params(chunk_seconds=0.1, **EVERY))
    assert len(dec.calls) == 1
    assert res.outputs["frames"] == 5 and res.metrics["frames"] == 5 and res.metrics["frames_expected"] == 8
    assert arrays(ctx.tmp)["probs"].shape == (2, 5)


def test_a_video_ending_on_a_chunk_edge(tmp_path, decoder):
    """Chunk 0 full, chunk 1 empty: the empty chunk's arrays have the right dtypes and shapes, and
    the strips come from the chunk that has frames."""
    decoder(make_video(5))                           # frames 2, 3, 4 = chunk 0 exactly
    ctx = make_ctx(tmp_path, 2, 10)
    res = run(ctx, crop.Params(chunk_seconds=0.1, **EVERY))
    a = arrays(ctx.tmp)
    assert res.outputs["frames"] == 3 and a["boxes"].shape == (2, 3, 4) and a["landmarks"].shape == (2, 3, 5, 2)
    assert a["boxes"].dtype == np.float32 and a["n_faces"].dtype == np.int16 and a["detected"].dtype == bool
    assert a["strip_x0"].tolist() == [0, 48] and int(a["strip_width"]) == 48


def reference(tmp_path, decoder, video, start=2, end=10):
    decoder(video)
    ctx = make_ctx(tmp_path / "ref", start, end)
    res = run(ctx, crop.Params(chunk_seconds=0.1, **EVERY))
    return res, read_files(ctx.tmp), arrays(ctx.tmp)


def assert_same(res, ctx, ref):
    ref_res, ref_files, ref_arrays = ref
    assert read_files(ctx.tmp) == ref_files
    got = arrays(ctx.tmp)
    assert sorted(got) == sorted(ref_arrays)
    for k in got:
        assert got[k].dtype == ref_arrays[k].dtype and np.array_equal(got[k], ref_arrays[k], equal_nan=True), k
    assert res.outputs == ref_res.outputs
    timing = {"decode_wait_s", "detect_s", "save_s", "seconds", "frames_per_s"}
    assert {k: v for k, v in res.metrics.items() if k not in timing} == \
        {k: v for k, v in ref_res.metrics.items() if k not in timing}


def test_a_kill_in_the_last_chunk_redoes_only_that_chunk(tmp_path, decoder):
    video = make_video(12)
    ref = reference(tmp_path, decoder, video)
    out = tmp_path / "run"
    dec = decoder(video, fail_after=6)               # dies 6 frames in: chunks 0 and 1 committed
    with pytest.raises(RuntimeError, match="killed"):
        run(make_ctx(out, 2, 10), crop.Params(chunk_seconds=0.1, **EVERY))
    part = out / "out" / "items" / "v" / crop.PARTIAL
    assert sorted(p.name for p in part.iterdir()) == [".tmp-chunk_000002", "chunk_000000", "chunk_000001", "key.json"]
    assert json.loads((part / "key.json").read_text()) == {
        "fingerprint": "fp", "start_frame": 2, "frames": 8, "fps": 30, "chunks": [[0, 3], [3, 6], [6, 8]],
        "strips": 2}
    dec.calls.clear()
    det = Reader()
    ctx = make_ctx(out, 2, 10, attempt=1)
    res = run(ctx, crop.Params(chunk_seconds=0.1, **EVERY), det)
    assert [(c["start"], c["n"]) for c in dec.calls] == [(8, 2)]    # timeline 2 + 6: the last 2 frames only
    assert det.images == 4 and res.metrics["detect_s"] == 0.25        # 2 frames × 2 strips, 2 calls
    assert res.metrics["detector_images"] == 16                        # counted with the reused chunks
    assert_same(res, ctx, ref)
    assert not part.exists()


def test_a_missing_middle_chunk_is_decoded_alone(tmp_path, decoder, monkeypatch):
    """Chunks 0 and 2 committed, 1 gone: one decode of chunk 1's frames, and the same result."""
    video = make_video(12)
    ref = reference(tmp_path, decoder, video)
    out = tmp_path / "run"
    dec = decoder(video)
    real_link = crop._link
    monkeypatch.setattr(crop, "_link", lambda a, b: (_ for _ in ()).throw(OSError("stop before assembly")))
    with pytest.raises(OSError, match="stop before assembly"):
        run(make_ctx(out, 2, 10), crop.Params(chunk_seconds=0.1, **EVERY))
    monkeypatch.setattr(crop, "_link", real_link)
    part = out / "out" / "items" / "v" / crop.PARTIAL
    import shutil
    shutil.rmtree(part / "chunk_000001")
    dec.calls.clear()
    ctx = make_ctx(out, 2, 10, attempt=1)
    res = run(ctx, crop.Params(chunk_seconds=0.1, **EVERY))
    assert [(c["start"], c["n"]) for c in dec.calls] == [(5, 3)]
    assert_same(res, ctx, ref)


def test_a_fully_committed_run_decodes_nothing(tmp_path, decoder, monkeypatch):
    video = make_video(12)
    ref = reference(tmp_path, decoder, video)
    out = tmp_path / "run"
    dec = decoder(video)
    real_link = crop._link
    monkeypatch.setattr(crop, "_link", lambda a, b: (_ for _ in ()).throw(OSError("stop before assembly")))
    with pytest.raises(OSError):
        run(make_ctx(out, 2, 10), crop.Params(chunk_seconds=0.1, **EVERY))
    monkeypatch.setattr(crop, "_link", real_link)
    dec.calls.clear()
    dec.origins = 0
    det = Reader()
    ctx = make_ctx(out, 2, 10, attempt=1)
    res = run(ctx, crop.Params(chunk_seconds=0.1, **EVERY), det)
    assert dec.calls == [] and dec.origins == 0 and det.images == 0
    assert res.metrics["frames_per_s"] == 0.0 and res.metrics["detect_s"] == 0.0
    assert res.metrics["decode_wait_s"] == 0.0 and res.metrics["save_s"] == 0.0     # nothing decoded or saved
    assert_same(res, ctx, ref)


def test_a_committed_short_chunk_ends_the_resumed_video(tmp_path, decoder, monkeypatch):
    """A truncated video whose chunks were all committed: the short chunk 1 ends it on the rerun
    (chunk 2 is neither decoded nor looked for)."""
    video = make_video(7)
    ref = reference(tmp_path, decoder, video)
    out = tmp_path / "run"
    dec = decoder(video)
    real_link = crop._link
    monkeypatch.setattr(crop, "_link", lambda a, b: (_ for _ in ()).throw(OSError("stop before assembly")))
    with pytest.raises(OSError):
        run(make_ctx(out, 2, 10), crop.Params(chunk_seconds=0.1, **EVERY))
    monkeypatch.setattr(crop, "_link", real_link)
    dec.calls.clear()
    ctx = make_ctx(out, 2, 10, attempt=1)
    res = run(ctx, crop.Params(chunk_seconds=0.1, **EVERY))
    assert dec.calls == [] and res.outputs["frames"] == 5
    assert_same(res, ctx, ref)


TICK = 0.01234      # s per clock reading: a run takes well under a second, times have 3+ decimals


def test_timing_metrics(tmp_path, decoder, monkeypatch):
    """With a clock that moves TICK s per reading (any thread), times are floats kept to 2 decimals,
    seconds is the last reading minus the first, and frames_per_s is this run's frames over it, to
    1 decimal (not capped: the run takes under a second)."""
    decoder(make_video(12))
    lock = threading.Lock()
    ticks = {"n": 0}

    class Clock:
        @staticmethod
        def perf_counter():
            with lock:
                ticks["n"] += 1
                return ticks["n"] * TICK
    monkeypatch.setattr(crop, "time", Clock)
    res = run(make_ctx(tmp_path, 2, 10), crop.Params(chunk_seconds=0.1, **EVERY))
    m = res.metrics
    for k in ("decode_wait_s", "save_s", "seconds", "detect_s", "frames_per_s"):
        assert type(m[k]) is float, (k, m[k])
    for k in ("decode_wait_s", "save_s", "seconds"):
        assert m[k] > 0 and m[k] == round(m[k], 2), (k, m[k])
    total = ticks["n"] * TICK - TICK                                  # the last reading minus the first
    assert total < 1.0 and m["seconds"] == round(total, 2)
    assert m["frames_per_s"] == round(8 / total, 1)


def test_crop_scale_and_shift_are_used(tmp_path, decoder):
    decoder(make_video(4))
    ctx = make_ctx(tmp_path, 0, 4)
    run(ctx, crop.Params(chunk_seconds=0, crop_scale=1.5, crop_shift=0.25, **EVERY))
    # frame 0, strip 0: box (2, 6, 22, 26): side 20 -> 30, centre (12, 16 + 5)
    np.testing.assert_array_equal(arrays(ctx.tmp)["crop_boxes"][0, 0], [-3.0, 6.0, 27.0, 36.0])


def test_detector_counters_are_taken_as_differences(tmp_path, decoder):
    """A worker's detector has run before: detect_s and detector_images count this item's share only."""
    decoder(make_video(12))
    det = Reader()
    det.seconds, det.images = 5.0, 100
    res = run(make_ctx(tmp_path, 2, 10), crop.Params(chunk_seconds=0.1, **EVERY), det)
    assert res.metrics["detect_s"] == 0.98 and res.metrics["detector_images"] == 16


def test_setup_passes_the_detector_settings(monkeypatch):
    got = {}

    class Fake:
        def __init__(self, **kw):
            got.update(kw)
    monkeypatch.setattr(mtcnn, "MtcnnDetector", Fake)
    det = crop.setup(crop.Params(min_face=50.0, detect_scale=0.5, prob_threshold=0.8, device="cpu", batch_size=3,
                                 torch_threads=2))
    assert isinstance(det, Fake)
    assert got == {"min_face": 50.0, "detect_scale": 0.5, "prob_threshold": 0.8, "device": "cpu", "batch_size": 3,
                   "threads": 2}


class Bar:
    """tqdm stand-in: records its settings, updates and close."""
    made: list["Bar"] = []

    def __init__(self, **kw):
        self.kw, self.updates, self.closed = kw, [], False
        Bar.made.append(self)

    def update(self, k):
        self.updates.append(k)

    def close(self):
        self.closed = True


def test_progress_bar_counts_every_frame_also_resumed_ones(tmp_path, decoder, monkeypatch):
    import tqdm
    monkeypatch.setattr(tqdm, "tqdm", Bar)
    Bar.made = []
    video = make_video(12)
    decoder(video, fail_after=6)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        run(make_ctx(out, 2, 10), crop.Params(chunk_seconds=0.1, **EVERY))
    run(make_ctx(out, 2, 10, attempt=1), crop.Params(chunk_seconds=0.1, **EVERY))
    first, second = Bar.made
    assert first.closed and second.closed                             # closed also when the run fails
    # not a terminal under pytest: disabled
    assert second.kw == {"total": 8, "desc": "crop v", "unit": "frame", "leave": False, "disable": True}
    assert first.updates == [1] * 6
    assert second.updates == [3, 3, 1, 1]                             # committed chunks at once, then per frame


def test_progress_bar_shows_on_a_terminal(tmp_path, decoder, monkeypatch):
    import io
    import sys
    import tqdm

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(tqdm, "tqdm", Bar)
    Bar.made = []
    decoder(make_video(12))
    monkeypatch.setattr(sys, "stderr", Terminal())
    run(make_ctx(tmp_path, 2, 10), crop.Params(chunk_seconds=0.1, **EVERY))
    assert Bar.made[0].kw["disable"] is False


def test_nothing_on_stderr_when_it_is_not_a_terminal(tmp_path, decoder, capfd):
    decoder(make_video(12))
    run(make_ctx(tmp_path, 2, 10), crop.Params(chunk_seconds=0.1, **EVERY))
    assert capfd.readouterr().err == ""


def test_two_missing_chunks_two_decodes_one_origin_probe_at_the_builds_fps(tmp_path, decoder, monkeypatch):
    """25 fps build, 4 chunks of 3 frames, chunks 1 and 3 missing: two decodes (at 25 fps), the
    timeline origin probed once; decode waits and save times are summed over the decodes and chunks."""
    video = make_video(16)
    p = crop.Params(chunk_seconds=0.12, **EVERY)                      # 3 frames at 25 fps
    dec = decoder(video)
    real_link = crop._link
    monkeypatch.setattr(crop, "_link", lambda a, b: (_ for _ in ()).throw(OSError("stop before assembly")))
    with pytest.raises(OSError):
        run(make_ctx(tmp_path / "a", 2, 14, fps=25), p)
    monkeypatch.setattr(crop, "_link", real_link)
    part = tmp_path / "a" / "out" / "items" / "v" / crop.PARTIAL
    assert sorted(x.name for x in part.iterdir()) == ["chunk_000000", "chunk_000001", "chunk_000002", "chunk_000003",
                                                      "key.json"]
    import shutil
    shutil.rmtree(part / "chunk_000001")
    shutil.rmtree(part / "chunk_000003")

    class FixedWait(crop._Prefetch):
        def close(self):
            super().close()
            self.wait_s = 0.5

    class FixedBusy(crop._Writer):
        def close(self):
            super().close()
            self.busy_s = 0.25
    monkeypatch.setattr(crop, "_Prefetch", FixedWait)
    monkeypatch.setattr(crop, "_Writer", FixedBusy)
    dec.calls.clear()
    dec.origins = 0
    res = run(make_ctx(tmp_path / "a", 2, 14, fps=25, attempt=1), p)
    assert [(c["start"], c["n"], c["fps"]) for c in dec.calls] == [(5, 3, 25), (11, 3, 25)]
    assert dec.origins == 1 and dec.origin_args == ("v.mp4", 25)
    assert res.metrics["decode_wait_s"] == 1.0 and res.metrics["save_s"] == 0.5
    assert res.outputs["frames"] == 12
    assert int(arrays(tmp_path / "a" / "out" / "items" / "v" / ".tmp-crop-1")["fps"]) == 25


def test_a_short_chunk_ends_the_video_even_before_committed_chunks(tmp_path, decoder, monkeypatch):
    """Chunks 0-2 committed from the whole video, chunk 1 then lost, and the file now ends inside
    chunk 1: the crop stops there (5 frames), and committed chunk 2 is not stitched on after the gap."""
    p = crop.Params(chunk_seconds=0.1, **EVERY)
    dec = decoder(make_video(12))
    real_link = crop._link
    monkeypatch.setattr(crop, "_link", lambda a, b: (_ for _ in ()).throw(OSError("stop before assembly")))
    with pytest.raises(OSError):
        run(make_ctx(tmp_path, 2, 10), p)
    monkeypatch.setattr(crop, "_link", real_link)
    import shutil
    shutil.rmtree(tmp_path / "out" / "items" / "v" / crop.PARTIAL / "chunk_000001")
    dec.video = make_video(7)                         # timeline frames 0..6: chunk 1 gets 2 of its 3
    dec.calls.clear()
    ctx = make_ctx(tmp_path, 2, 10, attempt=1)
    res = run(ctx, p)
    assert [(c["start"], c["n"]) for c in dec.calls] == [(5, 3)]
    assert res.outputs["frames"] == 5 and arrays(ctx.tmp)["probs"].shape == (2, 5)
    assert sorted(read_files(ctx.tmp)) == [f"strip0/{t:06d}.jpg" for t in range(5)] + \
        [f"strip1/{t:06d}.jpg" for t in range(4)]


def test_the_output_folder_may_hold_strip_folders_or_be_missing(tmp_path, decoder):
    decoder(make_video(12))
    ctx = make_ctx(tmp_path / "a", 2, 10)
    (ctx.tmp / "strip0").mkdir()                      # left by an earlier attempt in the same folder
    assert run(ctx, crop.Params(chunk_seconds=0.1, **EVERY)).outputs["frames"] == 8
    ctx = make_ctx(tmp_path / "b", 2, 10)
    ctx.tmp.rmdir()                                   # made with its strip folders
    assert run(ctx, crop.Params(chunk_seconds=0.1, **EVERY)).outputs["frames"] == 8
    assert len(list((ctx.tmp / "strip1").iterdir())) == 6


class FakeLibc:
    """ctypes.CDLL(None) stand-in: ``syncfs`` returns ``rc`` and records the fds it was given."""

    def __init__(self, rc: int | None):
        self.fds: list = []
        if rc is not None:
            self.syncfs = lambda fd: (self.fds.append(fd), rc)[1]


@pytest.mark.parametrize("rc, want", [(0, True), (-1, False), (None, False)])   # None: no syncfs in the libc
def test_syncfs_returns_what_syncfs_says(tmp_path, monkeypatch, rc, want):
    import ctypes
    libc = FakeLibc(rc)
    monkeypatch.setattr(ctypes, "CDLL", lambda name, **kw: libc)
    assert crop._syncfs(tmp_path) is want
    assert len(libc.fds) == (rc is not None) and all(isinstance(fd, int) and fd >= 0 for fd in libc.fds)


def test_an_undeletable_torn_chunk_or_partial_folder_is_no_error(tmp_path):
    """A torn chunk or a partial folder that cannot be deleted (here: a link to a folder, which
    rmtree refuses) is left behind without failing the item."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "chunk.npz").write_bytes(b"torn")
    link = tmp_path / "chunk_000000"
    link.symlink_to(real, target_is_directory=True)
    assert crop._load_chunk(link) is None
    part = tmp_path / "p" / crop.PARTIAL
    part.parent.mkdir()
    part.symlink_to(real, target_is_directory=True)
    crop._retire(part)
    assert not part.exists()


def test_prefetch_wait_starts_at_zero_and_adds_every_wait(monkeypatch):
    """A clock moving 1 s per reading, read only by the consumer: 3 items and the end are 4 waits."""
    readings = iter(range(1, 100))

    class Clock:
        @staticmethod
        def perf_counter():
            return float(next(readings))
    monkeypatch.setattr(crop, "time", Clock)
    pf = crop._Prefetch((i for i in range(3)))
    assert pf.wait_s == 0.0
    assert in_thread(lambda: list(pf)) == [0, 1, 2]
    in_thread(pf.close)
    assert pf.wait_s == 4.0


def test_an_undeletable_half_written_chunk_is_no_error(tmp_path):
    part = tmp_path / crop.PARTIAL
    key = {"fingerprint": "fp", "frames": 9}
    crop._open_partial(part, key)
    real = tmp_path / "elsewhere"
    real.mkdir()
    (part / ".tmp-chunk_000001").symlink_to(real, target_is_directory=True)    # rmtree refuses links
    (part / ".tmp-chunk_000002").mkdir()
    assert crop._open_partial(part, key) == part
    assert not (part / ".tmp-chunk_000002").exists()                           # the others still go
