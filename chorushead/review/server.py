"""`chorushead review`: a local web app to accept or reject segments, keyboard first.

Standard library only (``http.server``): one page, a JSON API and media, nothing to build or fetch.
This module is the HTTP side (routes, guards, responses, the server); what the build contains is
:mod:`chorushead.review.view`, the cut clips are :mod:`chorushead.review.clips`.

Routes
  GET  /                               the page (static/index.html; /static/* for its js and css)
  GET  /api/segments                   every segment with flags, score and decision, most suspicious first
  GET  /api/segment/<video>/<i>        one segment's plots (jaw, pose, voice waveforms) and media URLs
  GET  /api/summary                    reviewed / accepted / rejected counts and hours, per video
  POST /api/decision                   {"key": "<video>:<i>", "decision": "accept|reject|undo", "reason"}
  GET  /clip/<video>/<i>.mp4           the segment cut from the source video (made once, cached)
  GET  /files/<path>                   any file inside the output folder (strip crops), Range-capable
  GET  /mesh/<video>/<i>/<strip>/<f>.png  a rendered FLAME frame (only with --flame)

Safety: binds 127.0.0.1 unless told otherwise, and refuses a non-loopback address without
``allow_remote``. Files are served only from inside the output folder (and the page's own static
folder): every path is resolved (symlinks too) and must stay inside. The only write is a decision,
appended to ``<out>/manifests/review.jsonl`` through :func:`record_decision` before the reply, so a
browser or server crash loses nothing. (Clips cached under ``<out>/review_cache/`` are derived data.)
A POST must be JSON, and on a loopback bind the Host header must name the loopback address, so
another web site open in the same browser can neither post decisions (no CORS) nor reach the API
through DNS rebinding.
"""
from __future__ import annotations

import ipaddress
import json
import mimetypes
import os
import re
import socket
import threading
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
RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)$")


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


def pipeline_thresholds() -> Thresholds:
    """Flag thresholds from the pipeline file's optional ``[stages.review]`` table, else the defaults."""
    from chorushead.runner import Pipeline
    try:
        given = Pipeline.load().params.get("review", {})
    except FileNotFoundError:   # no pipeline file at all: defaults are fine (a broken one is an error)
        return Thresholds()
    known = {k: v for k, v in given.items() if k in Thresholds.__dataclass_fields__}
    return Thresholds(**known)


def serve(out: str | Path, host: str = "127.0.0.1", port: int = 8765, allow_remote: bool = False,
          flame_dir: str | Path | None = None) -> None:
    """Run the review app until Ctrl-C. Port 0 picks a free port; the URL is printed either way."""
    try:
        srv = make_server(out, host, port, allow_remote, flame_dir, thresholds=pipeline_thresholds())
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

    # -- dispatch
    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_POST(self) -> None:
        try:
            self._check_host()
            path = urlsplit(self.path).path
            if path != "/api/decision":
                raise HttpError(404, "no such endpoint")
            self._send_json(self._post_decision())
        except HttpError as e:
            self._send_error(e.status, e.message)
        except Exception as e:  # never leave the browser hanging
            self._send_error(500, f"{type(e).__name__}: {e}")

    def _dispatch(self, head: bool) -> None:
        try:
            self._check_host()
            path = urlsplit(self.path).path
            parts = [p for p in path.split("/") if p]
            if path in ("/", "/index.html"):
                return self._send_file(STATIC / "index.html", head, cache=False)
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
        except (BrokenPipeError, ConnectionResetError):
            pass   # the browser moved on (seeking cancels media requests all the time)
        except Exception as e:
            self._send_error(500, f"{type(e).__name__}: {e}", head)

    # -- guards
    def _check_host(self) -> None:
        if self.server.allow_remote:
            return
        host = (self.headers.get("Host") or "").lower()
        if host not in self.server.allowed_hosts():
            raise HttpError(403, f"unexpected Host header {host!r}")

    def _key(self, video: str, index: str) -> str:
        self.server.view.refresh()
        if not index.isdigit():
            raise HttpError(404, "no such segment")
        key = segment_key(unquote(video), int(index))
        if key not in self.server.view.segments:
            raise HttpError(404, f"no segment {key}")
        return key

    # -- endpoints
    def _post_decision(self) -> dict[str, Any]:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, "send JSON (Content-Type: application/json)")
        n = int(self.headers.get("Content-Length") or 0)
        if n <= 0 or n > MAX_BODY:
            raise HttpError(400, "missing or oversized body")
        try:
            body = json.loads(self.rfile.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HttpError(400, "body is not JSON")
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        decision = body.get("decision")
        if decision not in DECISIONS:
            raise HttpError(400, f"decision must be one of {', '.join(DECISIONS)}")
        reason = body.get("reason") or None
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
            raise HttpError(400, "reason must be a string of at most 1000 characters")
        try:
            video, index = parse_key(str(body.get("key", "")))
        except ValueError:
            raise HttpError(400, "key must be '<video>:<segment index>'")
        key = self._key(video, str(index))
        frames = self.server.view.segments[key].frames     # what the reviewer saw: the decision's scope
        with self.server.decision_lock:     # appended and fsynced before we answer
            rec = record_decision(self.server.out, video, index, decision, reason.strip() if reason else None,
                                  frames)
        return {"ok": True, "key": key, "decision": decision, "reason": rec.outputs.get("reason"),
                "summary": self.server.view.summary()}

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
            raise HttpError(404, "mesh rendering is off (start with --flame DIR) or the segment has no fit")
        if not strip.isdigit() or not frame.isdigit() or int(strip) >= s.n_strips:
            raise HttpError(404, "no such mesh frame")
        k = int(strip)
        png = r.frame_png((key, k, s.coeffs), int(frame), lambda: self.server.view.coeffs(key, k))
        self._send_bytes(png, "image/png", head, cache=True)

    # -- responses
    def _send_json(self, obj: Any, head: bool = False) -> None:
        data = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
        self._send_bytes(data, "application/json", head, cache=False)

    def _send_bytes(self, data: bytes, ctype: str, head: bool, cache: bool, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _send_error(self, status: int, message: str, head: bool = False) -> None:
        try:
            data = json.dumps({"error": message, "status": status}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
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

