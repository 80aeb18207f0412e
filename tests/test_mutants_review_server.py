"""Review server (chorushead.review.server): cases mutation testing showed were not pinned
(docs/mutation-survivors.md). A small build of its own (no video, no crops: a fraction of a second) and
raw sockets; exact statuses, headers and one-line messages are stated by hand."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from chorushead.core.manifest import Manifest
from chorushead.review import server as S
from chorushead.review.server import HttpError, is_loopback, make_server, parse_range, safe_path
from chorushead.runner import save_items
from chorushead.stages.base import Item

from review_fixture import _record


# ----------------------------------------------------------------------------- a small build

def small_build(out: Path) -> Path:
    """Video ``v`` (30 fps, vad starts at frame 5) with segments [0, 60) and [60, 100), the first one
    smoothed (so it has a mesh); video ``w`` (25 fps) with segment [0, 50), no source."""
    out.mkdir(parents=True, exist_ok=True)
    for vid, fps, start, segs in (("v", 30, 5, [[0, 60], [60, 100]]), ("w", 25, 0, [[0, 50]])):
        n = segs[-1][1]
        _record(out, "ingest", vid, {"source": str(out / f"{vid}.mp4"), "fps": fps, "width": 64, "height": 32,
                                     "n_frames": n + start, "duration": (n + start) / fps, "source_fps": float(fps)})
        _record(out, "vad", vid, {"start_frame": start, "end_frame": start + n, "start_s": start / fps,
                                  "end_s": (start + n) / fps, "sr": 16000, "vocals_16k": f"items/{vid}/vad/x.wav",
                                  "bgm_16k": f"items/{vid}/vad/y.wav", "singers_16k": []})
        _record(out, "contiguity", vid, {"segments": segs, "strip_runs": [], "n_frames": n})
    d = out / "items" / "v" / "smooth"
    d.mkdir(parents=True, exist_ok=True)
    c = np.zeros((2, 60, 56), np.float32)
    c[:, :, 50] = 0.1
    np.savez(d / "seg000.npz", coeffs=c, raw=c)
    _record(out, "smooth", "v", {"segments": ["items/v/smooth/seg000.npz"]})
    save_items(out, [Item(id="v", source=str(out / "v.mp4")), Item(id="w", source=str(out / "w.mp4"))])
    return out


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return small_build(tmp_path_factory.mktemp("small") / "out")


@pytest.fixture
def srv(build_dir):
    (build_dir / "manifests" / "review.jsonl").unlink(missing_ok=True)
    s = make_server(build_dir, port=0)
    s.read_timeout = 2.0
    th = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    th.start()
    yield s
    s.shutdown()
    s.server_close()
    s.clips.close()


def raw(srv, method: str, path: str, body: bytes = b"", headers: dict | None = None, token: bool = True) -> bytes:
    h = {"Host": f"127.0.0.1:{srv.port}"}
    if method not in ("GET", "HEAD") and token:
        h |= {"Content-Type": "application/json", "X-Review-Token": srv.token}
    if body:
        h["Content-Length"] = str(len(body))
    h |= headers or {}
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in h.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Conn:
    def __init__(self, srv, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
        self.f = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, head: bool = False):
        line = self.f.readline()
        assert line, "closed instead of answering"
        status = int(line.split()[1])
        headers = {}
        while (h := self.f.readline()) not in (b"\r\n", b"\n", b""):
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b"" if head else self.f.read(int(headers.get("content-length", 0)))
        return status, headers, body

    def closed(self, wait: float = 1.0) -> bool:
        self.sock.settimeout(wait)
        try:
            return self.f.read(1) == b""
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self):
        self.f.close()
        self.sock.close()


def ask(srv, method: str, path: str, body=b"", headers=None, token=True):
    """One request on a fresh connection: (status, headers, body bytes)."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    c = Conn(srv)
    try:
        c.send(raw(srv, method, path, body, headers, token))
        res = c.response(head=method == "HEAD")
        if method == "HEAD":                       # nothing may follow the headers of a HEAD response
            c.sock.settimeout(0.1)
            try:
                extra = c.f.read1(1)
            except (socket.timeout, TimeoutError):
                extra = b""
            assert extra == b"", (path, extra)
        return res
    finally:
        c.close()


def err(resp) -> tuple[int, str]:
    status, headers, body = resp
    assert headers["content-type"] == "application/json"
    d = json.loads(body)
    assert d["status"] == status
    return status, d["error"]


def decide(srv, body, headers=None):
    return ask(srv, "POST", "/api/decision", body, headers)


# ----------------------------------------------------------------------------- pure functions

def test_safe_path(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("x")
    assert safe_path(tmp_path, "/a/f.txt") == (tmp_path / "a" / "f.txt").resolve()     # leading / stripped
    assert safe_path(tmp_path, "a/f%2Etxt") == (tmp_path / "a" / "f.txt").resolve()     # unquoted
    with pytest.raises(HttpError) as e:
        safe_path(tmp_path, "a/f\x00.txt")
    assert (e.value.status, e.value.message, str(e.value)) == (400, "bad path", "bad path")
    with pytest.raises(HttpError) as e:
        safe_path(tmp_path / "a", "../a/../../x")
    assert (e.value.status, e.value.message) == (403, "outside the output folder")
    with pytest.raises(HttpError) as e:
        safe_path(tmp_path, "a")
    assert (e.value.status, e.value.message) == (404, "no such file")


@pytest.mark.parametrize("header, size, want", [
    (None, 10, None), ("", 10, None), ("items=1-2", 10, None), ("bytes=-", 10, None),
    ("bytes=-5", 10, (5, 9)), ("bytes=-10", 10, (0, 9)), ("bytes=-11", 10, (0, 9)),
    ("bytes=3-", 10, (3, 9)), ("bytes=3-100", 10, (3, 9)), ("bytes=3-4", 10, (3, 4)),
    ("bytes=9-9", 10, (9, 9)), ("bytes=5-5", 10, (5, 5)), ("bytes=0-", 10, (0, 9)),
    ("  bytes=1-2  ", 10, (1, 2)), ("bytes=1-2,4-5", 10, None),
    ("bytes=" + "9" * 18 + "-", 10 ** 19, (10 ** 18 - 1, 10 ** 19 - 1)), ("bytes=" + "9" * 19 + "-", 10, None),
    ("bytes=-" + "9" * 18, 10, (0, 9)), ("bytes=-" + "9" * 19, 10, None),
])
def test_parse_range(header, size, want):
    assert parse_range(header, size) == want


@pytest.mark.parametrize("header, size, message", [
    ("bytes=-0", 10, "empty suffix range"), ("bytes=10-", 10, "range not satisfiable"),
    ("bytes=5-4", 10, "range not satisfiable"), ("bytes=0-0", 0, "range not satisfiable"),
])
def test_parse_range_refusals(header, size, message):
    with pytest.raises(HttpError) as e:
        parse_range(header, size)
    assert (e.value.status, e.value.message) == (416, message)


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("8.8.8.8")
    assert not is_loopback("no-such-host.invalid")
    assert not is_loopback("a" * 70 + ".example")       # idna: label too long (UnicodeError)


def test_is_loopback_reads_every_address(monkeypatch):
    info = lambda a: (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, 0, 0, 0))   # noqa: E731
    monkeypatch.setattr(socket, "getaddrinfo", lambda h, p: [info("::1%lo"), info("127.0.0.2")])
    assert is_loopback("x")                              # scope id dropped; every address loopback
    monkeypatch.setattr(socket, "getaddrinfo", lambda h, p: [info("::1"), info("10.0.0.1")])
    assert not is_loopback("x")
    monkeypatch.setattr(socket, "getaddrinfo", lambda h, p: [])
    assert not is_loopback("x")
    monkeypatch.setattr(socket, "getaddrinfo", lambda h, p: [info("not-an-address")])
    assert not is_loopback("x")


