"""`chorushead review`: a local web app to accept or reject segments, keyboard first.

Standard library only (``http.server``): one page, a JSON API and media, nothing to build or fetch.
This module is the HTTP side (routes, guards, responses, the server); what the build contains is
:mod:`chorushead.review.view`, the cut clips are :mod:`chorushead.review.clips`.

Routes
  GET  /                               the page (static/index.html; /static/* for its js and css)
  GET  /api/segments                   every segment with flags, score and decision, most suspicious first
  GET  /api/segment/<video>/<i>        one segment's plots (jaw, pose, voice waveforms) and media URLs
  GET  /api/summary                    reviewed / accepted / rejected counts and hours, per video
  GET  /api/unmatched                  decisions whose frames no segment covers now (core/decisions.py)
  POST /api/decision                   {"key": "<video>:<i>", "decision": "accept|reject|undo", "reason",
                                        "frames": [start, end] (optional: the frames the page showed)}
  GET  /clip/<video>/<i>.mp4           the segment cut from the source video (made once, cached)
  GET  /files/<path>                   any file inside the output folder (strip crops), Range-capable
  GET  /mesh/<video>/<i>/<strip>/<f>.png  a rendered mesh frame (FLAME with --flame, or the open head)

Safety: binds 127.0.0.1 unless told otherwise, and refuses a non-loopback address without
``allow_remote``. Files are served only from inside the output folder (and the page's own static
folder): every path is resolved (symlinks too) and must stay inside. The only write is a decision,
appended to ``<out>/manifests/review.jsonl`` through :func:`record_decision` before the reply, so a
browser or server crash loses nothing. (Clips cached under ``<out>/review_cache/`` are derived data.)

Another web site open in the same browser (or another local program's page) must not record decisions:

- On a loopback bind the Host header must name the loopback address (no DNS rebinding).
- Every state-changing request (anything but GET/HEAD) must carry ``X-Review-Token``: a random token made
  when the server starts and written into the page (a ``<meta name="review-token">`` of index.html, which
  a page of another origin cannot read). A custom header also forces a CORS preflight, which this server
  never approves. An ``Origin`` header, when sent, must be the page's own origin (``http://<Host>``), and
  ``Sec-Fetch-Site``, when sent, must say same-origin. A decision must be ``application/json``.
- Request framing cannot be abused to smuggle a request: a response to a request whose body was not
  read in full (refused before reading, a malformed or oversized Content-Length, any Transfer-Encoding)
  closes the connection, so the unread body is never parsed as the next request. Reads time out
  (``ReviewServer.read_timeout``), so a slow or stalled client cannot hold a thread forever.
- Malformed input (numbers, keys, JSON) is a 4xx with a one-line JSON error, never a 500.
"""
from __future__ import annotations

import ipaddress
import json
import mimetypes
import os
import re
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

from chorushead.core.decisions import DECISIONS, parse_key, record_decision, segment_key
from chorushead.review.clips import ClipCache, has_source
from chorushead.review.flags import FLAG_INFO, Thresholds
from chorushead.review.view import BuildView

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 16 << 10
# ASCII digits only (\d would take any script's digits), and few enough that int() is cheap and safe
RANGE_RE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})$")  # longer numbers: not a range we can serve
INDEX_RE = re.compile(r"[0-9]{1,9}")                         # a segment, strip or frame number in a path
KEY_RE = re.compile(r"(.{1,256}):([0-9]{1,9})", re.S)        # "<video>:<segment index>"
LENGTH_RE = re.compile(r"[0-9]{1,12}")
TOKEN_HEADER = "X-Review-Token"
TOKEN_META = '<meta name="review-token" content="">'
DECISION_FIELDS = {"key", "decision", "reason", "frames"}
LINGER_BYTES = 1 << 20      # after refusing a body: read and drop up to this much before closing
LINGER_SECONDS = 1.0


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def safe_path(root: Path, rel: str) -> Path:
    """``root/rel`` resolved (symlinks too); 403 if it leaves ``root``, 404 if it is not a file."""
    rel = unquote(rel)
    if "\x00" in rel:
        raise HttpError(400, "bad path")
    p = (root / rel.lstrip("/")).resolve()
    if not p.is_relative_to(root.resolve()):
        raise HttpError(403, "outside the output folder")
    if not p.is_file():
        raise HttpError(404, "no such file")
    return p


