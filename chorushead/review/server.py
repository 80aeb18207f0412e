"""`chorushead review`: a local web app to accept or reject segments, keyboard first.

Standard library only (``http.server``): one page, a JSON API and media, nothing to build or fetch.

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

import hashlib
import ipaddress
import json
import mimetypes
import os
import re
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

import numpy as np

from chorushead.core import media
from chorushead.core.manifest import Manifest, Record
from chorushead.core.decisions import DECISIONS, parse_key, record_decision, segment_key
from chorushead.review.flags import FLAG_INFO, SegmentFlags, Thresholds, flag_segment, order_by_suspicion
from chorushead.runner import load_items

STATIC = Path(__file__).resolve().parent / "static"
STAGES = ("ingest", "vad", "crop", "contiguity", "smooth", "assign", "review")
CACHE_DIR = "review_cache"
MAX_BODY = 16 << 10
CLIP_WIDTH = 640          # review clips are for eyes, not for fitting: small and quick to cut
RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)$")


# ----------------------------------------------------------------------------- reading the build
@dataclass
class Segment:
    key: str
    video: str
    index: int
    start: int                    # [start, end) in the trimmed 30 fps timeline
    end: int
    abs_start: int                # start in the full 30 fps timeline (vad start_frame + start)
    n_strips: int
    coeffs: Optional[str]         # smooth npz, relative to out
    flags: SegmentFlags = field(default_factory=SegmentFlags)

    @property
    def n_frames(self) -> int:
        return self.end - self.start


@dataclass
class Video:
    id: str
    source: Optional[str]
    fps: int
    records: dict[str, Record]    # stage -> newest ok record


class BuildView:
    """What the review needs from ``<out>``, re-read whenever a manifest changes (a build may be
    running next to the review)."""

    def __init__(self, out: Path, thresholds: Thresholds):
        self.out = Path(out).resolve()
        self.th = thresholds
        self._lock = threading.RLock()
        self._stamp: tuple = ()
        self.videos: dict[str, Video] = {}
        self.segments: dict[str, Segment] = {}
        self.order: list[str] = []
        self._npz: dict[tuple[str, int], dict[str, np.ndarray]] = {}   # (path, mtime) -> arrays
        self._wav: dict[tuple[str, int], tuple[np.ndarray, int]] = {}

    # -- refresh
    def _manifest_stamp(self) -> tuple:
        st = []
        for s in STAGES[:-1] + ("items",):
            p = self.out / ("items.json" if s == "items" else f"manifests/{s}.jsonl")
            try:
                m = p.stat()
                st.append((s, m.st_mtime_ns, m.st_size))
            except FileNotFoundError:
                st.append((s, 0, 0))
        return tuple(st)

    def refresh(self) -> None:
        with self._lock:
            stamp = self._manifest_stamp()
            if stamp == self._stamp:
                return
            self._load()
            self._stamp = stamp

    def _load(self) -> None:
        items = load_items(self.out)
        latest = {s: Manifest(self.out, s).latest() for s in STAGES[:-1]}
        videos, segments = {}, {}
        for vid in sorted(set(items) | set(latest["contiguity"])):
            recs = {s: r for s in latest if (r := latest[s].get(vid)) is not None and r.ok}
            if "contiguity" not in recs:
                continue
            ing = recs.get("ingest")
            source = (ing.outputs.get("source") if ing else None) or (items[vid].source if vid in items else None)
            fps = int((ing.outputs.get("fps") if ing else None) or self.th.fps)
            videos[vid] = Video(id=vid, source=source, fps=fps, records=recs)
            segments.update(self._video_segments(videos[vid]))
        order = order_by_suspicion([(k, s.flags) for k, s in segments.items()])
        self.videos, self.segments, self.order = videos, segments, order

    def _video_segments(self, v: Video) -> dict[str, Segment]:
        recs = v.records
        ranges = recs["contiguity"].outputs.get("segments", [])
        smooth = recs["smooth"].outputs.get("segments", []) if "smooth" in recs else []
        offset = int(recs["vad"].outputs.get("start_frame", 0)) if "vad" in recs else 0
        probs = None
        if "crop" in recs and recs["crop"].outputs.get("detections"):
            det = self.npz(recs["crop"].outputs["detections"])
            probs = det.get("probs") if det else None
        if probs is not None:
            n_strips = int(probs.shape[0])
        else:
            n_strips = len(recs["crop"].outputs.get("strips", [])) if "crop" in recs else 2
        out = {}
        for i, (a, b) in enumerate(ranges):
            rel = smooth[i] if i < len(smooth) else None
            arr = self.npz(rel) if rel else None
            coeffs = arr.get("coeffs") if arr else None
            if coeffs is not None:
                n_strips = coeffs.shape[0]
            fl = flag_segment(b - a, coeffs=coeffs, raw=arr.get("raw") if arr else None, probs=probs,
                              seg_range=(a, b), assign=recs["assign"].outputs if "assign" in recs else None,
                              segment=i, th=self.th)
            key = segment_key(v.id, i)
            out[key] = Segment(key=key, video=v.id, index=i, start=int(a), end=int(b), abs_start=offset + int(a),
                               n_strips=n_strips, coeffs=rel if coeffs is not None else None, flags=fl)
        return out

    # -- cached file reads
    def npz(self, rel: str) -> Optional[dict[str, np.ndarray]]:
        p = self.out / rel
        try:
            key = (str(p), p.stat().st_mtime_ns)
        except FileNotFoundError:
            return None
        if key not in self._npz:
            if len(self._npz) > 256:
                self._npz.clear()
            with np.load(p) as z:
                self._npz[key] = {k: z[k] for k in z.files}
        return self._npz[key]

    def wav(self, rel: str) -> Optional[tuple[np.ndarray, int]]:
        p = self.out / rel
        try:
            key = (str(p), p.stat().st_mtime_ns)
        except FileNotFoundError:
            return None
        if key not in self._wav:
            if len(self._wav) > 16:
                self._wav.clear()
            a, sr = media.read_wav(p)
            self._wav[key] = (a if a.ndim == 1 else a.mean(axis=1), sr)
        return self._wav[key]

    # -- queries
    def decisions(self) -> dict[str, dict[str, Any]]:
        """key -> {"decision", "reason", "time"} for segments with a standing accept/reject."""
        res = {}
        for key, rec in Manifest(self.out, "review").latest().items():
            d = rec.outputs.get("decision")
            if d in ("accept", "reject"):
                res[key] = {"decision": d, "reason": rec.outputs.get("reason"), "time": rec.started}
        return res

    def segment_list(self) -> list[dict[str, Any]]:
        with self._lock:   # one consistent load, even while a refresh swaps it
            self.refresh()
            dec = self.decisions()
            rows = []
            for rank, key in enumerate(self.order):
                s = self.segments[key]
                d = dec.get(key, {})
                rows.append({"key": key, "video": s.video, "index": s.index, "start": s.start, "end": s.end,
                             "frames": s.n_frames, "seconds": round(s.n_frames / self.videos[s.video].fps, 3),
                             "rank": rank, "score": s.flags.score, "flags": s.flags.flags,
                             "metrics": s.flags.metrics, "decision": d.get("decision"), "reason": d.get("reason")})
            return rows

    def summary(self) -> dict[str, Any]:
        with self._lock:   # one consistent load, even while a refresh swaps it
            self.refresh()
            dec = self.decisions()
            per: dict[str, dict[str, Any]] = {}
            zero = lambda: {"segments": 0, "reviewed": 0, "accepted": 0, "rejected": 0,  # noqa: E731
                            "hours": 0.0, "accepted_hours": 0.0, "rejected_hours": 0.0, "unreviewed_hours": 0.0}
            total = zero()
            for key, s in self.segments.items():
                h = s.n_frames / self.videos[s.video].fps / 3600
                d = dec.get(key, {}).get("decision")
                for row in (per.setdefault(s.video, zero()), total):
                    row["segments"] += 1
                    row["hours"] += h
                    if d:
                        row["reviewed"] += 1
                        row["accepted" if d == "accept" else "rejected"] += 1
                        row["accepted_hours" if d == "accept" else "rejected_hours"] += h
                    else:
                        row["unreviewed_hours"] += h
            rnd = lambda r: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}  # noqa: E731
            return {"total": rnd(total), "videos": {v: rnd(r) for v, r in sorted(per.items())}}

    def detail(self, key: str, mesh: bool) -> dict[str, Any]:
        """Everything the page draws for one segment: series per frame, waveform envelopes, URLs."""
        with self._lock:   # one consistent load, even while a refresh swaps it
            self.refresh()
            s = self.segments[key]
            v = self.videos[s.video]
            recs = v.records
            d = self.decisions().get(key, {})
            res: dict[str, Any] = {
                "key": key, "video": s.video, "index": s.index, "start": s.start, "end": s.end,
                "abs_start": s.abs_start, "frames": s.n_frames, "fps": v.fps, "n_strips": s.n_strips,
                "flags": s.flags.flags, "metrics": s.flags.metrics, "score": s.flags.score,
                "decision": d.get("decision"), "reason": d.get("reason"),
                "clip": None,
                "strips": [], "jaw": None, "jaw_raw": None, "pose": None, "audio": [], "mesh": None,
            }
            if v.source and Path(v.source).is_file():
                # the version query makes the browser drop a cached clip when the segment or source changes
                res["clip"] = f"/clip/{s.video}/{s.index}.mp4?v={ClipCache.tag(s, v)}"
            if "crop" in recs:
                for k, rel in enumerate(recs["crop"].outputs.get("strips", [])):
                    res["strips"].append({"strip": k, "base": f"/files/{rel.strip('/')}/", "first": s.start,
                                          "version": recs["crop"].fingerprint})
            if s.coeffs:
                arr = self.npz(s.coeffs) or {}
                c = np.nan_to_num(arr.get("coeffs", np.zeros((0, 0, 56))))
                raw = np.nan_to_num(arr.get("raw", c))
                res["jaw"] = _rounded(c[..., 50])
                res["jaw_raw"] = _rounded(raw[..., 50])
                res["pose"] = _rounded(np.degrees(np.moveaxis(c[..., 53:56], -1, 1)))   # (S, 3, T) degrees
                if mesh:
                    res["mesh"] = [f"/mesh/{s.video}/{s.index}/{k}/" for k in range(c.shape[0])]
            res["audio"] = self._waveforms(s, v)
            return res

    def _waveforms(self, s: Segment, v: Video) -> list[dict[str, Any]]:
        """Per strip: min/max envelope per video frame of that singer's voice track."""
        vad = v.records.get("vad")
        if vad is None:
            return []
        tracks = vad.outputs.get("singers_16k", [])
        asg = v.records.get("assign")
        order = list(asg.outputs.get("order", [])) if asg else []
        assigned = len(order) == len(tracks) and len(tracks) > 0
        order = order if assigned else list(range(len(tracks)))
        res = []
        for k, j in enumerate(order):
            w = self.wav(tracks[j])
            if w is None:
                continue
            a, sr = w
            lo, hi = _envelope(a, sr, v.fps, s.start, s.end)
            res.append({"strip": k, "track": int(j), "assigned": assigned, "min": lo, "max": hi})
        return res

    def coeffs(self, key: str, strip: int) -> np.ndarray:
        s = self.segments[key]
        arr = self.npz(s.coeffs) if s.coeffs else None
        if arr is None:
            raise KeyError(key)
        return arr["coeffs"][strip]


