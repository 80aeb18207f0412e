"""`chorushead fetch`: links to a folder of videos through yt-dlp, resumably, and their origin into the build.

A real yt-dlp downloads from a real HTTP server on 127.0.0.1 (a thread of this process) serving two
short generated duets, a 404 and an HTML page; the server counts the GETs per path and records Range
headers, so "reused" means no request at all and "continued" means the download resumed mid-file.
Every name lookup and connection this process makes is checked to stay on loopback.
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

yt_dlp = pytest.importorskip("yt_dlp", reason='yt-dlp not installed (pip install -e ".[fetch]")')

from chorushead.cli import app  # noqa: E402
from chorushead.core import origin  # noqa: E402
from chorushead.fetch import ListError, read_list, url_id  # noqa: E402
from chorushead.runner import load_items  # noqa: E402

HTML = b"<!doctype html><html><head><title>A page</title></head><body><p>No video here.</p></body></html>"


def cli(*args) -> "object":
    return CliRunner().invoke(app, [str(a) for a in args])


class Server:
    """Serves ``files`` (path -> (bytes, content type)); counts GETs per path; honours ``Range: bytes=N-``
    (what yt-dlp sends to continue a .part file), as a real file server does."""

    def __init__(self, files: dict[str, tuple[bytes, str]]):
        self.files, self.gets, self.ranges = files, Counter(), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.gets[self.path] += 1
                if self.path not in server.files:
                    self.send_error(404, "File not found")
                    return
                body, ctype = server.files[self.path]
                m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                start = int(m.group(1)) if m else 0
                if m:
                    server.ranges.append((self.path, start))
                self.send_response(206 if m else 200)
                self.send_header("Content-Type", ctype)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(body) - start))
                if m:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                try:
                    self.wfile.write(body[start:])
                except (BrokenPipeError, ConnectionResetError):   # the client read what it needed
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    """Two 2 s duets (picture + song) from the project's own sample generator."""
    from chorushead.sample import write_sample
    root = tmp_path_factory.mktemp("clips")
    return {name: write_sample(root, seconds=2.0, name=name, seed=k, absent_s=None)[0].read_bytes()
            for k, name in enumerate(("duet_a", "duet_b"))}