# ----------------------------------------------------------------------------- make_server, serve

def test_make_server_refusals(tmp_path, build_dir):
    with pytest.raises(ValueError) as e:
        make_server(tmp_path / "nope")
    assert str(e.value) == (f"{tmp_path / 'nope'} is not a build output folder (no items.json or manifests/); "
                            "pass the folder given to `chorushead build --out`.")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a build output folder"):
        make_server(tmp_path / "empty")
    with pytest.raises(ValueError) as e:
        make_server(build_dir, host="8.8.8.8")
    assert str(e.value).startswith("refusing to bind '8.8.8.8': it is not a loopback address, and the review "
                                   "app has no login. Use --allow-remote to serve it on your network anyway")
    assert str(e.value).endswith("or tunnel: ssh -L 8765:127.0.0.1:8765 <host>.")


def test_make_server_takes_either_items_or_manifests(tmp_path):
    for name in ("items.json", "manifests"):
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        if name == "items.json":
            (d / name).write_text("{}")
        else:
            (d / name).mkdir()
        s = make_server(d, port=0)
        try:
            assert s.out == d.resolve() and s.port > 0 and s.host == "127.0.0.1"
            assert s.allow_remote is False and s.renderer is None and s.read_timeout == 60.0
            assert s.view.th == S.Thresholds() and len(s.token) >= 40
            assert s.url == f"http://127.0.0.1:{s.port}/"
            p = s.port
            assert s.allowed_hosts() == {"127.0.0.1", "localhost", "[::1]", "[127.0.0.1]",
                                         f"127.0.0.1:{p}", f"localhost:{p}", f"[::1]:{p}", f"[127.0.0.1]:{p}"}
        finally:
            s.server_close()
            s.clips.close()


def test_server_urls_and_remote_binds(tmp_path, capsys, monkeypatch):
    import chorushead.review.render as R

    def no_model(cls, d):
        raise FileNotFoundError(f"no FLAME in {d}")
    monkeypatch.setattr(R.MeshRenderer, "from_dir", classmethod(no_model))
    (tmp_path / "manifests").mkdir()
    th = S.Thresholds(still_mouth=0.5) if "still_mouth" in S.Thresholds.__dataclass_fields__ else S.Thresholds()
    s = make_server(tmp_path, host="0.0.0.0", port=0, allow_remote=True, thresholds=th)
    try:
        assert s.allow_remote is True and s.view.th is th
        assert s.url == f"http://{socket.gethostname()}:{s.port}/"
    finally:
        s.server_close()
        s.clips.close()
    s = make_server(tmp_path, host="::1", port=0)
    try:
        assert s.address_family == socket.AF_INET6
        assert s.url == f"http://[::1]:{s.port}/"
    finally:
        s.server_close()
        s.clips.close()
    s = make_server(tmp_path, port=0, flame_dir=tmp_path / "no-flame")    # meshes off, server on
    try:
        assert s.renderer is None
    finally:
        s.server_close()
        s.clips.close()
    printed = capsys.readouterr().out
    assert printed == f"Mesh rendering off (FileNotFoundError: no FLAME in {tmp_path / 'no-flame'}); showing plots only.\n"


def test_make_server_builds_a_renderer(tmp_path, monkeypatch):
    import chorushead.review.render as R
    monkeypatch.setattr(R.MeshRenderer, "from_dir", classmethod(lambda cls, d: ("renderer", d)))
    (tmp_path / "manifests").mkdir()
    s = make_server(tmp_path, port=0, flame_dir="somewhere")
    try:
        assert s.renderer == ("renderer", "somewhere")
    finally:
        s.server_close()
        s.clips.close()


def test_pipeline_thresholds(tmp_path, monkeypatch):
    from chorushead.runner import Pipeline
    assert S.pipeline_thresholds(tmp_path) == S.Thresholds()
    name = sorted(S.Thresholds.__dataclass_fields__)[0]
    value = getattr(S.Thresholds(), name)
    new = value + 1 if isinstance(value, (int, float)) else value
    pl = type("P", (), {"params": {"review": {name: new}}})()
    monkeypatch.setattr(Pipeline, "for_build", classmethod(lambda cls, out: (pl, "here")))
    assert getattr(S.pipeline_thresholds(tmp_path), name) == new
    pl.params = {"review": {"zz": 1, "aa": 2}}
    with pytest.raises(ValueError) as e:
        S.pipeline_thresholds(tmp_path)
    assert str(e.value) == (f"here: unknown [stages.review] threshold(s) ['aa', 'zz']; "
                            f"known: {sorted(S.Thresholds.__dataclass_fields__)}")
    pl.params = {}
    assert S.pipeline_thresholds(tmp_path) == S.Thresholds()
    monkeypatch.setattr(Pipeline, "load", classmethod(lambda cls: pl))
    assert S.pipeline_thresholds() == S.Thresholds()

    def missing(cls, out):
        raise FileNotFoundError("x")
    monkeypatch.setattr(Pipeline, "for_build", classmethod(missing))
    assert S.pipeline_thresholds(tmp_path) == S.Thresholds()


