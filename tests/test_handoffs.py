"""Hand-offs end to end (issue 23, part 2): upstream records -> review decisions made through the review
server -> pack run by the runner -> the LMDB, checked by value.

The build is realistic where the shared fixtures were not: vad trims a non-zero start (different per video,
1.3 s for the first), every video has several packable segments of different lengths (plus one too short
for a window), one video is a trio, and the review decisions are POSTed to the real server the way the page
does (the token read from the page, the frames from the segment's detail). The expected windows are
written out by hand from the segment frames, the 150-frame window and the 15-frame stride, not computed
with pack's own formula; each window's coefficients and audio are compared with the stage files they come
from, and every video's windows must sit in one split on the packed index.
"""
from __future__ import annotations

import http.client
import json
import re
import threading
from pathlib import Path

import numpy as np

from chorushead.core import media
from chorushead.core.manifest import Manifest
from chorushead.core.windows import POSE, decode_arrays, packed_videos, parse_window_key
from chorushead.review.server import make_server
from chorushead.runner import Pipeline, build
from chorushead.stages.selection import assign_splits
from packfixture import lmdb_content, make_upstream

FPS, SR, WINDOW, STRIDE = 30, 16000, 150, 15          # pack's defaults at 30 fps: 5 s windows, 0.5 s stride
N_AUDIO = WINDOW * SR // FPS                           # 80000 samples
SECONDS = 24.0                                         # 720 frames
# crop frames [a, b): 200, 180, 230 and 45 frames long (the last gives no window)
SEGMENTS = ((0, 200), (215, 395), (410, 640), (655, 700))
# the starts (crop frames) of the windows each segment gives, by hand: start + 150 <= end, every 15 frames
STARTS = {0: [0, 15, 30, 45],                          # 45 + 150 = 195 <= 200 < 210
          1: [215, 230, 245],                          # 245 + 150 = 395: a window ending on the segment's end
          2: [410, 425, 440, 455, 470, 485],           # 485 + 150 = 635 <= 640 < 650
          3: []}                                       # 45 frames: none
VAD_START = (39, 24, 45)                               # 1.3 s, 0.8 s, 1.5 s trimmed off the front
SINGERS = (2, 3, 2)                                    # the second video is a trio
SPLIT = [0.4, 0.3, 0.3]                                # three videos -> one per split, so a leak shows


def _vids(items):
    return [it.id for it in items]