def _rounded(a: np.ndarray, nd: int = 4) -> list:
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def _envelope(a: np.ndarray, sr: int, fps: int, start: int, end: int) -> tuple[list, list]:
    """(min, max) of the samples under each frame of [start, end)."""
    edges = np.round(np.arange(start, end + 1) * sr / fps).astype(np.int64)
    edges = np.clip(edges, 0, len(a))
    lo, hi = np.zeros(end - start), np.zeros(end - start)
    ok = edges[1:] > edges[:-1]
    if ok.any() and len(a):
        starts = edges[:-1][ok]
        hi[ok] = np.maximum.reduceat(a, starts)[: ok.sum()]
        lo[ok] = np.minimum.reduceat(a, starts)[: ok.sum()]
    return _rounded(lo, 3), _rounded(hi, 3)


# ----------------------------------------------------------------------------- clips
class ClipCache:
    """Per-segment mp4 clips cut from the source with ffmpeg, once, under ``<out>/review_cache``.

    Re-encoded (not stream-copied) so the clip starts exactly on the segment's first frame and has a
    keyframe every half second, which keeps seeking in the browser instant.
    """

    def __init__(self, out: Path):
        self.root = Path(out) / CACHE_DIR
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip-prefetch")

    @staticmethod
    def tag(s: Segment, v: Video) -> str:
        """Changes when the source file or the segment's range does."""
        src = Path(v.source)
        st = src.stat()
        return hashlib.sha1(f"{src}:{st.st_size}:{st.st_mtime_ns}:{s.abs_start}:{s.end - s.start}:{v.fps}"
                            .encode()).hexdigest()[:10]

    def path_for(self, s: Segment, v: Video) -> Path:
        return self.root / s.video / f"seg{s.index:03d}-{self.tag(s, v)}.mp4"

    def get(self, s: Segment, v: Video) -> Path:
        path = self.path_for(s, v)
        with self._guard:
            lock = self._locks.setdefault(str(path), threading.Lock())
        with lock:                         # a second request for the same clip waits for the first
            if not path.exists():
                self._cut(Path(v.source), path, s.abs_start / v.fps, s.n_frames / v.fps, v.fps)
        return path

    def prefetch(self, s: Segment, v: Video) -> None:
        self.pool.submit(self._quiet_get, s, v)

    def _quiet_get(self, s: Segment, v: Video) -> None:
        try:
            self.get(s, v)
        except Exception:   # a prefetch failure shows up again, with its message, on the real request
            pass

    @staticmethod
    def _cut(source: Path, dest: Path, t0: float, dur: float, fps: int) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.stem}.{os.getpid()}.{threading.get_ident()}.tmp.mp4")
        cmd = [media.ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-ss", f"{t0:.6f}", "-i", str(source), "-t", f"{dur:.6f}",
               "-map", "0:v:0", "-map", "0:a:0?",
               "-vf", f"fps={fps},scale='min({CLIP_WIDTH},iw)':-2",
               "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
               "-g", str(max(1, fps // 2)), "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", str(tmp)]
        p = subprocess.run(cmd, capture_output=True)
        if p.returncode != 0 or not tmp.exists():
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"ffmpeg could not cut the clip: {p.stderr.decode(errors='replace')[-300:]}")
        os.replace(tmp, dest)


# ----------------------------------------------------------------------------- HTTP
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
    try:
        from chorushead.runner import Pipeline
        given = Pipeline.load().params.get("review", {})
    except Exception:   # no pipeline file (an installed wheel without it): defaults are fine
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
        srv.clips.pool.shutdown(wait=False, cancel_futures=True)


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
                key = self._key(parts[2], parts[3])
                return self._send_json(view.detail(key, mesh=self.server.renderer is not None), head)
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
        with self.server.decision_lock:     # appended and fsynced before we answer
            rec = record_decision(self.server.out, video, index, decision, reason.strip() if reason else None)
        return {"ok": True, "key": key, "decision": decision, "reason": rec.outputs.get("reason"),
                "summary": self.server.view.summary()}

    def _clip(self, key: str, head: bool) -> None:
        view = self.server.view
        s = view.segments[key]
        v = view.videos[s.video]
        if not v.source or not Path(v.source).is_file():
            raise HttpError(404, f"source video of {s.video} not found ({v.source})")
        path = self.server.clips.get(s, v)
        self._send_file(safe_path(self.server.out, str(path.relative_to(self.server.out))), head, cache=True)
        # Likely next: the following segment of the list. Cut it while this one plays.
        order = view.order
        i = order.index(key)
        if i + 1 < len(order):
            nxt = view.segments[order[i + 1]]
            nv = view.videos[nxt.video]
            if nv.source and Path(nv.source).is_file():
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
