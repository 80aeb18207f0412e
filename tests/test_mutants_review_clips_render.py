"""The review's clip cache and mesh frames (chorushead.review.clips, chorushead.review.render): cases
mutation testing showed were not pinned (docs/mutation-survivors.md). ffmpeg and the head model are
replaced by stand-ins that record their calls; values are stated by hand."""
from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest

from chorushead.review import clips as C
from chorushead.review import render as R
from chorushead.review.view import Segment, Video


def seg(video="v", index=2, start=30, end=90, abs_start=45):
    return Segment(key=f"{video}:{index}", video=video, index=index, start=start, end=end, abs_start=abs_start,
                   n_strips=2, coeffs=None)


@pytest.fixture
def source(tmp_path):
    p = tmp_path / "src.mp4"
    p.write_bytes(b"0123456789")
    return p


# ----------------------------------------------------------------------------- clips

def test_has_source(tmp_path, source):
    assert C.has_source(Video("v", str(source), 30, {})) is True
    assert C.has_source(Video("v", None, 30, {})) is False
    assert C.has_source(Video("v", "", 30, {})) is False
    assert C.has_source(Video("v", str(tmp_path), 30, {})) is False          # a folder is no source
    assert C.has_source(Video("v", str(tmp_path / "gone.mp4"), 30, {})) is False


def test_tag_url_and_path(tmp_path, source):
    v = Video("v", str(source), 25, {})
    s = seg()
    st = source.stat()
    want = hashlib.sha1(f"{source}:10:{st.st_mtime_ns}:45:60:25".encode()).hexdigest()[:10]
    assert C.ClipCache.tag(s, v) == want
    cache = C.ClipCache(tmp_path / "out")
    try:
        assert cache.root == tmp_path / "out" / "review_cache"
        assert cache.url(s, v) == f"/clip/v/2.mp4?v={want}"
        assert cache.url(s, Video("v", None, 25, {})) is None
        assert cache.path_for(s, v) == tmp_path / "out" / "review_cache" / "v" / f"seg002-{want}.mp4"
        assert cache.pool._max_workers == 1
    finally:
        cache.close()
    # the tag follows the source's size and every part of the range
    other = [C.ClipCache.tag(seg(abs_start=46), v), C.ClipCache.tag(seg(end=91), v),
             C.ClipCache.tag(s, Video("v", str(source), 30, {}))]
    assert want not in other and len(set(other)) == 3
    source.write_bytes(b"01234567890")
    assert C.ClipCache.tag(s, v) != want


def test_get_cuts_once_beside_the_final_name(tmp_path, source, monkeypatch):
    calls = []

    def cut(src, dest, start, duration, fps, max_width):
        calls.append((src, dest.parent, dest.name, start, duration, fps, max_width))
        assert not (dest.parent / dest.name.split(".")[1]).exists()
        dest.write_bytes(b"clip")
    monkeypatch.setattr(C.media, "cut_clip", cut)
    v = Video("v", str(source), 25, {})
    s = seg()
    cache = C.ClipCache(tmp_path / "out")
    try:
        path = cache.get(s, v)
        assert path == cache.path_for(s, v) and path.read_bytes() == b"clip"
        assert len(calls) == 1
        src, parent, name, start, duration, fps, width = calls[0]
        assert (src, parent, start, duration, fps, width) == (str(source), path.parent, 45 / 25, 60 / 25, 25, 640)
        assert name.startswith(f".{path.stem}.") and name.endswith(".tmp.mp4")
        assert list(path.parent.iterdir()) == [path]                 # the temporary file is gone
        assert cache.get(s, v) == path and len(calls) == 1            # cached
        assert cache.get(seg(index=3), v).parent == path.parent and len(calls) == 2   # its folder exists already
    finally:
        cache.close()


def test_a_failed_cut_leaves_nothing(tmp_path, source, monkeypatch):
    def cut(src, dest, *a, **k):
        dest.write_bytes(b"half")
        raise RuntimeError("ffmpeg failed")
    monkeypatch.setattr(C.media, "cut_clip", cut)
    v = Video("v", str(source), 25, {})
    cache = C.ClipCache(tmp_path / "out")
    try:
        with pytest.raises(RuntimeError, match="ffmpeg failed"):
            cache.get(seg(), v)
        assert list((tmp_path / "out" / "review_cache" / "v").iterdir()) == []
        cache._quiet_get(seg(), v)                                    # a prefetch swallows the failure
    finally:
        cache.close()