def test_default_mesh(tmp_path):
    from chorushead.core.manifest import Record
    from chorushead.core.openhead import FIT_BACKENDS, NAME
    assert S.default_mesh(tmp_path) is None                   # no fit at all
    m = Manifest(tmp_path, "fit")
    m.append(Record(item="a", stage="fit", status="done", fingerprint="0" * 16,
                    outputs={"backend": sorted(FIT_BACKENDS)[0]}))
    assert S.default_mesh(tmp_path) == NAME
    m.append(Record(item="b", stage="fit", status="failed", fingerprint="0" * 16, outputs={"backend": "emoca"}))
    assert S.default_mesh(tmp_path) == NAME                   # a failed fit does not count
    m.append(Record(item="c", stage="fit", status="done", fingerprint="0" * 16, outputs={"backend": "emoca"}))
    assert S.default_mesh(tmp_path) is None


def test_serve_prints_and_closes(build_dir, tmp_path, monkeypatch, capsys):
    seen = {}

    def stop(self, *a, **k):
        seen["srv"] = self
        raise KeyboardInterrupt
    monkeypatch.setattr(S.ReviewServer, "serve_forever", stop)
    S.serve(build_dir, port=0)
    lines = capsys.readouterr().out.splitlines()
    s = seen["srv"]
    assert s.renderer is None                                # no fit records: no open head
    assert lines == [f"Reviewing 3 segments of 2 videos in {build_dir.resolve()}", f"Open {s.url}  (Ctrl-C to stop)"]
    assert s.clips.pool._shutdown and s.socket.fileno() == -1
    (tmp_path / "manifests").mkdir()
    S.serve(tmp_path, port=0)
    assert capsys.readouterr().out.splitlines()[1] == ("No segments yet: the review needs the contiguity stage's "
                                                       "output (plots need smooth).")
    with pytest.raises(SystemExit) as e:
        S.serve(tmp_path / "nope", port=0)
    assert str(e.value).startswith(f"chorushead review: {tmp_path / 'nope'} is not a build output folder")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            S.serve(build_dir, port=port)
    assert str(e.value) == (f"chorushead review: cannot listen on 127.0.0.1:{port} (Address already in use); "
                            "is another review running? Try --port 0 for a free port.")


def test_serve_draws_the_open_head_for_a_landmark_build(build_dir, monkeypatch):
    got = {}
    monkeypatch.setattr(S, "default_mesh", lambda out: "open")

    def fake_make(out, host, port, allow_remote, flame_dir, thresholds):
        got.update(flame_dir=flame_dir, host=host, port=port, allow_remote=allow_remote, th=thresholds)
        raise ValueError("stop")
    monkeypatch.setattr(S, "make_server", fake_make)
    with pytest.raises(SystemExit, match="^chorushead review: stop$"):
        S.serve(build_dir, "::1", 7, True)
    assert got == {"flame_dir": "open", "host": "::1", "port": 7, "allow_remote": True, "th": S.Thresholds()}
    with pytest.raises(SystemExit):
        S.serve(build_dir, flame_dir="mine")
    assert got["flame_dir"] == "mine" and got["host"] == "127.0.0.1" and got["port"] == 8765
    assert got["allow_remote"] is False


# ----------------------------------------------------------------------------- pages and files

def test_the_page_carries_the_token_and_its_headers(srv):
    for path in ("/", "/index.html"):
        status, h, body = ask(srv, "GET", path)
        assert status == 200 and h["content-type"] == "text/html; charset=utf-8"
        assert f'<meta name="review-token" content="{srv.token}">'.encode() in body
        assert h["x-frame-options"] == "DENY" and h["content-security-policy"] == "frame-ancestors 'none'"
        assert h["referrer-policy"] == "no-referrer" and h["cache-control"] == "no-store"
        assert h["x-content-type-options"] == "nosniff" and int(h["content-length"]) == len(body)
    status, h, body = ask(srv, "HEAD", "/")
    assert status == 200 and body == b"" and int(h["content-length"]) > 0


def test_a_page_without_the_token_slot_is_a_500(srv, tmp_path, monkeypatch):
    (tmp_path / "index.html").write_text("<html></html>")
    monkeypatch.setattr(S, "STATIC", tmp_path)
    assert err(ask(srv, "GET", "/")) == (500, f"index.html lacks {S.TOKEN_META}")


def test_static_files_and_favicon(srv):
    status, h, body = ask(srv, "GET", "/static/index.html")
    assert status == 200 and h["cache-control"] == "no-store" and h["content-type"] == "text/html; charset=utf-8"
    js = next(p.name for p in S.STATIC.iterdir() if p.suffix == ".js")
    status, h, _ = ask(srv, "GET", f"/static/{js}")
    assert status == 200 and h["content-type"].endswith("; charset=utf-8")
    assert err(ask(srv, "GET", "/static/a/b")) == (404, "no such page")
    assert err(ask(srv, "GET", "/favicon.ico")) == (404, "no icon")
    assert err(ask(srv, "GET", "/nothing")) == (404, "no such page")
    status, h, body = ask(srv, "HEAD", "/nothing")
    assert status == 404 and body == b"" and h["content-type"] == "application/json"


