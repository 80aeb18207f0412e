"""The review server on a shared desktop, over raw sockets: request framing (no smuggled requests in a
refused body), pipelining, slow and stalled clients, malformed numbers and keys, the per-run token and
the Origin check. (The same attacks from a real browser page: test_review_browser.py.)"""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from chorushead.core.manifest import Manifest
from chorushead.review.server import MAX_BODY, make_server

from review_fixture import build, out  # noqa: F401 (fixtures)




@pytest.fixture
def srv(out):
    s = make_server(out, port=0)
    s.read_timeout = 3.0        # the default is 60 s; a stalled client here must be dropped quickly
    th = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    yield s
    s.shutdown()
    s.server_close()


def recorded(out: Path) -> list[dict]:
    # the decision and its frames (``segmentation``, the contiguity fingerprint, is checked elsewhere)
    return [{k: v for k, v in r.outputs.items() if k != "segmentation"} for r in Manifest(out, "review").read_all()]


def request(srv, method: str, path: str, body: bytes = b"", headers: dict | None = None,
            length: int | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request (Host, token and JSON type as the page sends them, unless
    ``headers`` override them; a None value drops the header)."""
    h = {"Host": f"127.0.0.1:{srv.port}"}
    if method not in ("GET", "HEAD"):
        h |= {"Content-Type": "application/json", "X-Review-Token": srv.token}
    if body or length is not None:
        h["Content-Length"] = str(len(body) if length is None else length)
    h |= headers or {}
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in h.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def decision(srv, key: str = "duetA:0", decision: str = "accept", **headers) -> bytes:
    body = json.dumps({"key": key, "decision": decision}).encode()
    return request(srv, "POST", "/api/decision", body, headers)


class Conn:
    """A raw client connection that reads responses one by one and can tell whether the server closed."""

    def __init__(self, srv, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
        self.f = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        line = self.f.readline()
        assert line, "the server closed the connection instead of answering"
        status = int(line.split()[1])
        headers = {}
        while (h := self.f.readline()) not in (b"\r\n", b"\n", b""):
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        body = self.f.read(int(headers.get("content-length", 0)))
        return status, headers, body

    def closed(self, wait: float = 0.5) -> bool:
        """True once the server has closed its side (EOF within ``wait`` s); False if it stays open."""
        self.sock.settimeout(wait)
        try:
            return self.f.read(1) == b""
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def one(srv, data: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """Send ``data``, read one response, and whether the server then closed the connection."""
    c = Conn(srv, timeout=2.0)
    try:
        c.send(data)
        status, headers, body = c.response()
        return status, headers, body, c.closed()
    finally:
        c.close()


def json_error(status: int, body: bytes) -> str:
    assert 400 <= status < 500, (status, body)
    err = json.loads(body)
    assert err["status"] == status and isinstance(err["error"], str) and len(err["error"]) <= 500
    assert b"Traceback" not in body
    return err["error"]


# ----------------------------------------------------------------------------- framing
@pytest.mark.parametrize("case", ["text/plain", "no token", "wrong origin", "bad host", "too large",
                                  "unknown path", "form"])
def test_a_smuggled_request_in_a_refused_body_is_never_parsed(srv, out, case):
    """The issue's attack: a cross-origin text/plain POST (no preflight) whose body is a complete decision
    request. Refused without reading its body, the connection closes, so the body is never parsed as
    the next request (here even carrying the right token: framing alone must stop it)."""
    inner = decision(srv, "duetA:0", "reject")
    outer = {
        "text/plain": dict(headers={"Content-Type": "text/plain"}),
        "no token": dict(headers={"X-Review-Token": None}),
        "wrong origin": dict(headers={"Origin": "http://127.0.0.1:1"}),
        "bad host": dict(headers={"Host": "evil.example"}),
        "too large": dict(length=MAX_BODY + 1),
        "unknown path": dict(path="/api/nothing"),
        "form": dict(headers={"Content-Type": "application/x-www-form-urlencoded"}),
    }[case]
    data = request(srv, "POST", outer.get("path", "/api/decision"), inner, outer.get("headers"), outer.get("length"))
    status, headers, body, closed = one(srv, data)
    json_error(status, body)
    assert status == {"text/plain": 415, "form": 415, "too large": 413, "unknown path": 404}.get(case, 403)
    assert headers.get("connection") == "close" and closed
    time.sleep(0.2)
    assert recorded(out) == []


def test_a_get_with_a_body_closes_the_connection(srv, out):
    status, headers, _, closed = one(srv, request(srv, "GET", "/api/summary", decision(srv)))
    assert status == 200 and headers.get("connection") == "close" and closed
    assert recorded(out) == []


def test_pipelined_requests_are_answered_in_order(srv, out):
    c = Conn(srv)
    try:
        c.send(request(srv, "GET", "/api/summary") + decision(srv, "duetA:1", "accept")
               + request(srv, "GET", "/api/segment/duetA/1") + decision(srv, "duetA:9", "accept")
               + request(srv, "GET", "/api/summary"))
        got = [c.response() for _ in range(5)]
        assert [g[0] for g in got] == [200, 200, 200, 404, 200]
        assert json.loads(got[0][2])["total"]["reviewed"] == 0 and json.loads(got[4][2])["total"]["reviewed"] == 1
        assert json.loads(got[2][2])["decision"] == "accept"
        assert all(g[1].get("connection") != "close" for g in got)      # read in full: kept alive
        c.send(request(srv, "GET", "/api/unmatched"))
        assert c.response()[0] == 200
    finally:
        c.close()
    assert recorded(out) == [{"decision": "accept", "frames": [265, 425]}]


def test_a_slow_body_is_read_and_a_stalled_one_dropped(srv, out):
    body = json.dumps({"key": "duetB:0", "decision": "reject", "reason": "slow"}).encode()
    c = Conn(srv)
    try:
        c.send(request(srv, "POST", "/api/decision", length=len(body)))
        for i in range(0, len(body), 12):                 # in pieces, with pauses shorter than the timeout
            time.sleep(0.25)
            c.send(body[i:i + 12])
        status, _, reply = c.response()
        assert status == 200 and json.loads(reply)["reason"] == "slow"
    finally:
        c.close()
    # a body that stops halfway: answered (408) and closed after read_timeout, nothing recorded
    c = Conn(srv)
    t0 = time.monotonic()
    try:
        c.send(request(srv, "POST", "/api/decision", body[:10], length=len(body)))
        status, headers, reply = c.response()
        assert status == 408 and headers.get("connection") == "close" and c.closed()
        assert time.monotonic() - t0 < srv.read_timeout + 3
    finally:
        c.close()
    # a connection that never sends a request is closed too
    c = Conn(srv)
    t0 = time.monotonic()
    try:
        assert c.closed(wait=srv.read_timeout + 3) and time.monotonic() - t0 < srv.read_timeout + 3
    finally:
        c.close()
    assert [r["decision"] for r in recorded(out)] == ["reject"]


# ----------------------------------------------------------------------------- malformed input
@pytest.mark.parametrize("length", ["abc", "-5", "+5", " 5 5", "1e3", "0x10", "9" * 40, "99999999999", "²"])
def test_malformed_content_length_is_a_4xx_and_closes(srv, out, length):
    body = json.dumps({"key": "duetA:0", "decision": "accept"}).encode()
    data = request(srv, "POST", "/api/decision", body, {"Content-Length": length})
    status, headers, reply, closed = one(srv, data)
    json_error(status, reply)
    assert status in (400, 413) and closed
    assert recorded(out) == []


def test_other_body_framing_is_refused(srv, out):
    body = json.dumps({"key": "duetA:0", "decision": "accept"}).encode()
    chunked = request(srv, "POST", "/api/decision", b"", {"Transfer-Encoding": "chunked"}) \
        + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    twice = request(srv, "POST", "/api/decision", body).replace(
        b"Content-Length:", b"Content-Length: 1\r\nContent-Length:", 1)
    for data in (chunked, twice, request(srv, "POST", "/api/decision", b"", {"Content-Length": None}),
                 request(srv, "POST", "/api/decision", b"", {"Content-Length": "0"})):
        status, _, reply, closed = one(srv, data)
        assert status in (400, 411), reply
        json_error(status, reply)
    assert recorded(out) == []


@pytest.mark.parametrize("body", [
    {"key": "duetA:" + "9" * 5000, "decision": "accept"},          # a 5,000-digit segment id
    {"key": "duetA:" + "١٢", "decision": "accept"},                  # digits of another script
    {"key": "duetA:-1", "decision": "accept"},
    {"key": "duetA:1.0", "decision": "accept"},
    {"key": "x" * 5000 + ":0", "decision": "accept"},
    {"key": 5, "decision": "accept"},
    {"key": ["duetA", 0], "decision": "accept"},
    {"key": "duetA:0", "decision": ["accept"]},
    {"key": "duetA:0", "decision": "accept", "reason": 5},
    {"key": "duetA:0", "decision": "accept", "reason": "x" * 1001},
    {"key": "duetA:0", "decision": "accept", "extra": 1},             # unknown keys
    {"key": "duetA:0", "decision": "accept", "frames": [1e308, 2]},
    ["duetA:0", "accept"],
    "duetA:0",
])
def test_malformed_decisions_are_a_short_4xx(srv, out, body):
    status, headers, reply, closed = one(srv, request(srv, "POST", "/api/decision", json.dumps(body).encode()))
    json_error(status, reply)
    assert status in (400, 404) and not closed          # the body was read: the connection may stay
    assert recorded(out) == []


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe{}", b"[" * 16000, b'{"key": "duetA:0", "decision": "accept"',
                                 b"NaN", b""])
def test_bad_json_is_a_400(srv, out, raw):
    status, _, reply, _ = one(srv, request(srv, "POST", "/api/decision", raw, length=len(raw)))
    json_error(status, reply)
    assert status in (400, 411)
    assert recorded(out) == []


def test_huge_numbers_in_paths_and_ranges_are_not_500(srv):
    n = "9" * 5000
    for path in (f"/api/segment/duetA/{n}", f"/clip/duetA/{n}.mp4", f"/mesh/duetA/{n}/0/1.png",
                 f"/mesh/duetA/0/{n}/{n}.png", "/api/segment/duetA/-1", "/api/segment/duetA/%D9%A3"):
        status, _, body, _ = one(srv, request(srv, "GET", path))
        json_error(status, body)
    status, _, body, _ = one(srv, request(srv, "GET", "/files/items.json", headers={"Range": f"bytes={n}-"}))
    assert status == 200 and json.loads(body)                       # a range we cannot serve: the whole file
    status, _, _, closed = one(srv, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert status == 414 and closed


# ----------------------------------------------------------------------------- token and origin
def test_state_changes_need_the_token_and_this_origin(srv, out):
    page = one(srv, request(srv, "GET", "/"))
    assert page[0] == 200 and f'<meta name="review-token" content="{srv.token}">'.encode() in page[2]
    assert page[1]["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in page[1]["content-security-policy"]
    assert len(srv.token) >= 40
    other = make_server(out, port=0)
    assert other.token != srv.token                                   # random per run
    other.server_close()
    own = f"http://127.0.0.1:{srv.port}"
    refused = [
        {"X-Review-Token": None}, {"X-Review-Token": ""}, {"X-Review-Token": srv.token[:-1]},
        {"X-Review-Token": other.token}, {"X-Review-Token": "é" + srv.token[1:]},
        {"Origin": "http://127.0.0.1:1"}, {"Origin": "null"}, {"Origin": f"http://localhost:{srv.port}"},
        {"Origin": "http://evil.example"}, {"Origin": own, "Sec-Fetch-Site": "cross-site"},
        {"Origin": own, "Sec-Fetch-Site": "same-site"},
    ]
    for h in refused:
        status, _, body, _ = one(srv, decision(srv, **h))
        assert status == 403, (h, body)
        json_error(status, body)
    assert recorded(out) == []
    # the good path: the page's own origin (either loopback name it was opened by) with the token
    for h in ({"Origin": own, "Sec-Fetch-Site": "same-origin"}, {},
              {"Host": f"localhost:{srv.port}", "Origin": f"http://localhost:{srv.port}"}):
        status, _, body, _ = one(srv, decision(srv, **h))
        assert status == 200, (h, body)
    assert len(recorded(out)) == 3
    # other methods: refused after the guards; a CORS preflight is never approved
    for method in ("PUT", "DELETE", "PATCH"):
        status, _, body, _ = one(srv, request(srv, method, "/api/decision", b"{}"))
        assert status == 405, body
    status, headers, body, _ = one(srv, request(srv, "OPTIONS", "/api/decision", headers={
        "Origin": "http://127.0.0.1:1", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-review-token"}))
    assert status == 403 and "access-control-allow-origin" not in headers
    status, _, body, closed = one(srv, b"BREW /pot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 501 and closed and json.loads(body)["status"] == 501
    assert len(recorded(out)) == 3