class Page:
    """The review page's side of the server: reads its token from index.html, loads a segment's detail
    and POSTs a decision with the frames it showed, with the headers a browser sends from the page."""

    def __init__(self, out: Path):
        self.srv = make_server(out, port=0)
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.host = f"127.0.0.1:{self.srv.port}"
        status, page = self._request("GET", "/")
        assert status == 200
        m = re.search(rb'<meta name="review-token" content="([^"]+)">', page)
        assert m, "the page carries no token"
        self.token = m.group(1).decode()

    def _request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        c = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=30)
        h = {"Host": self.host, **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        payload = r.read()
        c.close()
        return r.status, payload

    def get(self, path: str):
        status, payload = self._request("GET", path)
        assert status == 200, payload
        return json.loads(payload)

    def decide(self, video: str, index: int, decision: str, reason: str | None = None) -> list[int]:
        """As the page does: the segment's detail first, then the decision with the frames shown."""
        d = self.get(f"/api/segment/{video}/{index}")
        shown = [d["abs_start"], d["abs_start"] + d["frames"]]
        status, payload = self._request(
            "POST", "/api/decision", {"key": f"{video}:{index}", "decision": decision, "reason": reason,
                                      "frames": shown},
            {"X-Review-Token": self.token, "Origin": f"http://{self.host}", "Sec-Fetch-Site": "same-origin"})
        assert status == 200, payload
        assert json.loads(payload)["frames"] == shown
        return shown

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


def _pack(out: Path, *overrides: str):
    """pack as `chorushead build --stages pack --set ...` runs it; the pack records by video."""
    pl = Pipeline.load(overrides=[f"pack.split={json.dumps(SPLIT)}", *overrides])
    build(None, out, pl, stages=["pack"], progress=False, log=lambda *_: None)
    return {vid: r for vid, r in Manifest(out, "pack").latest().items()}


def _check_lmdb(out: Path, items, kept: dict[str, list[int]], segments=SEGMENTS, starts=STARTS,
                vad_start=VAD_START, rejected: dict[str, tuple[int, int]] | None = None) -> dict[str, str]:
    """The LMDB holds exactly the windows of the ``kept`` segments (video -> indices), by value; returns
    the split of every video."""
    vids = _vids(items)
    content = lmdb_content(out / "windows.lmdb")
    expected = {f"w/{vid}/{i:04d}/{s:07d}".encode(): (vid, i, s)
                for vid in vids for i in kept[vid] for s in starts[i]}
    windows = {k: v for k, v in content.items() if k.startswith(b"w/")}
    assert sorted(windows) == sorted(expected)
    splits = assign_splits(sorted(vids), SPLIT, 0)
    assert sorted(splits.values()) == ["test", "train", "val"]            # one video per split
    smoothed = {(vid, i): np.load(out / "items" / vid / "smooth" / f"seg{i:03d}.npz")["coeffs"]
                for vid in vids for i in kept[vid]}
    tracks = {vid: [media.read_wav(out / "items" / vid / "vad" / f"singer{k}_16k.wav")[0] for k in range(S)]
              + [media.read_wav(out / "items" / vid / "vad" / "bgm_16k.wav")[0]] for vid, S in zip(vids, SINGERS)}
    for key, blob in windows.items():
        vid, i, s = expected[key]
        v, S, vs = vids.index(vid), SINGERS[vids.index(vid)], vad_start[vids.index(vid)]
        a, b = segments[i]
        assert parse_window_key(key) == (vid, i, s)
        arrays, head = decode_arrays(blob)
        assert head == {"video": vid, "segment": i, "start": s, "split": splits[vid]}, key
        c = arrays["coeffs"]
        assert c.dtype == np.float32 and c.shape == (S, WINDOW, 56), key
        # the smoothed coefficients of crop frames s .. s + 150 (timeline frames vad start + s ..)
        np.testing.assert_array_equal(c, smoothed[(vid, i)][:, s - a:s - a + WINDOW], err_msg=str(key))
        np.testing.assert_array_equal(c[:, :, 0], np.broadcast_to(np.arange(s, s + WINDOW), (S, WINDOW)))
        np.testing.assert_array_equal(c[:, 0, 1], np.arange(S))          # singers in strip order (assign)
        timeline = vs + c[0, :, 0].astype(int)
        assert timeline[0] >= vs + a and timeline[-1] < vs + b
        if rejected and vid in rejected:
            lo, hi = rejected[vid]
            assert timeline[-1] < lo or timeline[0] >= hi, f"{key}: a window on rejected frames {lo}-{hi}"
        np.testing.assert_array_equal(arrays["pose0"], c[:, 0, POSE])
        # audio: the trimmed tracks from sample s * 16000 / 30 (crop frames, not timeline frames)
        s0 = round(s * SR / FPS)
        assert arrays["vocals"].dtype == np.float16 and arrays["vocals"].shape == (S, N_AUDIO)
        idx = np.arange(s0, s0 + N_AUDIO)
        for k in range(S):
            np.testing.assert_allclose(arrays["vocals"][k], ((idx % 1000) / 1000.0 * (k + 1) + v) / 10, atol=1e-3)
            np.testing.assert_array_equal(arrays["vocals"][k], tracks[vid][k][s0:s0 + N_AUDIO].astype(np.float16))
        np.testing.assert_array_equal(arrays["bgm"], tracks[vid][-1][s0:s0 + N_AUDIO].astype(np.float16))
    # the packed index: every window listed once with its S, every video's windows in its one split
    index = json.loads(content[b"__index__"])
    assert sorted(index) == ["test", "train", "val"]
    listed = [k for entries in index.values() for k, _ in entries]
    assert sorted(listed) == sorted(k.decode() for k in expected) and len(listed) == len(set(listed))
    in_split: dict[str, set[str]] = {}
    for split, entries in index.items():
        for k, n in entries:
            vid = parse_window_key(k)[0]
            assert n == SINGERS[vids.index(vid)], k
            in_split.setdefault(vid, set()).add(split)
    assert in_split == {vid: {splits[vid]} for vid in vids if any(starts[i] for i in kept[vid])}
    # the markers and the meta's summary say the same per video
    markers = packed_videos(out / "windows.lmdb")
    n_windows = {vid: sum(len(starts[i]) for i in kept[vid]) for vid in vids}
    assert {v: (m["split"], m["windows"], m["segments"]) for v, m in markers.items()} == \
        {vid: (splits[vid], n_windows[vid], len(kept[vid])) for vid in vids}
    meta = json.loads(content[b"__meta__"])
    assert (meta["fps"], meta["window"], meta["stride"], meta["windows"]) == (FPS, WINDOW, STRIDE, len(expected))
    assert meta["singer_counts"] == sorted({SINGERS[vids.index(v)] for v in in_split})
    return splits


def _upstream(tmp_path):
    """The shared build: its folder, items and the three video ids (A, B, C)."""
    out = tmp_path / "out"
    items = make_upstream(out, n_videos=3, seconds=SECONDS, segments=SEGMENTS, vad_start=VAD_START,
                          singers=SINGERS)
    return out, items, tuple(_vids(items))


def test_review_server_decisions_to_lmdb_windows(tmp_path):
    """Three videos (a trio among them), vad trimming 39/24/45 frames: decisions made on the review page
    land on timeline frames, pack (through the runner) leaves out exactly the rejected segment and, when
    unreviewed segments are excluded, packs exactly the accepted ones; every window checked by value."""
    out, items, (A, B, C) = _upstream(tmp_path)
    page = Page(out)
    try:
        listed = {s["key"]: s for s in page.get("/api/segments")["segments"]}
        assert sorted(listed) == sorted(f"{v}:{i}" for v in (A, B, C) for i in range(len(SEGMENTS)))
        shown = {(A, 1): page.decide(A, 1, "reject", "jaw frozen"),
                 (A, 0): page.decide(A, 0, "accept"),
                 (B, 0): page.decide(B, 0, "accept"),
                 (B, 1): page.decide(B, 1, "accept"),
                 (B, 2): page.decide(B, 2, "accept"),
                 (C, 1): page.decide(C, 1, "accept")}
        page.decide(B, 1, "undo")                          # B:1 back to unreviewed
        segs = {s["key"]: s["decision"] for s in page.get("/api/segments")["segments"]}
        assert {k: d for k, d in segs.items() if d} == {f"{A}:1": "reject", f"{A}:0": "accept", f"{B}:0": "accept",
                                                        f"{B}:2": "accept", f"{C}:1": "accept"}
    finally:
        page.stop()
    # the page showed, and the review manifest holds, timeline frames: vad's start + the crop frames
    for (vid, i), frames in shown.items():
        vs = VAD_START[_vids(items).index(vid)]
        assert frames == [vs + SEGMENTS[i][0], vs + SEGMENTS[i][1]], (vid, i)
    recorded = [(r.item, r.outputs["decision"], r.outputs["frames"]) for r in Manifest(out, "review").read_all()]
    assert recorded == [(f"{A}:1", "reject", [39 + 215, 39 + 395]), (f"{A}:0", "accept", [39, 39 + 200]),
                        (f"{B}:0", "accept", [24, 24 + 200]), (f"{B}:1", "accept", [24 + 215, 24 + 395]),
                        (f"{B}:2", "accept", [24 + 410, 24 + 640]), (f"{C}:1", "accept", [45 + 215, 45 + 395]),
                        (f"{B}:1", "undo", [24 + 215, 24 + 395])]
    rejected = {A: (39 + 215, 39 + 395)}

    # unreviewed segments included (the default): all but the rejected one
    recs = _pack(out)
    kept = {A: [0, 2, 3], B: [0, 1, 2, 3], C: [0, 1, 2, 3]}
    splits = _check_lmdb(out, items, kept, rejected=rejected)
    assert {v: (r.status, r.outputs["split"], r.outputs["segments_packed"], r.metrics["segments_rejected"])
            for v, r in recs.items()} == {v: ("done", splits[v], kept[v], 4 - len(kept[v])) for v in (A, B, C)}

    # only reviewed-and-accepted segments
    recs = _pack(out, "pack.include_unreviewed=false")
    kept = {A: [0], B: [0, 2], C: [1]}
    _check_lmdb(out, items, kept, rejected=rejected)
    assert {v: (r.outputs["segments_packed"], r.outputs["windows"]) for v, r in recs.items()} == \
        {A: ([0], 4), B: ([0, 2], 4 + 6), C: ([1], 3)}


def test_decisions_stay_on_their_frames_when_vad_trims_differently(tmp_path):
    """A rebuild whose vad trims 9 frames less moves every segment 9 crop frames later (the same timeline
    frames): the decisions made before it still reject and accept the same footage, and the windows'
    starts (crop frames) move by 9."""
    out, items, (A, B, C) = _upstream(tmp_path)
    page = Page(out)
    try:
        page.decide(A, 1, "reject", "jaw frozen")
        page.decide(A, 2, "accept")
        page.decide(C, 0, "accept")
    finally:
        page.stop()
    shift = 9
    moved = tuple((a + shift, b + shift) for a, b in SEGMENTS)
    vad_moved = tuple(v - shift for v in VAD_START)
    items = make_upstream(out, n_videos=3, seconds=SECONDS, segments=moved, vad_start=vad_moved, singers=SINGERS)
    starts = {i: [s + shift for s in ss] for i, ss in STARTS.items()}
    recs = _pack(out, "pack.include_unreviewed=false")
    kept = {A: [2], B: [], C: [0]}
    _check_lmdb(out, items, kept, segments=moved, starts=starts, vad_start=vad_moved,
                rejected={A: (39 + 215, 39 + 395)})
    assert {v: r.outputs["segments_packed"] for v, r in recs.items()} == kept
    recs = _pack(out)
    kept = {A: [0, 2, 3], B: [0, 1, 2, 3], C: [0, 1, 2, 3]}
    _check_lmdb(out, items, kept, segments=moved, starts=starts, vad_start=vad_moved,
                rejected={A: (39 + 215, 39 + 395)})