def test_files_ranges_and_types(srv, build_dir):
    blob = bytes(range(256)) * 2100                      # 537600 bytes: more than two 256 KiB reads
    (build_dir / "blob.bin").write_bytes(blob)
    (build_dir / "empty.txt").write_bytes(b"")
    c = Conn(srv)
    try:
        c.send(raw(srv, "GET", "/files/blob.bin"))
        status, h, body = c.response()
        assert status == 200 and body == blob and h["content-type"] == "application/octet-stream"
        assert h["accept-ranges"] == "bytes" and h["cache-control"] == "max-age=3600"
        assert h["x-content-type-options"] == "nosniff" and "content-range" not in h
        c.send(raw(srv, "GET", "/files/blob.bin", headers={"Range": "bytes=1-300000"}))
        status, h, body = c.response()
        assert status == 206 and body == blob[1:300001] and h["content-range"] == f"bytes 1-300000/{len(blob)}"
        c.send(raw(srv, "GET", "/files/blob.bin", headers={"Range": "bytes=-3"}))     # same connection: framed
        status, h, body = c.response()
        assert status == 206 and body == blob[-3:] and h["content-length"] == "3"
        c.send(raw(srv, "GET", "/files/blob.bin", headers={"Range": "bytes=999999-"}))
        status, h, body = c.response()
        assert (status, h["content-range"], h["content-length"], body) == (416, f"bytes */{len(blob)}", "0", b"")
        c.send(raw(srv, "HEAD", "/files/blob.bin", headers={"Range": "bytes=0-9"}))
        status, h, body = c.response(head=True)
        assert status == 206 and h["content-length"] == "10"
        c.send(raw(srv, "GET", "/files/empty.txt"))
        status, h, body = c.response()
        assert (status, h["content-length"], body) == (200, "0", b"")
        assert h["content-type"] == "text/plain; charset=utf-8"
        c.send(raw(srv, "GET", "/files/blob.bin", headers={"Range": "bytes=0-1"}))
        assert c.response()[2] == blob[:2]
    finally:
        c.close()


def test_a_file_that_shrinks_while_sent_ends_the_response(srv, build_dir, monkeypatch):
    (build_dir / "short.bin").write_bytes(b"abc")
    real = Path.stat

    def bigger(self, *a, **k):
        st = real(self, *a, **k)
        if self.name == "short.bin":
            return type("St", (), {"st_size": 10, "st_mode": st.st_mode})()
        return st
    monkeypatch.setattr(Path, "stat", bigger)
    c = Conn(srv, timeout=3)
    try:
        c.send(raw(srv, "GET", "/files/short.bin"))
        line = c.f.readline()
        assert line.split()[1] == b"200"
        while c.f.readline() not in (b"\r\n", b""):
            pass
        assert c.f.read(3) == b"abc"                   # then the server stops writing (no endless loop)
    finally:
        c.close()


# ----------------------------------------------------------------------------- the JSON API

def test_segments_summary_and_detail(srv):
    status, h, body = ask(srv, "GET", "/api/segments")
    assert status == 200 and h["content-type"] == "application/json" and h["cache-control"] == "no-store"
    assert b": " not in body and b", " not in body                  # compact separators
    d = json.loads(body)
    assert sorted(r["key"] for r in d["segments"]) == ["v:0", "v:1", "w:0"]
    assert d["flag_info"] == S.FLAG_INFO and d["mesh"] is False
    status, _, body = ask(srv, "HEAD", "/api/segments")
    assert status == 200 and body == b""
    assert json.loads(ask(srv, "GET", "/api/summary")[2])["total"]["segments"] == 3
    assert json.loads(ask(srv, "GET", "/api/unmatched")[2]) == {"unmatched": []}
    det = json.loads(ask(srv, "GET", "/api/segment/v/0")[2])
    assert det["key"] == "v:0" and det["clip"] is None                # no source video: no clip URL
    assert err(ask(srv, "GET", "/api/segment/v/2")) == (404, "no segment v:2")
    assert err(ask(srv, "GET", "/api/segment/v/x")) == (404, "no such segment")
    assert err(ask(srv, "GET", "/api/segment/v/0/x")) == (404, "no such page")
    assert ask(srv, "GET", "/api/segment/%76/1")[0] == 200             # the video name is unquoted


def test_detail_gives_the_clip_url_when_the_source_exists(srv, build_dir):
    (build_dir / "v.mp4").write_bytes(b"not really a video")
    try:
        det = json.loads(ask(srv, "GET", "/api/segment/v/1")[2])
        s = srv.view.segments["v:1"]
        assert det["clip"] == srv.clips.url(s, srv.view.videos["v"]) and det["clip"].startswith("/clip/v/1.mp4?v=")
    finally:
        (build_dir / "v.mp4").unlink()


def test_clips_without_a_source_and_prefetch(srv, build_dir, monkeypatch):
    assert err(ask(srv, "GET", "/clip/w/0.mp4")) == (404, f"source video of w not found ({build_dir / 'w.mp4'})")
    assert err(ask(srv, "GET", "/clip/w/0.avi")) == (404, "no such page")
    assert err(ask(srv, "GET", "/clip/w/9.mp4")) == (404, "no segment w:9")
    (build_dir / "v.mp4").write_bytes(b"x")
    cut, fetched = [], []

    def get(s, v):
        p = build_dir / "review_cache" / f"{s.key}.mp4"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"clip " + s.key.encode())
        cut.append(s.key)
        return p
    monkeypatch.setattr(srv.clips, "get", get)
    monkeypatch.setattr(srv.clips, "prefetch", lambda s, v: fetched.append(s.key) if v.id == s.video else None)
    try:
        order = srv.view.order
        for key in order:
            video, _, i = key.partition(":")
            status, h, body = ask(srv, "GET", f"/clip/{video}/{i}.mp4")
            if video == "v":
                assert status == 200 and body == b"clip " + key.encode() and h["content-type"] == "video/mp4"
                assert h["cache-control"] == "max-age=3600"
        nxt = [order[i + 1] for i, k in enumerate(order[:-1]) if k.startswith("v") and order[i + 1].startswith("v")]
        assert fetched == nxt                               # the next one is cut ahead, when it has a source
    finally:
        (build_dir / "v.mp4").unlink()


def test_meshes(srv):
    assert err(ask(srv, "GET", "/mesh/v/0/0/3.png")) == (
        404, "mesh rendering is off (start with --flame DIR or --flame open) or the segment has no fit")
    calls = []

    class Fake:
        def frame_png(self, key, frame, coeffs):
            calls.append((key, frame, coeffs().shape))
            return b"PNG"
    srv.renderer = Fake()
    status, h, body = ask(srv, "GET", "/mesh/v/0/1/7.png")
    assert (status, body, h["content-type"], h["cache-control"]) == (200, b"PNG", "image/png", "max-age=3600")
    assert calls == [(("v:0", 1, "items/v/smooth/seg000.npz"), 7, (60, 56))]
    assert err(ask(srv, "GET", "/mesh/v/0/2/7.png")) == (404, "no such mesh frame")     # two strips: 0 and 1
    assert err(ask(srv, "GET", "/mesh/v/0/x/7.png")) == (404, "no such mesh frame")
    assert err(ask(srv, "GET", "/mesh/v/0/0/x.png")) == (404, "no such mesh frame")
    assert err(ask(srv, "GET", "/mesh/v/0/0/7.jpg")) == (404, "no such page")
    assert err(ask(srv, "GET", "/mesh/v/1/0/7.png"))[1].startswith("mesh rendering is off")   # no fit
    assert json.loads(ask(srv, "GET", "/api/segments")[2])["mesh"] is True


