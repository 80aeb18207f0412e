"""Review app: flags (pure functions), the JSON API, decisions in the manifest, media and safety."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from chorushead.core import media
from chorushead.core.manifest import Manifest
from chorushead.review import flags as F
from chorushead.core.decisions import decisions
from chorushead.review.server import is_loopback, make_server, parse_range, pipeline_thresholds, serve, HttpError

from conftest import validate_record
from review_fixture import EXPECTED_FLAGS, EXPECTED_ORDER, build, out  # noqa: F401 (fixtures)
from chorushead.core.windows import POSE

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures


class Running:
    def __init__(self, out: Path, **kw):
        self.srv = make_server(out, port=0, **kw)
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def request(self, method: str, path: str, body=None, headers=None):
        """One request; anything but GET/HEAD carries this run's token (as the page does) unless
        ``headers`` say otherwise."""
        c = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=30)
        h = {"Host": f"127.0.0.1:{self.srv.port}", **(headers or {})}
        if method not in ("GET", "HEAD"):
            h.setdefault("X-Review-Token", self.srv.token)
        h = {k: v for k, v in h.items() if v is not None}     # None: leave the header out
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        payload = r.read()
        c.close()
        return r.status, dict(r.getheaders()), payload

    def json(self, path: str):
        status, _, payload = self.request("GET", path)
        assert status == 200, payload
        return json.loads(payload)

    def decide(self, key: str, decision: str, reason: str | None = None, **fields):
        return self.request("POST", "/api/decision", {"key": key, "decision": decision, "reason": reason, **fields})

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def server(out):
    s = Running(out)
    yield s
    s.stop()


# ----------------------------------------------------------------------------- flags: pure functions
def test_flag_measurements_on_known_motion():
    t = np.arange(300) / 30
    c = np.zeros((2, 300, 56), np.float32)
    c[..., 50] = 0.1 * np.sin(2 * np.pi * t)                   # std 0.1/sqrt(2)
    assert F.jaw_std(c) == pytest.approx(0.1 / np.sqrt(2), rel=0.02)
    c[1, :, 50] = 0.05
    assert F.jaw_std(c) == pytest.approx(0.0, abs=1e-7)        # the stiller singer counts
    assert F.jaw_std(c[0]) == pytest.approx(0.1 / np.sqrt(2), rel=0.02)   # (T, 56) works too
    assert F.jitter(c) < 1e-3
    rng = np.random.default_rng(0)
    noisy = c + rng.normal(0, 0.02, c.shape).astype(np.float32)
    assert F.jitter(noisy) == pytest.approx(np.sqrt(6) * 0.02 * np.sqrt(2 / np.pi), rel=0.1)  # E|Δ² noise|
    jumpy = c.copy()
    jumpy[0, 100:, 54] += 0.5
    assert F.max_jump(jumpy) == pytest.approx(0.5, abs=1e-6)
    probs = np.ones((2, 100))
    probs[1, 40:60] = np.nan                                   # missing detections count as 0
    assert F.det_doubt(probs, 0, 100) == pytest.approx(0.2)
    assert F.det_doubt(probs, 0, 40) == pytest.approx(0.0)


def test_assign_confidence_forms():
    assert F.assign_confidence(None, 0) == (None, None)
    assert F.assign_confidence({"confidence": 0.8, "low_confidence": False}, 3) == (0.8, False)
    assert F.assign_confidence({"confidence": [0.9, 0.1]}, 1) == (0.1, None)
    assert F.assign_confidence({"confidence": {"2": 0.4}}, 2) == (0.4, None)


def test_flags_thresholds_and_score():
    th = F.Thresholds()
    assert F._soft(1.0) == pytest.approx(0.5)                  # on the threshold: exactly the flag boundary
    t = np.arange(300) / 30
    good = np.zeros((2, 300, 56), np.float32)
    good[..., 50] = 0.12 * (1 + np.sin(2 * np.pi * 1.5 * t))
    ok = F.flag_segment(300, good, good, np.full((2, 300), 0.999), (0, 300), th=th)
    assert ok.flags == []
    still = good.copy()
    still[1, :, 50] = 0.01
    bad = F.flag_segment(300, still, still, np.full((2, 300), 0.999), (0, 300), th=th)
    assert bad.flags == ["still_mouth"] and bad.score > ok.score
    short = F.flag_segment(150, good[:, :150], good[:, :150], th=th)
    assert short.flags == ["short"]
    nofit = F.flag_segment(300, th=th)
    assert nofit.flags == ["no_fit"] and "jaw_std" not in nofit.metrics
    assert F.flag_segment(300, good, good, assign={"confidence": 0.9, "low_confidence": True}).flags == ["low_assign"]
    assert F.flag_segment(300, good, good, assign={"confidence": 0.1}).flags == ["low_assign"]
    broken = good.copy()
    broken[0, 40, 53] = np.nan                                 # a NaN from the fit is an evident error
    nan_flags = F.flag_segment(300, broken, broken)
    assert "jump" in nan_flags.flags and all(np.isfinite(v) for v in nan_flags.metrics.values())
    order = F.order_by_suspicion([("a", ok), ("b", bad), ("c", short)])
    assert order == ["b", "c", "a"]


# ----------------------------------------------------------------------------- API
def test_list_is_ordered_by_suspicion_with_expected_flags(server):
    data = server.json("/api/segments")
    segs = data["segments"]
    assert [s["key"] for s in segs] == EXPECTED_ORDER
    assert {s["key"]: set(s["flags"]) for s in segs} == EXPECTED_FLAGS
    assert all(s["decision"] is None for s in segs)
    assert set(data["flag_info"]) >= {"still_mouth", "jitter", "low_detection", "low_assign", "short"}
    scores = [s["score"] for s in segs]
    assert scores == sorted(scores, reverse=True)


def test_segment_detail_series_match_the_build(server, build):
    d = server.json("/api/segment/duetA/1")
    c = np.load(build.out / "items/duetA/smooth/seg001.npz")["coeffs"]
    assert d["frames"] == 160 and d["start"] == 250 and d["abs_start"] == 15 + 250
    assert np.allclose(d["jaw"], c[..., 50], atol=1e-4)
    assert np.allclose(d["pose"], np.degrees(np.moveaxis(c[..., POSE], -1, 1)), atol=1e-3)
    assert len(d["audio"]) == 2 and all(len(a["max"]) == 160 for a in d["audio"])
    assert all(np.all(np.array(a["max"]) >= np.array(a["min"])) for a in d["audio"])
    assert d["clip"].startswith("/clip/duetA/1.mp4?v=")
    assert [s["base"] for s in d["strips"]] == ["/files/items/duetA/crop/strip0/", "/files/items/duetA/crop/strip1/"]
    status, hdr, jpg = server.request("GET", f"{d['strips'][0]['base']}{d['start']:06d}.jpg")
    assert status == 200 and hdr["Content-Type"] == "image/jpeg" and jpg[:2] == b"\xff\xd8"
    # duetB: assign order [1, 0] -> strip 0 hears track 1; its source video is gone -> no clip
    b = server.json("/api/segment/duetB/0")
    assert b["clip"] is None and [a["track"] for a in b["audio"]] == [1, 0]
    assert server.request("GET", "/clip/duetB/0.mp4")[0] == 404
    assert server.request("GET", "/api/segment/duetA/9")[0] == 404


def test_decision_lands_in_review_manifest(server, out, build):
    status, _, body = server.decide("duetA:2", "accept")
    assert status == 200 and json.loads(body)["decision"] == "accept"
    status, _, body = server.decide("duetA:1", "reject", "  mouth barely moves ")
    assert status == 200
    latest = Manifest(out, "review").latest()
    # each decision keeps the frames it was made on (the segment's range on the timeline)
    frames = {k: latest[k].outputs.pop("frames") for k in ("duetA:1", "duetA:2")}
    # on the full timeline: vad's start frame (15, not 0) + the crop frames of the segment
    assert frames == {"duetA:1": [15 + 250, 15 + 410], "duetA:2": [15 + 420, 15 + 570]}
    assert frames == {k: list(build.frames(k)) for k in frames}
    # and the segmentation they were shown from: the contiguity record's fingerprint
    contig = Manifest(out, "contiguity").latest()["duetA"].fingerprint
    assert {latest[k].outputs.pop("segmentation") for k in ("duetA:1", "duetA:2")} == {contig}
    assert latest["duetA:2"].outputs == {"decision": "accept"}
    assert latest["duetA:1"].outputs == {"decision": "reject", "reason": "mouth barely moves"}
    for rec in latest.values():
        validate_record(rec.to_dict(), "review")
    assert decisions(out, build.timeline) == {("duetA", 2): "accept", ("duetA", 1): "reject"}   # what pack reads
    summary = json.loads(body)["summary"]
    assert summary["total"]["reviewed"] == 2 and summary["total"]["accepted"] == 1
    assert summary["videos"]["duetA"]["rejected"] == 1 and summary["videos"]["duetB"]["reviewed"] == 0
    assert summary["total"]["accepted_hours"] == pytest.approx(150 / 30 / 3600, abs=1e-4)
    assert summary["total"]["hours"] == pytest.approx((240 + 160 + 150 + 180) / 30 / 3600, abs=1e-4)
    segs = {s["key"]: s for s in server.json("/api/segments")["segments"]}
    assert segs["duetA:1"]["reason"] == "mouth barely moves" and segs["duetA:2"]["decision"] == "accept"


def test_decisions_survive_a_restart(out):
    s = Running(out)
    assert s.decide("duetB:0", "reject", "voices swapped")[0] == 200
    s.stop()
    s2 = Running(out)
    try:
        segs = {x["key"]: x for x in s2.json("/api/segments")["segments"]}
        assert segs["duetB:0"]["decision"] == "reject" and segs["duetB:0"]["reason"] == "voices swapped"
        assert s2.json("/api/summary")["total"]["rejected"] == 1
    finally:
        s2.stop()


def test_undo_returns_a_segment_to_unreviewed(server, out, build):
    server.decide("duetA:0", "accept")
    assert decisions(out, build.timeline) == {("duetA", 0): "accept"}
    status, _, _ = server.decide("duetA:0", "undo")
    assert status == 200
    assert Manifest(out, "review").latest()["duetA:0"].outputs["decision"] == "undo"
    assert decisions(out, build.timeline) == {}
    segs = {s["key"]: s for s in server.json("/api/segments")["segments"]}
    assert segs["duetA:0"]["decision"] is None
    assert server.json("/api/summary")["total"]["reviewed"] == 0


def test_bad_decision_requests_write_nothing(server, out):
    port = server.srv.port
    assert server.decide("duetA:7", "accept")[0] == 404
    assert server.decide("nonsense", "accept")[0] == 400
    assert server.decide("duetA:0", "maybe")[0] == 400
    assert server.request("POST", "/api/decision", b"key=duetA:0&decision=accept",
                          {"Content-Type": "application/x-www-form-urlencoded"})[0] == 415   # no CORS-free form posts
    assert server.request("POST", "/api/decision", {"key": "duetA:0", "decision": "accept"},
                          {"Host": f"evil.example:{port}"})[0] == 403                    # DNS rebinding
    assert server.request("POST", "/api/other", {"x": 1})[0] == 404
    assert not (out / "manifests" / "review.jsonl").exists()


def test_a_decision_records_the_frames_the_page_showed(server, out, build):
    """The page sends the frames it showed ([abs_start, abs_start + n) on the full timeline); the server
    records them, and refuses (409, nothing written) when the segment covers other frames now."""
    d = server.json("/api/segment/duetA/2")
    shown = [d["abs_start"], d["abs_start"] + d["frames"]]
    assert shown == [15 + 420, 15 + 570] == list(build.frames("duetA:2"))
    status, _, body = server.decide("duetA:2", "reject", "fit error", frames=shown)
    assert status == 200 and json.loads(body)["frames"] == shown
    assert Manifest(out, "review").latest()["duetA:2"].outputs["frames"] == shown
    for stale in ([420, 570], [shown[0] + 1, shown[1]]):            # crop frames / a moved segment
        status, _, body = server.decide("duetA:2", "accept", frames=stale)
        assert status == 409 and b"reload" in body
    for bad in ([1], "435-585", [435.0, 585], [True, 585], [-1, 5], None):
        if bad is not None:
            assert server.decide("duetA:2", "accept", frames=bad)[0] == 400, bad
    assert [r.outputs["decision"] for r in Manifest(out, "review").read_all()] == ["reject"]


def test_unmatched_decisions_are_listed(server, out, build):
    """A decision on frames no segment covers now applies to nothing and is listed by /api/unmatched."""
    from chorushead.core.decisions import record_decision
    assert server.json("/api/unmatched") == {"unmatched": []}
    record_decision(out, "duetA", 0, "reject", "wrong face", frames=(600, 630))     # past the last segment
    record_decision(out, "duetA", 1, "accept", frames=(256, 262))                   # between segments 0 and 1
    record_decision(out, "duetA", 2, "accept", frames=build.frames("duetA:2"))      # matches: not listed
    rows = server.json("/api/unmatched")["unmatched"]
    assert [(r["video"], r["frames"], r["decision"], r["reason"], r["made_on"]) for r in rows] == [
        ("duetA", [600, 630], "reject", "wrong face", "duetA:0"), ("duetA", [256, 262], "accept", None, "duetA:1")]
    assert rows[0]["seconds"] == [20.0, 21.0] and rows[0]["fps"] == 30 and isinstance(rows[0]["time"], float)
    segs = {s["key"]: s["decision"] for s in server.json("/api/segments")["segments"]}
    assert segs == {"duetA:0": None, "duetA:1": None, "duetA:2": "accept", "duetB:0": None}
    assert server.json("/api/summary")["total"]["reviewed"] == 1


def test_path_traversal_refused(server, out, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (out / "link_out").unlink(missing_ok=True)
    (out / "link_out").symlink_to(secret)
    try:
        for path in ("/files/../../etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd", "/files/..%2f..%2fetc%2fpasswd",
                     f"/files/{secret}", "/files//etc/passwd", "/files/link_out", "/static/../server.py",
                     "/static/%2e%2e%2fserver.py", "/files/items/duetA/../../../" + secret.name):
            status, _, body = server.request("GET", path)
            assert status in (403, 404), path
            assert b"top secret" not in body and b"root:" not in body
        assert server.request("GET", "/files/items.json")[0] == 200
        assert server.request("GET", "/static/app.js")[0] == 200
    finally:
        (out / "link_out").unlink()


def test_non_loopback_bind_refused(out):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("no-such-host.invalid")
    with pytest.raises(ValueError, match="not a loopback"):
        make_server(out, host="0.0.0.0", port=0)
    with pytest.raises(SystemExit, match="--allow-remote"):
        serve(out, host="0.0.0.0", port=0)
    srv = make_server(out, host="0.0.0.0", port=0, allow_remote=True)   # the explicit opt-in works
    srv.server_close()
    with pytest.raises(ValueError, match="not a build output folder"):
        make_server(out / "items", port=0)


def test_range_requests_on_clip(server, out):
    status, hdr, full = server.request("GET", "/clip/duetA/0.mp4")
    assert status == 200 and hdr["Accept-Ranges"] == "bytes" and hdr["Content-Type"] == "video/mp4"
    size = len(full)
    cached = list((out / "review_cache" / "duetA").glob("seg000-*.mp4"))
    assert len(cached) == 1 and cached[0].stat().st_size == size
    pr = media.probe(cached[0])
    assert pr.duration == pytest.approx(240 / 30, abs=0.15) and pr.has_audio
    status, hdr, part = server.request("GET", "/clip/duetA/0.mp4", headers={"Range": "bytes=100-199"})
    assert status == 206 and hdr["Content-Range"] == f"bytes 100-199/{size}" and part == full[100:200]
    status, hdr, part = server.request("GET", "/clip/duetA/0.mp4", headers={"Range": "bytes=-50"})
    assert status == 206 and part == full[-50:]
    status, hdr, part = server.request("GET", "/clip/duetA/0.mp4", headers={"Range": f"bytes={size - 10}-"})
    assert status == 206 and part == full[-10:] and hdr["Content-Length"] == "10"
    status, hdr, _ = server.request("GET", "/clip/duetA/0.mp4", headers={"Range": f"bytes={size}-"})
    assert status == 416 and hdr["Content-Range"] == f"bytes */{size}"
    status, hdr, body = server.request("HEAD", "/clip/duetA/0.mp4")
    assert status == 200 and body == b"" and int(hdr["Content-Length"]) == size
    # audio files inside the output folder seek too
    status, hdr, part = server.request("GET", "/files/items/duetA/vad/singer0_16k.wav", headers={"Range": "bytes=0-3"})
    assert status == 206 and part == b"RIFF"


def test_parse_range_edge_cases():
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-", 10) == (0, 9)
    assert parse_range("bytes=2-100", 10) == (2, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=0-1,5-6", 10) is None          # multi-range: whole file
    with pytest.raises(HttpError):
        parse_range("bytes=10-", 10)
    with pytest.raises(HttpError):
        parse_range("bytes=5-2", 10)


def test_manifest_changes_are_picked_up_live(server, out):
    """A build running next to the review adds a video: the list grows without a restart."""
    from chorushead.core.manifest import Record, fingerprint
    before = len(server.json("/api/segments")["segments"])
    rec = Manifest(out, "contiguity").latest()["duetB"]
    grown = {**rec.outputs, "segments": [[0, 180], [185, 190]]}
    Manifest(out, "contiguity").append(Record(item="duetB", stage="contiguity", status="done",
                                              fingerprint=fingerprint("x"), outputs=grown))
    try:
        segs = {s["key"]: s for s in server.json("/api/segments")["segments"]}
        assert len(segs) == before + 1 and "no_fit" in segs["duetB:1"]["flags"]
    finally:
        Manifest(out, "contiguity").append(rec)


class OctaModel:
    """A FLAME stand-in for the renderer: an octahedron whose bottom vertex drops as the jaw opens."""
    faces = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])

    def vertices_np(self, coeffs: np.ndarray) -> np.ndarray:
        base = np.array([[1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1], [0, 1, 0], [0, -1, 0]], np.float32)
        v = np.repeat(base[None], len(coeffs), axis=0)
        v[:, 5, 1] -= coeffs[:, 50]
        return v


def test_mesh_frames_follow_the_jaw(out):
    from chorushead.review.render import MeshRenderer
    from chorushead.review.server import ReviewServer
    s = Running.__new__(Running)
    s.srv = ReviewServer(out, "127.0.0.1", 0, renderer=MeshRenderer(OctaModel(), size=96))
    s.thread = threading.Thread(target=s.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    s.thread.start()
    try:
        assert s.json("/api/segments")["mesh"] is True
        d = s.json("/api/segment/duetA/0")
        assert d["mesh"] == ["/mesh/duetA/0/0/", "/mesh/duetA/0/1/"]
        import cv2
        jaw = np.array(d["jaw"][1])
        shut, wide = int(np.argmin(jaw)), int(np.argmax(jaw))
        imgs = []
        for f in (shut, wide):
            status, hdr, png = s.request("GET", f"/mesh/duetA/0/1/{f}.png")
            assert status == 200 and hdr["Content-Type"] == "image/png" and png[:4] == b"\x89PNG"
            imgs.append(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE))
        lit = [np.flatnonzero((im > 40).any(axis=1)) for im in imgs]
        assert lit[1].max() > lit[0].max()          # an open jaw reaches lower in the picture
        assert s.request("GET", "/mesh/duetA/0/5/10.png")[0] == 404
        assert s.request("GET", "/mesh/duetA/0/x/10.png")[0] == 404
    finally:
        s.stop()
    s = Running(out)                                 # without --flame: plots only
    try:
        assert s.json("/api/segment/duetA/0")["mesh"] is None
        assert s.request("GET", "/mesh/duetA/0/0/10.png")[0] == 404
    finally:
        s.stop()


@pytest.mark.slow   # imports torch through chorushead.core.flame (seconds)
def test_flame_dir_goes_through_pachorus_flame(out, tmp_path):
    flame = pytest.importorskip("chorushead.core.flame", reason="chorushead.core.flame (FLAME loader) not importable")
    if not hasattr(flame, "make_synthetic_flame"):
        pytest.skip("chorushead.core.flame has no synthetic model for tests")
    fdir = flame.make_synthetic_flame(tmp_path / "flame")
    s = Running(out, flame_dir=fdir)
    try:
        status, _, png = s.request("GET", "/mesh/duetA/0/1/10.png")
        assert status == 200 and png[:4] == b"\x89PNG"
    finally:
        s.stop()
    s = Running(out, flame_dir=tmp_path / "no_flame_here")   # missing files: a message, plots only
    try:
        assert s.json("/api/segments")["mesh"] is False
    finally:
        s.stop()


def test_cli_review_prints_url_and_serves(out):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", "from chorushead.cli import app; app()", "review", "--out", str(out),
                          "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = None
        for _ in range(5):
            line = p.stdout.readline()
            if line.startswith("Open "):
                url = line.split()[1]
                break
        assert url and url.startswith("http://127.0.0.1:") and not url.endswith(":0/")
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/")
        r = c.getresponse()
        assert r.status == 200 and b"ChorusHead review" in r.read()
    finally:
        p.terminate()
        p.wait(10)


def test_damaged_source_gives_a_clear_error_and_no_cached_clip(server, out, tmp_path):
    from chorushead.core.manifest import Record, fingerprint
    bad = tmp_path / "damaged.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    rec = Manifest(out, "ingest").latest()["duetB"]
    Manifest(out, "ingest").append(Record(item="duetB", stage="ingest", status="done", fingerprint=fingerprint("bad"),
                                          outputs={**rec.outputs, "source": str(bad)}))
    try:
        assert server.json("/api/segment/duetB/0")["clip"].startswith("/clip/duetB/0.mp4")
        status, _, body = server.request("GET", "/clip/duetB/0.mp4")
        assert status == 500 and b"ffmpeg could not cut the clip" in body
        assert not list((out / "review_cache").glob("duetB/*"))       # no half-written clip left behind
    finally:
        Manifest(out, "ingest").append(rec)


def test_clip_frames_are_the_segment_frames(server, build):
    """Clip frame i is frame (vad start + segment start + i) of the source's 30 fps timeline."""
    d = server.json("/api/segment/duetA/1")
    server.request("GET", d["clip"])
    clip = next((build.out / "review_cache" / "duetA").glob("seg001-*.mp4"))
    small = (128, 64)     # enough to tell neighbouring frames apart, 9x less to decode and compare
    src = np.concatenate(list(media.iter_frames(build.source, scale=small))).astype(np.float32)
    cf = np.concatenate(list(media.iter_frames(clip, scale=small))).astype(np.float32)
    assert len(cf) == d["frames"]
    for i in (0, d["frames"] // 2, d["frames"] - 1):
        err = ((src - cf[i]) ** 2).mean(axis=(1, 2, 3))
        assert int(np.argmin(err)) == d["abs_start"] + i


def test_a_broken_pipeline_file_is_a_one_line_error_not_silent_defaults(out, tmp_path, monkeypatch):
    import chorushead.runner as runner
    bad = tmp_path / "broken.toml"
    bad.write_text("[stages.review\nmin_seconds = 5\n")
    monkeypatch.setattr(runner, "default_pipeline_path", lambda: bad)
    with pytest.raises(SystemExit, match="chorushead review: .*line 1"):
        serve(out, port=0)
    monkeypatch.setattr(runner, "default_pipeline_path", lambda: tmp_path / "absent.toml")
    assert pipeline_thresholds() == F.Thresholds()          # no file at all: the defaults


def test_a_decision_stands_only_for_the_frames_it_was_made_on(tmp_path):
    """Segment indices move when vad/crop/contiguity are redone: a decision made on frames 10..160 is
    not applied to whatever segment 0 covers afterwards (it is unreviewed again)."""
    from chorushead.core.decisions import record_decision, timeline_ranges
    record_decision(tmp_path, "v", 0, "accept", frames=(10, 160))
    record_decision(tmp_path, "v", 1, "reject")                  # recorded without frames: stands
    assert timeline_ranges(10, [[0, 150], [200, 400]]) == [(10, 160), (210, 410)]
    assert decisions(tmp_path, {"v": [(10, 160), (210, 410)]}) == {("v", 0): "accept", ("v", 1): "reject"}
    assert decisions(tmp_path, {"v": [(40, 190), (210, 410)]}) == {("v", 1): "reject"}     # segment 0 moved
    # without frames, a decision applies by its index to the segment that has it now: none here
    assert decisions(tmp_path, {"v": [(10, 160)]}) == {("v", 0): "accept"}


@pytest.mark.slow   # imports torch through the open head (seconds)
def test_the_open_head_draws_meshes_without_flame(out, tmp_path):
    """`chorushead review --flame open`, and by default on a landmark-fitted build: the open head."""
    from chorushead.core.manifest import Manifest, Record
    from chorushead.review.server import default_mesh
    s = Running(out, flame_dir="open")
    try:
        assert s.json("/api/segments")["mesh"] is True
        status, _, png = s.request("GET", "/mesh/duetA/0/1/10.png")
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        s.stop()
    fake = tmp_path / "b"
    Manifest(fake, "fit").append(Record(item="v1", stage="fit", status="done", fingerprint="x",
                                        outputs={"backend": "landmarks"}))
    assert default_mesh(fake) == "open"
    Manifest(fake, "fit").append(Record(item="v2", stage="fit", status="done", fingerprint="y",
                                        outputs={"backend": "emoca"}))
    assert default_mesh(fake) is None                  # EMOCA's expression is FLAME's: --flame DIR
    assert default_mesh(tmp_path / "empty") is None