def parse_range(header: Optional[str], size: int) -> Optional[tuple[int, int]]:
    """One byte range [first, last] from a Range header; None = whole file. Raises 416 if unsatisfiable.
    Multiple ranges are answered with the whole file (allowed by RFC 9110)."""
    if not header:
        return None
    m = RANGE_RE.match(header.strip())
    if not m:
        return None
    a, b = m.groups()
    if a == "" and b == "":
        return None
    if a == "":                              # suffix: the last b bytes
        n = int(b)
        if n == 0:
            raise HttpError(416, "empty suffix range")
        return max(0, size - n), size - 1
    first = int(a)
    last = min(int(b), size - 1) if b else size - 1
    if first >= size or last < first:
        raise HttpError(416, "range not satisfiable")
    return first, last


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    try:
        return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)
    except ValueError:
        return False


class ReviewServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, out: Path, host: str, port: int, allow_remote: bool = False,
                 renderer: Any = None, thresholds: Thresholds | None = None):
        self.out = Path(out).resolve()
        self.view = BuildView(self.out, thresholds or Thresholds())
        self.clips = ClipCache(self.out)
        self.renderer = renderer
        self.allow_remote = allow_remote
        self.decision_lock = threading.Lock()
        self.host = host
        self.token = secrets.token_urlsafe(32)     # this run's: state-changing requests must carry it
        self.read_timeout = 60.0                   # seconds a read from a client may wait (idle, slow body)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        self.address_family = infos[0][0]
        super().__init__(infos[0][4][:2], ReviewHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        h = self.host
        if h in ("0.0.0.0", "::", ""):     # all interfaces (--allow-remote): name this machine instead
            h = socket.gethostname()
        h = h if ":" not in h else f"[{h}]"
        return f"http://{h}:{self.port}/"

    def allowed_hosts(self) -> set[str]:
        names = {"127.0.0.1", "localhost", "[::1]", self.host, f"[{self.host}]"}
        return {f"{n}:{self.port}" for n in names} | names


def make_server(out: str | Path, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False,
                flame_dir: str | Path | None = None, thresholds: Thresholds | None = None) -> ReviewServer:
    """Build (not start) the server. Raises ValueError for a refused bind or a folder that is not a build."""
    out = Path(out)
    if not out.is_dir() or not ((out / "items.json").exists() or (out / "manifests").is_dir()):
        raise ValueError(f"{out} is not a build output folder (no items.json or manifests/); "
                         f"pass the folder given to `chorushead build --out`.")
    if not allow_remote and not is_loopback(host):
        raise ValueError(f"refusing to bind {host!r}: it is not a loopback address, and the review app has no "
                         "login. Use --allow-remote to serve it on your network anyway (anyone who can reach "
                         "the port can then see the videos and record decisions), or tunnel: "
                         "ssh -L 8765:127.0.0.1:8765 <host>.")
    renderer = None
    if flame_dir is not None:
        try:
            from chorushead.review.render import MeshRenderer
            renderer = MeshRenderer.from_dir(flame_dir)
        except Exception as e:  # meshes are optional: say why they are off, keep the plots
            print(f"Mesh rendering off ({type(e).__name__}: {e}); showing plots only.", flush=True)
    return ReviewServer(out, host, port, allow_remote=allow_remote, renderer=renderer, thresholds=thresholds)


def pipeline_thresholds(out: str | Path | None = None) -> Thresholds:
    """Flag thresholds from the ``[stages.review]`` table of build ``out``'s own pipeline (the one its last
    build ran with, ``<out>/pipeline.json``; else the default file), else the defaults. Unknown names
    are refused (ValueError), as everywhere in a pipeline."""
    from chorushead.runner import Pipeline, default_pipeline_path
    try:
        pipeline, where = (Pipeline.for_build(Path(out)) if out is not None
                           else (Pipeline.load(), str(default_pipeline_path())))
    except FileNotFoundError:   # no pipeline file at all: defaults are fine (a broken one is an error)
        return Thresholds()
    given = pipeline.params.get("review", {})
    names = set(Thresholds.__dataclass_fields__)
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"{where}: unknown [stages.review] threshold(s) {unknown}; known: {sorted(names)}")
    return Thresholds(**given)