def test_errors_inside_a_get(srv, monkeypatch):
    def gone():
        raise KeyError("v:0")
    monkeypatch.setattr(srv.view, "summary", gone)
    assert err(ask(srv, "GET", "/api/summary")) == (404, "no longer in the build: 'v:0'")
    monkeypatch.setattr(srv.view, "summary", lambda: 1 / 0)
    assert err(ask(srv, "GET", "/api/summary")) == (500, "ZeroDivisionError: division by zero")
    monkeypatch.setattr(srv.view, "summary", lambda: {"x": float("nan")})
    assert err(ask(srv, "GET", "/api/summary"))[0] == 500      # never NaN in JSON
    monkeypatch.setattr(srv.view, "summary", lambda: {"e": "x" * 600})
    status, h, body = ask(srv, "HEAD", "/api/nothing")
    assert status == 404 and body == b"" and int(h["content-length"]) > 0


def test_a_long_error_message_is_cut_at_500(srv, monkeypatch):
    monkeypatch.setattr(srv.view, "summary", lambda: (_ for _ in ()).throw(RuntimeError("y" * 600)))
    status, msg = err(ask(srv, "GET", "/api/summary"))
    assert status == 500 and msg == ("RuntimeError: " + "y" * 600)[:500]


def test_unmatched_rows_have_seconds(srv, build_dir, monkeypatch):
    rows = [{"video": "w", "frames": [10, 36]}, {"video": "gone", "frames": [1, 7]}]
    srv.view.refresh()
    monkeypatch.setattr(srv.view, "unmatched", lambda: [dict(r) for r in rows])
    got = json.loads(ask(srv, "GET", "/api/unmatched")[2])["unmatched"]
    fps = srv.view.th.fps
    assert got == [{"video": "w", "frames": [10, 36], "fps": 25, "seconds": [0.4, 1.44]},
                   {"video": "gone", "frames": [1, 7], "fps": fps, "seconds": [round(1 / fps, 3), round(7 / fps, 3)]}]


# ----------------------------------------------------------------------------- guards

def test_host_and_origin_guards(srv):
    port = srv.port
    assert err(ask(srv, "GET", "/api/summary", headers={"Host": "evil.example:1"})) == (
        403, "unexpected Host header 'evil.example:1'")
    assert err(ask(srv, "GET", "/api/summary", headers={"Host": "e" * 150}))[1] == (
        "unexpected Host header " + repr("e" * 100))
    assert err(ask(srv, "GET", "/api/summary", headers={"Host": None})) == (403, "unexpected Host header ''")
    assert ask(srv, "GET", "/api/summary", headers={"Host": f"LOCALHOST:{port}"})[0] == 200
    body = {"key": "v:0", "decision": "accept"}
    assert decide(srv, body, {"Origin": f" HTTP://127.0.0.1:{port} ", "Sec-Fetch-Site": " Same-Origin "})[0] == 200
    assert decide(srv, body, {"Sec-Fetch-Site": "none"})[0] == 200
    assert err(decide(srv, body, {"Origin": "http://evil.example"})) == (
        403, "request from another origin ('http://evil.example') refused")
    assert err(decide(srv, body, {"Origin": "o" * 150}))[1] == f"request from another origin ({'o' * 100!r}) refused"
    assert err(decide(srv, body, {"Origin": f"http://127.0.0.1:{port}", "Host": f"localhost:{port}"}))[0] == 403
    assert err(decide(srv, body, {"Sec-Fetch-Site": " Cross-Site" + "x" * 40})) == (
        403, f"request from another site (Sec-Fetch-Site: {('cross-site' + 'x' * 40)[:30]}) refused")
    assert err(decide(srv, body, {"Sec-Fetch-Site": "same-site"}))[0] == 403
    assert err(decide(srv, body, {"Host": "evil:1"}))[0] == 403
    assert len(Manifest(srv.out, "review").read_all()) == 2


def test_a_remote_server_takes_any_host(build_dir):
    s = make_server(build_dir, port=0, allow_remote=True)
    th = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    th.start()
    try:
        assert ask(s, "GET", "/api/summary", headers={"Host": "my.machine:1"})[0] == 200
    finally:
        s.shutdown()
        s.server_close()
        s.clips.close()


def test_the_token(srv):
    body = json.dumps({"key": "v:0", "decision": "accept"}).encode()
    hdr = {"Content-Type": "application/json"}
    assert err(ask(srv, "POST", "/api/decision", body, hdr, token=False)) == (
        403, "missing X-Review-Token (reload the review page)")
    assert err(ask(srv, "POST", "/api/decision", body, hdr | {"X-Review-Token": ""}, token=False))[1].startswith(
        "missing")
    assert err(ask(srv, "POST", "/api/decision", body, hdr | {"X-Review-Token": srv.token[:-1] + "\xe9"},
                   token=False)) == (403, "wrong X-Review-Token (the server was restarted? reload the review page)")
    assert ask(srv, "POST", "/api/decision", body, hdr | {"X-Review-Token": f" {srv.token} "}, token=False)[0] == 200


def test_other_methods(srv):
    assert err(ask(srv, "PUT", "/api/decision")) == (405, "PUT is not supported")
    assert err(ask(srv, "DELETE", "/x")) == (405, "DELETE is not supported")
    assert err(ask(srv, "PATCH", "/x")) == (405, "PATCH is not supported")
    assert err(ask(srv, "POST", "/api/other")) == (404, "no such endpoint")
    assert err(ask(srv, "OPTIONS", "/api/decision")) == (403, "cross-origin requests are not allowed")
    assert err(ask(srv, "PUT", "/x", token=False))[1].startswith("missing X-Review-Token")
    status, h, body = ask(srv, "BREW", "/")
    assert (status, h["connection"]) == (501, "close")
    assert json.loads(body) == {"error": "Unsupported method ('BREW')", "status": 501}
    assert h["content-type"] == "application/json" and h["cache-control"] == "no-store"