def test_two_requests_for_one_clip_cut_it_once(tmp_path, source, monkeypatch):
    calls = []

    def cut(src, dest, *a, **k):
        calls.append(dest)
        time.sleep(0.2)
        dest.write_bytes(b"clip")
    monkeypatch.setattr(C.media, "cut_clip", cut)
    v = Video("v", str(source), 25, {})
    cache = C.ClipCache(tmp_path / "out")
    try:
        got = []
        ts = [threading.Thread(target=lambda: got.append(cache.get(seg(), v))) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(calls) == 1 and len(got) == 2 and got[0] == got[1]
        assert list(cache._locks) == [str(got[0])]
    finally:
        cache.close()


def test_prefetch_cuts_in_the_background(tmp_path, source, monkeypatch):
    done, names = threading.Event(), []

    def cut(src, dest, *a, **k):
        names.append(threading.current_thread().name)
        dest.write_bytes(b"clip")
        done.set()
    monkeypatch.setattr(C.media, "cut_clip", cut)
    v = Video("v", str(source), 25, {})
    cache = C.ClipCache(tmp_path / "out")
    try:
        cache.prefetch(seg(), v)
        assert done.wait(5)
        cache.pool.shutdown(wait=True)
        assert cache.path_for(seg(), v).read_bytes() == b"clip"
        assert names[0].startswith("clip-prefetch_")
    finally:
        cache.close()


def test_close_cancels_waiting_prefetches(tmp_path, source, monkeypatch):
    started, release, calls = threading.Event(), threading.Event(), []

    def cut(src, dest, *a, **k):
        calls.append(dest)
        started.set()
        release.wait(5)
        dest.write_bytes(b"clip")
    monkeypatch.setattr(C.media, "cut_clip", cut)
    v = Video("v", str(source), 25, {})
    cache = C.ClipCache(tmp_path / "out")
    cache.prefetch(seg(index=1), v)
    assert started.wait(5)
    cache.prefetch(seg(index=2), v)
    t = time.monotonic()
    cache.close()                                                      # does not wait for the running cut
    assert time.monotonic() - t < 1.0
    release.set()
    cache.pool.shutdown(wait=True)
    assert len(calls) == 1                                              # the waiting one was cancelled


# ----------------------------------------------------------------------------- mesh frames

class Model:
    faces = np.array([[0, 1, 2]], np.int32)

    def __init__(self):
        self.calls = []

    def vertices_np(self, coeffs):
        self.calls.append(coeffs.dtype)
        v = np.zeros((len(coeffs), 3, 3), np.float32)
        v[:, :, 0] = coeffs[:, :1]                  # every vertex x = the frame's first coefficient
        return v


@pytest.fixture
def drawn(monkeypatch):
    """draw_mesh stand-in: a 1x1 picture whose value is the vertex x (the frame), and the camera's size."""
    seen = []

    def fit(verts, size):
        return ("cam", float(verts[0, 0]), size)

    def draw(verts, faces, cam):
        seen.append((faces.dtype, faces.tolist(), cam))
        return np.full((1, 1, 3), int(verts[0, 0]), np.uint8)
    monkeypatch.setattr(R.Camera, "fit", staticmethod(fit))
    monkeypatch.setattr(R, "draw_mesh", draw)
    return seen


def pixel(png: bytes) -> int:
    import cv2
    return int(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)[0, 0])


def coeffs(first: float, n: int = 5):
    c = np.zeros((n, 56))
    c[:, 0] = first + np.arange(n)
    return c


def test_renderer_setup_and_from_dir(monkeypatch):
    m = Model()
    r = R.MeshRenderer(m)
    assert (r.model, r.size, r._cache_n) == (m, 256, 4)
    assert r.faces.dtype == np.int64 and r.faces.tolist() == [[0, 1, 2]]
    monkeypatch.setattr(R, "load_head", lambda where: ("head", where))
    monkeypatch.setattr(R.MeshRenderer, "__init__", lambda self, model, size=256: setattr(self, "args", (model, size)))
    assert R.MeshRenderer.from_dir("open").args == (("head", "open"), 256)
    assert R.MeshRenderer.from_dir("d", size=64).args == (("head", "d"), 64)


def test_frames_are_clipped_and_the_camera_fixed_per_segment(drawn):
    m = Model()
    r = R.MeshRenderer(m, size=64)
    png = r.frame_png("k", 2, lambda: coeffs(10))
    assert png[:4] == b"\x89PNG" and pixel(png) == 12
    assert pixel(r.frame_png("k", -3, lambda: pytest.fail("cached"))) == 10       # before the first: the first
    assert pixel(r.frame_png("k", 99, lambda: pytest.fail("cached"))) == 14       # after the last: the last
    assert pixel(r.frame_png("k", 4, lambda: pytest.fail("cached"))) == 14
    assert [c for *_, c in drawn] == [("cam", 10.0, 64)] * 4                       # fitted on frame 0
    assert drawn[0][:2] == (np.int64, [[0, 1, 2]])
    assert m.calls == [np.float32]                                                # vertices once, float32


def test_the_segment_cache_keeps_the_newest(drawn):
    m = Model()
    r = R.MeshRenderer(m, cache_segments=2)
    r.frame_png("a", 0, lambda: coeffs(10))
    r.frame_png("b", 0, lambda: coeffs(20))
    r.frame_png("a", 0, lambda: pytest.fail("a is cached"))                       # a is now the newest
    r.frame_png("c", 0, lambda: coeffs(30))                                        # b goes
    assert list(r._cache) == ["a", "c"]
    assert pixel(r.frame_png("b", 1, lambda: coeffs(40))) == 41                    # b again: computed again
    assert list(r._cache) == ["c", "b"] and len(m.calls) == 4


def test_a_failed_png_encoding_is_an_error(drawn, monkeypatch):
    import cv2
    monkeypatch.setattr(cv2, "imencode", lambda ext, img: (False, None))
    with pytest.raises(RuntimeError) as e:
        R.MeshRenderer(Model()).frame_png("k", 0, lambda: coeffs(1))
    assert str(e.value) == "PNG encoding failed"