def default_mesh(out: str | Path) -> str | None:
    """The mesh review draws without --flame: the open head when every fit of the build is the landmark
    fit's (its expression is the open head's), else none (EMOCA's is FLAME's: --flame DIR)."""
    from chorushead.core.manifest import iter_records
    from chorushead.core.openhead import FIT_BACKENDS, NAME
    fits = iter_records(Path(out), ["fit"]).get("fit", {}).values()
    backends = {r.outputs.get("backend") for r in fits if r.ok}
    return NAME if backends and backends <= set(FIT_BACKENDS) else None   # the rule pachorus uses too


def serve(out: str | Path, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False,
          flame_dir: str | Path | None = None) -> None:
    """Run the review app until Ctrl-C. Port 0 picks a free port; the URL is printed either way.
    Without ``flame_dir`` a landmark-fitted build shows the open head (:func:`default_mesh`)."""
    if flame_dir is None:
        flame_dir = default_mesh(out)
    try:
        srv = make_server(out, host, port, allow_remote, flame_dir, thresholds=pipeline_thresholds(out))
    except ValueError as e:
        raise SystemExit(f"chorushead review: {e}")
    except OSError as e:
        raise SystemExit(f"chorushead review: cannot listen on {host}:{port} ({e.strerror or e}); "
                         f"is another review running? Try --port 0 for a free port.")
    srv.view.refresh()
    n = len(srv.view.segments)
    print(f"Reviewing {n} segments of {len(srv.view.videos)} videos in {srv.out}", flush=True)
    if n == 0:
        print("No segments yet: the review needs the contiguity stage's output (plots need smooth).", flush=True)
    print(f"Open {srv.url}  (Ctrl-C to stop)", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        srv.clips.close()


class ReviewHandler(BaseHTTPRequestHandler):
    server: ReviewServer
    protocol_version = "HTTP/1.1"
    server_version = "chorushead-review"

    def log_message(self, fmt: str, *args: Any) -> None:   # keep the terminal for the URL and errors
        if os.environ.get("CHORUSHEAD_REVIEW_LOG"):
            super().log_message(fmt, *args)

    # -- connection and framing
    def setup(self) -> None:
        self.timeout = self.server.read_timeout      # every read (next request, body) and write waits this long
        super().setup()

    def handle_one_request(self) -> None:
        self._body_read = False        # per request: was the body (Content-Length bytes) read in full?
        self._headers_sent = False     # has a response started (then an error can only close)?
        self._linger = False           # drain what the client still sends before closing?
        super().handle_one_request()

    def handle_expect_100(self) -> bool:
        # http.server's own version goes through end_headers, which would count it as the response.
        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _declared_length(self) -> Optional[int]:
        """The body length the headers declare: 0 without a body, None when the framing is anything we do
        not read (Transfer-Encoding, a malformed, repeated or absurd Content-Length)."""
        h = getattr(self, "headers", None)
        if h is None:
            return 0
        if h.get("Transfer-Encoding") is not None:
            return None
        given = h.get_all("Content-Length") or []
        if not given:
            return 0
        if len(given) > 1 or not LENGTH_RE.fullmatch(given[0].strip()):
            return None
        return int(given[0].strip())

    def _body_unread(self) -> bool:
        if getattr(self, "_body_read", False):
            return False
        n = self._declared_length()
        return n is None or n > 0

    def end_headers(self) -> None:
        # A body left in the stream would be parsed as the next request (request smuggling): close instead.
        if self._body_unread():
            if not self.close_connection:
                self.send_header("Connection", "close")     # (sets close_connection)
            self._linger = True
        self._headers_sent = True
        super().end_headers()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if getattr(self, "_linger", False):
                self._drain_before_close()

    def _drain_before_close(self) -> None:
        """Closing a socket with unread data makes the kernel send a reset, which can destroy the response
        before the client reads it. Say we are done, then read and drop what the client still sends, for
        a bounded time and amount."""
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            got = 0
            while got < LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                chunk = sock.recv(64 << 10)
                if not chunk:
                    break
                got += len(chunk)
        except OSError:
            pass

    def _read_body(self) -> bytes:
        """The request body (at most MAX_BODY bytes), read in full within ``read_timeout`` seconds."""
        n = self._declared_length()
        if n is None:
            raise HttpError(400, "unsupported body framing: send one numeric Content-Length, no Transfer-Encoding")
        if n == 0:
            raise HttpError(411 if self.headers.get("Content-Length") is None else 400, "missing body")
        if n > MAX_BODY:
            raise HttpError(413, f"body larger than {MAX_BODY} bytes")
        deadline = time.monotonic() + self.server.read_timeout
        chunks, left = [], n
        while left > 0:
            if time.monotonic() > deadline:
                raise HttpError(408, "the request body came too slowly")
            try:
                chunk = self.rfile.read1(left)
            except (TimeoutError, socket.timeout):
                raise HttpError(408, "the request body came too slowly")
            if not chunk:
                raise HttpError(400, "the body ended before its Content-Length")
            chunks.append(chunk)
            left -= len(chunk)
        self._body_read = True
        return b"".join(chunks)

    # -- dispatch
    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_POST(self) -> None:
        self._change(lambda path: self._post_decision() if path == "/api/decision" else None)

    def do_PUT(self) -> None:
        self._change(lambda path: None)

    def do_DELETE(self) -> None:
        self._change(lambda path: None)

    def do_PATCH(self) -> None:
        self._change(lambda path: None)

    def do_OPTIONS(self) -> None:
        # A CORS preflight (another origin asking to send a custom header or JSON): never approved.
        self._send_error(403, "cross-origin requests are not allowed")

    def _change(self, endpoint: Any) -> None:
        """A state-changing request: guards first (nothing of the body is read before they pass)."""
        try:
            self._check_host()
            self._check_origin()
            self._check_token()
            path = urlsplit(self.path).path
            res = endpoint(path)
            if res is None:
                if self.command == "POST":
                    raise HttpError(404, "no such endpoint")
                raise HttpError(405, f"{self.command} is not supported")
            self._send_json(res)
        except HttpError as e:
            self._send_error(e.status, e.message)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # never leave the browser hanging
            self._send_error(500, f"{type(e).__name__}: {e}")

    def _dispatch(self, head: bool) -> None:
        try:
            self._check_host()
            path = urlsplit(self.path).path
            parts = [p for p in path.split("/") if p]
            if path in ("/", "/index.html"):
                return self._send_page(head)
            if parts[:1] == ["static"] and len(parts) == 2:
                return self._send_file(safe_path(STATIC, parts[1]), head, cache=False)
            if path == "/favicon.ico":
                raise HttpError(404, "no icon")
            if parts[:1] == ["files"]:
                return self._send_file(safe_path(self.server.out, path[len("/files/"):]), head, cache=True)
            view = self.server.view
            if parts == ["api", "segments"]:
                return self._send_json({"segments": view.segment_list(), "flag_info": FLAG_INFO,
                                        "mesh": self.server.renderer is not None}, head)
            if parts == ["api", "summary"]:
                return self._send_json(view.summary(), head)
            if parts == ["api", "unmatched"]:
                return self._send_json({"unmatched": self._unmatched()}, head)
            if parts[:2] == ["api", "segment"] and len(parts) == 4:
                return self._send_json(self._detail(self._key(parts[2], parts[3])), head)
            if parts[:1] == ["clip"] and len(parts) == 3 and parts[2].endswith(".mp4"):
                return self._clip(self._key(parts[1], parts[2][:-4]), head)
            if parts[:1] == ["mesh"] and len(parts) == 5 and parts[4].endswith(".png"):
                return self._mesh(self._key(parts[1], parts[2]), parts[3], parts[4][:-4], head)
            raise HttpError(404, "no such page")
        except HttpError as e:
            self._send_error(e.status, e.message, head)
        except KeyError as e:      # the build changed under us and the segment went away
            self._send_error(404, f"no longer in the build: {e}", head)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, socket.timeout):
            self.close_connection = True   # the browser moved on (seeking cancels media requests all the time)
        except Exception as e:
            self._send_error(500, f"{type(e).__name__}: {e}", head)

    # -- guards
    def _check_host(self) -> None:
        if self.server.allow_remote:
            return
        host = (self.headers.get("Host") or "").lower()
        if host not in self.server.allowed_hosts():
            raise HttpError(403, f"unexpected Host header {host[:100]!r}")

    def _check_origin(self) -> None:
        """A browser names the page that sent a request: it must be this app's own page."""
        origin = self.headers.get("Origin")
        if origin is not None:
            own = "http://" + (self.headers.get("Host") or "").lower()
            if origin.strip().lower() != own:
                raise HttpError(403, f"request from another origin ({origin[:100]!r}) refused")
        site = (self.headers.get("Sec-Fetch-Site") or "").strip().lower()
        if site and site not in ("same-origin", "none"):
            raise HttpError(403, f"request from another site (Sec-Fetch-Site: {site[:30]}) refused")

    def _check_token(self) -> None:
        given = self.headers.get(TOKEN_HEADER)
        if not given:
            raise HttpError(403, f"missing {TOKEN_HEADER} (reload the review page)")
        if not secrets.compare_digest(given.strip().encode("latin-1", "replace"),
                                      self.server.token.encode("ascii")):
            raise HttpError(403, f"wrong {TOKEN_HEADER} (the server was restarted? reload the review page)")

    def _key(self, video: str, index: str) -> str:
        self.server.view.refresh()
        if not INDEX_RE.fullmatch(index):
            raise HttpError(404, "no such segment")
        key = segment_key(unquote(video), int(index))
        if key not in self.server.view.segments:
            raise HttpError(404, f"no segment {key[:300]}")
        return key

    # -- endpoints
    def _post_decision(self) -> dict[str, Any]:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, "send JSON (Content-Type: application/json)")
        raw = self._read_body()
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise HttpError(400, "body is not JSON")
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        unknown = sorted(set(body) - DECISION_FIELDS)
        if unknown:
            raise HttpError(400, f"unknown field(s): {', '.join(repr(u[:40]) for u in unknown[:5])}")
        decision = body.get("decision")
        if not isinstance(decision, str) or decision not in DECISIONS:
            raise HttpError(400, f"decision must be one of {', '.join(DECISIONS)}")
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
            raise HttpError(400, "reason must be a string of at most 1000 characters")
        reason = reason.strip() if reason else None
        given_key = body.get("key")
        m = KEY_RE.fullmatch(given_key) if isinstance(given_key, str) else None
        if m is None:
            raise HttpError(400, "key must be '<video>:<segment index>'")
        video, index = parse_key(given_key)
        key = self._key(video, m.group(2))
        frames = self.server.view.segments[key].frames     # what the reviewer saw: the decision's scope
        seen = body.get("frames")
        if seen is not None:
            if (not isinstance(seen, list) or len(seen) != 2
                    or not all(isinstance(f, int) and not isinstance(f, bool) and 0 <= f < 1 << 40 for f in seen)):
                raise HttpError(400, "frames must be [start, end], two whole numbers")
            if tuple(seen) != tuple(frames):
                raise HttpError(409, f"{key} now covers frames {frames[0]}-{frames[1]}, not the {seen[0]}-{seen[1]} "
                                     "shown: the build changed; reload the page")
        with self.server.decision_lock:     # appended and fsynced before we answer
            rec = record_decision(self.server.out, video, index, decision, reason or None, frames,
                                  segmentation=self.server.view.segmentation(video))
        return {"ok": True, "key": key, "decision": decision, "reason": rec.outputs.get("reason"),
                "frames": list(frames), "summary": self.server.view.summary()}

    def _unmatched(self) -> list[dict[str, Any]]:
        """view.unmatched() rows plus their seconds (frames / the video's fps) for the page."""
        view = self.server.view
        rows = view.unmatched()
        videos = view.videos
        for r in rows:
            v = videos.get(r["video"])
            fps = v.fps if v is not None else self.server.view.th.fps
            r["fps"] = fps
            r["seconds"] = [round(r["frames"][0] / fps, 3), round(r["frames"][1] / fps, 3)]
        return rows

    def _detail(self, key: str) -> dict[str, Any]:
        view = self.server.view
        res = view.detail(key, mesh=self.server.renderer is not None)
        s = view.segments[key]
        res["clip"] = self.server.clips.url(s, view.videos[s.video])
        return res

    def _clip(self, key: str, head: bool) -> None:
        view = self.server.view
        s = view.segments[key]
        v = view.videos[s.video]
        if not has_source(v):
            raise HttpError(404, f"source video of {s.video} not found ({v.source})")
        path = self.server.clips.get(s, v)
        self._send_file(safe_path(self.server.out, str(path.relative_to(self.server.out))), head, cache=True)
        # Likely next: the following segment of the list. Cut it while this one plays.
        order = view.order
        i = order.index(key)
        if i + 1 < len(order):
            nxt = view.segments[order[i + 1]]
            nv = view.videos[nxt.video]
            if has_source(nv):
                self.server.clips.prefetch(nxt, nv)

    def _mesh(self, key: str, strip: str, frame: str, head: bool) -> None:
        r = self.server.renderer
        s = self.server.view.segments[key]
        if r is None or s.coeffs is None:
            raise HttpError(404, "mesh rendering is off (start with --flame DIR or --flame open) or the segment has no fit")
        if not INDEX_RE.fullmatch(strip) or not INDEX_RE.fullmatch(frame) or int(strip) >= s.n_strips:
            raise HttpError(404, "no such mesh frame")
        k = int(strip)
        png = r.frame_png((key, k, s.coeffs), int(frame), lambda: self.server.view.coeffs(key, k))
        self._send_bytes(png, "image/png", head, cache=True)

    # -- responses
    def _send_page(self, head: bool) -> None:
        """index.html with this run's token in it (a page of another origin cannot read it)."""
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        if TOKEN_META not in html:
            raise HttpError(500, f"index.html lacks {TOKEN_META}")
        html = html.replace(TOKEN_META, f'<meta name="review-token" content="{self.server.token}">')
        self._send_bytes(html.encode("utf-8"), "text/html; charset=utf-8", head, cache=False,
                         extra={"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                                "Referrer-Policy": "no-referrer"})

    def _send_json(self, obj: Any, head: bool = False) -> None:
        data = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
        self._send_bytes(data, "application/json", head, cache=False)

    def _send_bytes(self, data: bytes, ctype: str, head: bool, cache: bool, status: int = 200,
                    extra: Optional[dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _send_error(self, status: int, message: str, head: bool = False) -> None:
        """A short JSON error. Closes the connection when the request's body was not read (end_headers)."""
        if getattr(self, "_headers_sent", False):    # failed halfway through a response: all we can do is close
            self.close_connection = True
            return
        try:
            data = json.dumps({"error": message[:500], "status": status}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if not head:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, socket.timeout):
            self.close_connection = True

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own refusals (bad request line, headers too long, unsupported method): JSON, and the
        connection closes (the request could not be framed, so nothing after it can be trusted)."""
        self.close_connection = True
        if getattr(self, "_headers_sent", False):
            return
        text = message or self.responses.get(code, ("error",))[0]
        try:
            data = json.dumps({"error": str(text)[:500], "status": code}).encode()
            self.send_response(code)
            self.send_header("Connection", "close")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, socket.timeout):
            pass

    def _send_file(self, path: Path, head: bool, cache: bool) -> None:
        size = path.stat().st_size
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "text/javascript"):
            ctype += "; charset=utf-8"
        try:
            rng = parse_range(self.headers.get("Range"), size)
        except HttpError:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = rng if rng else (0, size - 1)
        length = max(0, last - first + 1)
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", ctype)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if rng:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if head or length == 0:
            return
        with open(path, "rb") as f:
            f.seek(first)
            left = length
            while left > 0:
                chunk = f.read(min(left, 256 << 10))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