def test_http_servers_own_refusals(srv):
    c = Conn(srv)
    try:
        c.send(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
        status, h, body = c.response()
        assert (status, h["connection"], json.loads(body)) == (
            414, "close", {"error": "Request-URI Too Long", "status": 414})
        assert c.closed()
    finally:
        c.close()
    c = Conn(srv)
    try:
        c.send(b"HEAD / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n")
        status, h, body = c.response(head=True)
        assert status == 431 and int(h["content-length"]) > 0 and c.f.read(1) == b""
    finally:
        c.close()


def test_send_error_falls_back_to_the_status_phrase(build_dir):
    class H(S.ReviewHandler):
        def __init__(self):
            self.sent, self.wfile, self.close_connection = [], self, False
            self.command, self.request_version, self.requestline = "GET", "HTTP/1.1", "GET / HTTP/1.1"
            self._headers_buffer = []

        def send_response(self, code, message=None):
            self.sent.append(("status", code))

        def send_header(self, k, v):
            self.sent.append((k, v))

        def end_headers(self):
            self.sent.append("end")

        def write(self, data):
            self.sent.append(data)
    h = H()
    h.send_error(404)
    body = json.dumps({"error": "Not Found", "status": 404}).encode()
    assert h.close_connection is True
    assert h.sent == [("status", 404), ("Connection", "close"), ("Content-Type", "application/json"),
                      ("Content-Length", str(len(body))), ("Cache-Control", "no-store"), "end", body]
    h = H()
    h.send_error(799)
    assert h.sent[-1] == json.dumps({"error": "error", "status": 799}).encode()
    h = H()
    h.send_error(304, "x")
    assert h.sent[-1] == "end"                       # no body for 304 or 204 or 1xx
    h = H()
    h.send_error(204, "x")
    assert h.sent[-1] == "end"
    h = H()
    h.send_error(199, "x")
    assert h.sent[-1] == "end"
    h = H()
    h.send_error(200, "x" * 600)
    assert h.sent[-1] == json.dumps({"error": "x" * 500, "status": 200}).encode()
    h = H()
    h._headers_sent = True
    h.send_error(400)
    assert h.sent == [] and h.close_connection is True
    h = H()
    h._headers_sent = True
    h._send_error(400, "x")
    assert h.sent == [] and h.close_connection is True
    h = H()

    def broken(*a):
        raise BrokenPipeError
    h.send_response = broken
    h.send_error(400)
    h._send_error(400, "x")
    assert h.close_connection is True
    h = H()
    h._send_error(418, "y" * 600, head=True)
    body = json.dumps({"error": "y" * 500, "status": 418}).encode()
    assert h.sent == [("status", 418), ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                      ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"), "end"]
    assert h.close_connection is False


# ----------------------------------------------------------------------------- framing and bodies

def test_expect_100_continue(srv):
    body = json.dumps({"key": "v:0", "decision": "accept"}).encode()
    c = Conn(srv)
    try:
        c.send(raw(srv, "POST", "/api/decision", headers={"Content-Length": str(len(body)),
                                                           "Expect": "100-continue"}))
        assert c.f.readline() == b"HTTP/1.1 100 Continue\r\n" and c.f.readline() == b"\r\n"
        c.send(body)
        status, h, _ = c.response()
        assert status == 200 and "connection" not in h
        assert not c.closed(0.3)                           # a request read in full keeps the connection
    finally:
        c.close()


def test_body_framing_refusals(srv):
    hdr = {"Content-Type": "application/json"}
    assert err(ask(srv, "POST", "/api/decision", headers={"Transfer-Encoding": "chunked"})) == (
        400, "unsupported body framing: send one numeric Content-Length, no Transfer-Encoding")
    assert err(ask(srv, "POST", "/api/decision", headers=hdr)) == (411, "missing body")
    assert err(ask(srv, "POST", "/api/decision", headers={"Content-Length": "0"})) == (400, "missing body")
    assert err(ask(srv, "POST", "/api/decision", headers={"Content-Length": " 16385 "})) == (
        413, "body larger than 16384 bytes")
    c = Conn(srv)
    try:
        c.send(raw(srv, "POST", "/api/decision", headers={"Content-Length": "5"}).replace(
            b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n") + b"abcde")
        status, h, body = c.response()
        assert (status, h["connection"]) == (400, "close") and json.loads(body)["error"].startswith("unsupported")
    finally:
        c.close()


def test_a_body_of_exactly_max_body_is_taken(srv):
    body = json.dumps({"key": "v:0", "decision": "accept"}).encode()
    body += b" " * (S.MAX_BODY - len(body))
    status, h, resp = decide(srv, body)
    assert status == 200 and json.loads(resp)["ok"] is True


def test_a_short_body_and_a_slow_body(srv):
    srv.read_timeout = 0.6
    c = Conn(srv)
    try:
        c.send(raw(srv, "POST", "/api/decision", headers={"Content-Length": "20"}) + b'{"key"')
        c.sock.shutdown(socket.SHUT_WR)
        assert err(c.response()) == (400, "the body ended before its Content-Length")
    finally:
        c.close()
    c = Conn(srv)
    try:
        c.send(raw(srv, "POST", "/api/decision", headers={"Content-Length": "20"}) + b'{"key"')
        t = time.monotonic()
        assert err(c.response()) == (408, "the request body came too slowly")       # stalled: the read times out
        assert time.monotonic() - t < 5
    finally:
        c.close()
    c = Conn(srv)
    try:                                                     # trickled: every read in time, the whole too late
        c.send(raw(srv, "POST", "/api/decision", headers={"Content-Length": "12"}))
        for b in b'{"key": "v:0':
            c.send(bytes([b]))
            time.sleep(0.1)
        assert err(c.response()) == (408, "the request body came too slowly")
    finally:
        c.close()


def test_an_idle_connection_is_dropped_after_the_read_timeout(srv):
    srv.read_timeout = 0.3
    c = Conn(srv)
    try:
        assert c.closed(wait=3.0)
    finally:
        c.close()


def test_refused_bodies_close_the_connection_and_are_drained(srv):
    c = Conn(srv)
    try:
        c.send(raw(srv, "POST", "/api/decision", headers={"Content-Length": "200000", "X-Review-Token": "bad"}))
        status, h, _ = c.response()
        assert (status, h["connection"]) == (403, "close")
        c.send(b"x" * 200000)                              # the rest of the body: read and dropped, no reset
        assert c.closed(wait=3.0)
    finally:
        c.close()
    c = Conn(srv)
    try:                                                   # a GET with a body is answered, then closed
        c.send(raw(srv, "GET", "/api/summary", body=b"abc"))
        status, h, _ = c.response()
        assert (status, h["connection"]) == (200, "close") and c.closed()
    finally:
        c.close()


def test_linger_stops_at_its_time_limit(srv, monkeypatch):
    monkeypatch.setattr(S, "LINGER_SECONDS", 0.3)
    c = Conn(srv)
    try:
        c.send(raw(srv, "POST", "/api/decision", headers={"Content-Length": "10", "X-Review-Token": "bad"}))
        status, h, _ = c.response()
        assert status == 403
        t = time.monotonic()
        assert c.closed(wait=3.0)                       # the client sends nothing more: closed after the linger
        assert time.monotonic() - t < 2.0
    finally:
        c.close()


def test_linger_stops_at_its_byte_limit(srv, monkeypatch):
    monkeypatch.setattr(S, "LINGER_BYTES", 10)
    monkeypatch.setattr(S, "LINGER_SECONDS", 5.0)
    c = Conn(srv)
    try:
        c.send(raw(srv, "POST", "/api/decision", headers={"Content-Length": "100", "X-Review-Token": "bad"}))
        assert c.response()[0] == 403
        c.send(b"y" * 20)
        t = time.monotonic()
        assert c.closed(wait=4.0) and time.monotonic() - t < 3.0
    finally:
        c.close()


def test_log_lines_only_when_asked(srv, monkeypatch, capsys):
    ask(srv, "GET", "/api/summary")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("CHORUSHEAD_REVIEW_LOG", "1")
    ask(srv, "GET", "/api/summary")
    assert '"GET /api/summary HTTP/1.1" 200' in capsys.readouterr().err


# ----------------------------------------------------------------------------- decisions

def test_a_decision_and_its_answer(srv):
    status, h, body = decide(srv, {"key": "v:1", "decision": "reject", "reason": "  blurry  ", "frames": [65, 105]},
                             {"Content-Type": "Application/JSON; charset=utf-8"})
    d = json.loads(body)
    assert status == 200
    assert {k: d[k] for k in ("ok", "key", "decision", "reason", "frames")} == {
        "ok": True, "key": "v:1", "decision": "reject", "reason": "blurry", "frames": [65, 105]}
    assert d["summary"]["total"]["rejected"] == 1
    rec = Manifest(srv.out, "review").read_all()[-1]
    assert rec.item == "v:1" and rec.outputs["reason"] == "blurry" and rec.outputs["frames"] == [65, 105]
    assert rec.outputs["segmentation"] == srv.view.segmentation("v") is not None
    d = json.loads(decide(srv, {"key": "v:1", "decision": "accept", "reason": "   "})[2])
    assert d["reason"] is None and "reason" not in Manifest(srv.out, "review").read_all()[-1].outputs
    assert decide(srv, {"key": "v:1", "decision": "accept", "reason": "r" * 1000})[0] == 200


@pytest.mark.parametrize("body, status, message", [
    ({"key": "v:0", "decision": "maybe"}, 400, "decision must be one of accept, reject, undo"),
    ({"key": "v:0", "decision": 1}, 400, "decision must be one of accept, reject, undo"),
    ({"key": "v:0"}, 400, "decision must be one of accept, reject, undo"),
    ({"key": "v:0", "decision": "accept", "reason": "r" * 1001}, 400,
     "reason must be a string of at most 1000 characters"),
    ({"key": "v:0", "decision": "accept", "reason": 3}, 400, "reason must be a string of at most 1000 characters"),
    ({"key": "v0", "decision": "accept"}, 400, "key must be '<video>:<segment index>'"),
    ({"key": 7, "decision": "accept"}, 400, "key must be '<video>:<segment index>'"),
    ({"key": "v:9", "decision": "accept"}, 404, "no segment v:9"),
    ({"key": "v:0", "decision": "accept", "frames": [5, 65, 1]}, 400, "frames must be [start, end], two whole numbers"),
    ({"key": "v:0", "decision": "accept", "frames": "5-65"}, 400, "frames must be [start, end], two whole numbers"),
    ({"key": "v:0", "decision": "accept", "frames": [True, 65]}, 400, "frames must be [start, end], two whole numbers"),
    ({"key": "v:0", "decision": "accept", "frames": [5.0, 65]}, 400, "frames must be [start, end], two whole numbers"),
    ({"key": "v:0", "decision": "accept", "frames": [-1, 65]}, 400, "frames must be [start, end], two whole numbers"),
    ({"key": "v:0", "decision": "accept", "frames": [5, 1 << 40]}, 400,
     "frames must be [start, end], two whole numbers"),
    ({"key": "v:0", "decision": "accept", "frames": [0, (1 << 40) - 1]}, 409,
     "v:0 now covers frames 5-65, not the 0-1099511627775 shown: the build changed; reload the page"),
    ({"key": "v:0", "decision": "accept", "frames": [5, 64]}, 409,
     "v:0 now covers frames 5-65, not the 5-64 shown: the build changed; reload the page"),
    ({"key": "v:0", "decision": "accept", "zz": 1, "aa": 2}, 400, "unknown field(s): 'aa', 'zz'"),
    ({"key": "v:0", "decision": "accept", "b" * 50: 1, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1}, 400,
     f"unknown field(s): {'b' * 40!r}, 'c', 'd', 'e', 'f'"),
    (b'["v:0", "accept"]', 400, "body must be a JSON object"),
])
def test_refused_decisions_and_their_lines(srv, body, status, message):
    assert err(decide(srv, body)) == (status, message)
    assert Manifest(srv.out, "review").read_all() == []


def test_refused_decision_bodies(srv):
    assert err(decide(srv, b"\xff{")) == (400, "body is not JSON")
    assert err(decide(srv, b"[" * 5000 + b"]" * 5000)) == (400, "body is not JSON")
    assert err(decide(srv, b'{"key": "v:0", "decision": "accept"}', {"Content-Type": "text/plain"})) == (
        415, "send JSON (Content-Type: application/json)")
    assert err(decide(srv, b'{"key": "v:0", "decision": "accept"}', {"Content-Type": None})) == (
        415, "send JSON (Content-Type: application/json)")
    assert Manifest(srv.out, "review").read_all() == []


def test_a_decision_that_cannot_be_written_is_a_500(srv, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(S, "record_decision", boom)
    assert err(decide(srv, {"key": "v:0", "decision": "accept"})) == (500, "RuntimeError: disk full")


def test_a_decision_key_with_colons_in_the_video(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _record(out, "contiguity", "ch:vid", {"segments": [[0, 10]], "strip_runs": [], "n_frames": 10})
    s = make_server(out, port=0)
    th = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    th.start()
    try:
        status, _, body = decide(s, {"key": "ch:vid:0", "decision": "accept"})
        assert status == 200 and json.loads(body)["key"] == "ch:vid:0"
        assert Manifest(out, "review").read_all()[-1].item == "ch:vid:0"
        assert ask(s, "GET", "/api/segment/ch%3Avid/0")[0] == 200
    finally:
        s.shutdown()
        s.server_close()
        s.clips.close()


def test_head_requests_get_headers_only(srv, monkeypatch):
    srv.renderer = type("R", (), {"frame_png": lambda self, key, frame, coeffs: b"PNG"})()
    (srv.out / "v.mp4").write_bytes(b"x")
    clip = srv.out / "review_cache" / "c.mp4"
    clip.parent.mkdir(exist_ok=True)
    clip.write_bytes(b"clip")
    monkeypatch.setattr(srv.clips, "get", lambda s, v: clip)
    monkeypatch.setattr(srv.clips, "prefetch", lambda s, v: None)
    try:
        for path, status in [("/", 200), ("/static/index.html", 200), ("/api/segments", 200), ("/api/summary", 200),
                             ("/api/unmatched", 200), ("/api/segment/v/0", 200), ("/clip/v/0.mp4", 200),
                             ("/mesh/v/0/0/1.png", 200), ("/nothing", 404)]:
            st, h, body = ask(srv, "HEAD", path)
            assert st == status and body == b"" and int(h["content-length"]) > 0, path
        monkeypatch.setattr(srv.view, "summary", lambda: {}["gone"])
        assert ask(srv, "HEAD", "/api/summary")[0] == 404
        monkeypatch.setattr(srv.view, "summary", lambda: 1 / 0)
        assert ask(srv, "HEAD", "/api/summary")[0] == 500
    finally:
        (srv.out / "v.mp4").unlink()


def test_more_edges(srv, build_dir, monkeypatch):
    # a one-byte range is sent
    (build_dir / "one.zzq").write_bytes(b"abc")
    status, h, body = ask(srv, "GET", "/files/one.zzq", headers={"Range": "bytes=1-1"})
    assert (status, body, h["content-type"]) == (206, b"b", "application/octet-stream")
    # a body of one byte left unread closes the connection
    c = Conn(srv)
    try:
        c.send(raw(srv, "GET", "/api/summary", body=b"a"))
        assert c.response()[1]["connection"] == "close"
    finally:
        c.close()
    # a body whose last byte comes on its own
    body = json.dumps({"key": "v:0", "decision": "accept"}).encode()
    c = Conn(srv)
    try:
        c.send(raw(srv, "POST", "/api/decision", headers={"Content-Length": str(len(body))}) + body[:-1])
        time.sleep(0.2)
        c.send(body[-1:])
        assert c.response()[0] == 200
    finally:
        c.close()
    # a long video name is cut at 300 characters in the message
    assert err(ask(srv, "GET", "/api/segment/" + "x" * 400 + "/0")) == (404, "no segment " + ("x" * 400 + ":0")[:300])
    # the origin of a page opened as localhost
    assert decide(srv, {"key": "v:0", "decision": "accept"},
                  {"Host": f"localhost:{srv.port}", "Origin": f"http://localhost:{srv.port}"})[0] == 200
    assert len(srv.token) == 43                                   # 32 random bytes


def test_the_detail_names_mesh_urls_only_with_a_renderer(srv):
    assert json.loads(ask(srv, "GET", "/api/segment/v/0")[2])["mesh"] is None
    srv.renderer = object()
    assert json.loads(ask(srv, "GET", "/api/segment/v/0")[2])["mesh"] == ["/mesh/v/0/0/", "/mesh/v/0/1/"]


def test_safe_path_strips_only_slashes(tmp_path):
    (tmp_path / "Xa.txt").write_text("x")
    assert safe_path(tmp_path, "Xa.txt") == (tmp_path / "Xa.txt").resolve()


def test_default_pipeline_named_in_its_error(monkeypatch, tmp_path):
    from chorushead.runner import Pipeline, default_pipeline_path
    pl = type("P", (), {"params": {"review": {"zz": 1}}})()
    monkeypatch.setattr(Pipeline, "load", classmethod(lambda cls: pl))
    with pytest.raises(ValueError) as e:
        S.pipeline_thresholds()
    assert str(e.value).startswith(f"{default_pipeline_path()}: unknown [stages.review] threshold(s) ['zz']")
    seen = []
    monkeypatch.setattr(S, "pipeline_thresholds", lambda out=None: seen.append(out) or S.Thresholds())
    monkeypatch.setattr(S, "make_server", lambda *a, **k: (_ for _ in ()).throw(ValueError("stop")))
    with pytest.raises(SystemExit):
        S.serve(tmp_path, flame_dir="x")
    assert seen == [tmp_path]


def test_default_mesh_with_every_landmark_backend(tmp_path):
    from chorushead.core.manifest import Record
    from chorushead.core.openhead import FIT_BACKENDS, NAME
    m = Manifest(tmp_path, "fit")
    for i, b in enumerate(sorted(FIT_BACKENDS)):
        m.append(Record(item=f"i{i}", stage="fit", status="done", fingerprint="0" * 16, outputs={"backend": b}))
    assert S.default_mesh(tmp_path) == NAME