@pytest.fixture
def server(clips):
    s = Server({"/v/duet_a.mp4": (clips["duet_a"], "video/mp4"), "/v/duet_b.mp4": (clips["duet_b"], "video/mp4"),
                "/page.html": (HTML, "text/html")})
    yield s
    s.close()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Record (and refuse) any name lookup or connection to anything but loopback from this process."""
    import ipaddress
    tried = []
    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def local(host) -> bool:
        try:
            return ipaddress.ip_address(str(host)).is_loopback
        except ValueError:
            return str(host) == "localhost"

    def guarded_lookup(host, *a, **kw):
        if host is not None and not local(host):
            tried.append(("getaddrinfo", host))
            raise socket.gaierror(socket.EAI_NONAME, "test: outbound lookup refused")
        return lookup(host, *a, **kw)

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
            tried.append(("connect", address))
            raise OSError(101, "test: outbound connection refused")
        return connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    yield
    assert tried == [], f"outbound attempts: {tried}"


def test_the_list_file(tmp_path):
    f = tmp_path / "urls.txt"
    f.write_text("# my duets\n\nhttp://h/a.mp4\n  http://h/b.mp4   # the second one\nhttp://h/a.mp4\n"
                 "http://h/c.mp4#t=10\n")
    assert read_list(f) == ["http://h/a.mp4", "http://h/b.mp4", "http://h/c.mp4#t=10"]
    f.write_text("http://h/a.mp4 http://h/b.mp4\n")
    with pytest.raises(ListError, match=r"urls.txt:1: one URL per line"):
        read_list(f)
    f.write_text("# nothing yet\n\n")
    with pytest.raises(ListError, match="no URL in it"):
        read_list(f)


def test_usage_errors_exit_2_with_one_line(tmp_path, monkeypatch):
    res = cli("fetch", "--list", tmp_path / "nope.txt", "--out", tmp_path / "raw")
    assert res.exit_code == 2 and "nope.txt: no such file" in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "raw").exists()
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/x.mp4\n")
    monkeypatch.setitem(sys.modules, "yt_dlp", None)   # as if it were not installed
    res = cli("fetch", "--list", tmp_path / "urls.txt", "--out", tmp_path / "raw")
    assert res.exit_code == 2 and 'pip install -e ".[fetch]"' in res.output, res.output
    assert not (tmp_path / "raw").exists()


def test_fetch_resume_and_provenance_in_the_build_and_card(server, clips, tmp_path):
    a, b = f"{server.base}/v/duet_a.mp4", f"{server.base}/v/duet_b.mp4"
    missing, page = f"{server.base}/v/missing.mp4", f"{server.base}/page.html"
    urls = tmp_path / "urls.txt"
    urls.write_text(f"# two duets, a dead link and a page without video\n{a}\n\n{b}\n{missing}\n{page}\n{a}\n")
    raw = tmp_path / "raw"

    res = cli("fetch", "--list", urls, "--out", raw)
    assert res.exit_code == 1, res.output
    name = {a: f"duet_a-{url_id(a)}.mp4", b: f"duet_b-{url_id(b)}.mp4"}
    assert sorted(p.name for p in raw.iterdir()) == sorted([*name.values(), "fetch.jsonl"])
    for url, clip in ((a, "duet_a"), (b, "duet_b")):
        assert (raw / name[url]).read_bytes() == clips[clip]
    assert re.search(r"^\[1/4\] done +.*duet_a\.mp4 -> duet_a-\w{8}\.mp4 \(0\.\d MB in [\d.]+ s, [\d.]+ MB/s\)$",
                     res.output, re.M), res.output
    assert "2 done, 2 failed, 0 reused" in res.output
    recs = origin.read(raw)
    assert list(recs) == [a, b, missing, page]   # the duplicate fetched once, in the list's order
    version = yt_dlp.version.__version__
    ra = recs[a]
    assert (ra.status, ra.file, ra.title, ra.extractor, ra.yt_dlp, ra.bytes) == \
        ("done", name[a], "duet_a", "generic", version, len(clips["duet_a"]))
    # yt-dlp's generic extractor knows nothing of a plain file but its name: no uploader, licence, duration
    assert (ra.uploader, ra.license, ra.duration, ra.reason) == (None, None, None, None)
    assert recs[missing].status == "failed" and recs[missing].file is None
    assert recs[missing].reason == "[generic] missing: Unable to download webpage: HTTP Error 404: File not found"
    assert recs[page].reason == f"Unsupported URL: {page}"
    assert f"FAILED {missing}: [generic] missing: Unable to download webpage: HTTP Error 404" in res.output

    # Rerun: done files are reused without a request; the failed ones are tried again.
    before = Counter(server.gets)
    res = cli("fetch", "--list", urls, "--out", raw)
    assert res.exit_code == 1 and "0 done, 2 failed, 2 reused" in res.output, res.output
    new = server.gets - before
    assert new["/v/duet_a.mp4"] == new["/v/duet_b.mp4"] == 0
    assert new["/v/missing.mp4"] >= 1 and new["/page.html"] >= 1

    # A deleted file is fetched again; an interrupted one (half of it left as .part) is continued.
    (raw / name[a]).unlink()
    half = len(clips["duet_b"]) // 2
    (raw / (name[b] + ".part")).write_bytes(clips["duet_b"][:half])
    (raw / name[b]).unlink()
    urls.write_text(f"{a}\n{b}\n")
    res = cli("fetch", "--list", urls, "--out", raw)
    assert res.exit_code == 0 and "2 done, 0 failed, 0 reused" in res.output, res.output
    assert (raw / name[a]).read_bytes() == clips["duet_a"] and (raw / name[b]).read_bytes() == clips["duet_b"]
    assert ("/v/duet_b.mp4", half) in server.ranges and not (raw / (name[b] + ".part")).exists()

    # A build of the folder registers each video with its origin. Built first without fetch.jsonl (as a
    # build made before fetch existed), then with it: ingest is reused, nothing is redone.
    out = tmp_path / "build"
    short = ["--set", "ingest.min_seconds=1", "-q"]     # 2 s clips; the default wants 5 s
    shutil.move(raw / "fetch.jsonl", tmp_path / "fetch.jsonl")
    res = cli("build", "--videos", raw, "--out", out, "--stages", "ingest", *short)
    assert res.exit_code == 0, res.output
    assert all("origin" not in v for v in json.loads((out / "items.json").read_text()).values())
    shutil.move(tmp_path / "fetch.jsonl", raw / "fetch.jsonl")
    res = cli("build", "--videos", raw, "--out", out, "--stages", "ingest", *short)
    assert res.exit_code == 0, res.output
    assert re.search(r"^ingest +0 +2 ", res.output, re.M), res.output   # 0 done, 2 reused
    items = {Path(it.source).name: it for it in load_items(out).values()}
    assert items[name[a]].origin == {"url": a, "title": "duet_a", "uploader": None, "license": None,
                                     "duration": None, "extractor": "generic", "yt_dlp": version}
    assert items[name[b]].origin["url"] == b

    res = cli("report", "--out", out)
    assert res.exit_code == 0, res.output
    card = (out / "report" / "report.md").read_text()
    assert "Sources: 2 of 2 video(s) were downloaded by `chorushead fetch`" in card
    vid_a = next(v for v, it in load_items(out).items() if it.source.endswith(name[a]))
    assert f"| {vid_a} | {a} | duet_a | - | not stated | - |" in card
    assert a in (out / "report" / "index.html").read_text()


def test_build_from_a_list_of_links(server, clips, tmp_path):
    a = f"{server.base}/v/duet_a.mp4"
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{a}\n{server.base}/gone.mp4\n")
    out = tmp_path / "build"
    res = cli("build", "--videos", urls, "--out", out, "--stages", "ingest", "--set", "ingest.min_seconds=1", "-q")
    assert res.exit_code == 1, res.output          # the dead link; the good one is still built
    assert "1 done, 1 failed, 0 reused" in res.output
    [item] = load_items(out).values()
    assert Path(item.source) == (out / "raw" / f"duet_a-{url_id(a)}.mp4").absolute()
    assert item.origin["url"] == a
    assert re.search(r"^ingest +1 +0 ", res.output, re.M), res.output


@pytest.mark.slow   # two 7 s duets through every stage (landmark fit), ~1 min on 2 cores
def test_links_become_a_packed_lmdb_through_fetch_screen_build(tmp_path):
    """Issue 21's path end to end: a list of loopback links -> fetch -> build (the screen keeps both
    duets, a third link is a one-singer clip the screen turns away) -> windows in the LMDB, with each
    video's origin in the build. Stems are supplied (no separation models here), named as fetch named
    the files."""
    from chorushead.core.windows import WindowReader
    from chorushead.sample import write_sample
    from chorushead.core.manifest import Manifest
    from chorushead.runner import Pipeline, build
    src = tmp_path / "src"
    files, stems_of = {}, {}
    for k, (name, faces) in enumerate((("duet_a", 2), ("duet_b", 2), ("solo", 1))):
        video, stems, _ = write_sample(src, seconds=7.0, name=name, seed=40 + k, absent_s=None, n_faces=faces)
        files[f"/v/{name}.mp4"] = (video.read_bytes(), "video/mp4")
        stems_of[name] = stems / name
    from chorushead.core import media
    voice, sr = media.read_wav(stems_of["solo"] / "singer1.wav")    # stems want two singers: a silent second
    media.write_wav(stems_of["solo"] / "singer2.wav", 0 * voice, sr)
    srv = Server(files)
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{srv.base}/v/{n}.mp4\n" for n in stems_of))
        raw = tmp_path / "raw"
        res = cli("fetch", "--list", urls, "--out", raw)
        assert res.exit_code == 0, res.output
    finally:
        srv.close()
    fetched = {Path(r.url).stem: raw / r.file for r in origin.read(raw).values()}
    stems = tmp_path / "stems"
    for name, folder in stems_of.items():                 # <video file stem>/vocals.wav, ... as --stems wants
        shutil.copytree(folder, stems / fetched[name].stem)
    out = tmp_path / "out"
    summ = {s.stage: s for s in build(raw, out, Pipeline.load(overrides=["fit.backend=landmarks"]), stems=stems,
                                      progress=False)}
    screen = Manifest(out, "screen").latest()
    solo = next(v for v in screen if v.startswith("solo"))
    assert screen[solo].status == "skipped" and "exactly 2 face(s)" in screen[solo].reason
    assert all(r.status == "done" for v, r in screen.items() if v != solo)
    assert summ["pack"].done == 2 and summ["pack"].failed == 0
    windows = sum(len(WindowReader(out / "windows.lmdb", s)) for s in ("train", "val", "test"))
    assert windows > 0 and not any(k.startswith("solo") for k in WindowReader(out / "windows.lmdb", None).keys)
    items = load_items(out)
    assert {it.origin["url"] for it in items.values()} == {f"{srv.base}/v/{n}.mp4" for n in stems_of}
