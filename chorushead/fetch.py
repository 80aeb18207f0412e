"""`chorushead fetch`: a list of links becomes a folder of videos that `chorushead build --videos` builds from.

Each URL is downloaded with yt-dlp (used as a library) into the folder, under a name that cannot
collide with a user's own files: ``<title>-<8 hex of the URL's sha1>.<ext>`` (title made ASCII and
filesystem-safe by yt-dlp's ``restrictfilenames``). yt-dlp writes ``<name>.part`` and renames it when
complete, so a file with the final name is always whole; an interrupted download leaves the
``.part`` file, which the next run continues (``continuedl``) rather than restarts. Existing files are
never overwritten (``overwrites=False``) and nothing is ever deleted.

Resume: every attempt appends one line to ``<folder>/fetch.jsonl`` (format and crash safety:
:mod:`chorushead.core.origin`). A rerun skips a URL whose newest line is done while its file is still
there, without touching the network; a deleted file is fetched again and failed URLs are retried.
One broken URL never stops the others. The same lines carry each video's origin (URL, title,
uploader, licence, duration) into a build of the folder (``runner.discover``) and its dataset card.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from chorushead.core import origin
from chorushead.core.errors import MissingAsset
from chorushead.core.origin import FetchRecord

INSTALL_HINT = 'pip install -e ".[fetch]"'
# yt-dlp's own retry count for a dropped connection or a 5xx; a 404 or an unsupported page fails at once.
RETRIES = 3
SOCKET_TIMEOUT_S = 30.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ListError(ValueError):
    """The list file itself is unusable (a usage error: nothing was fetched)."""


@dataclass
class Outcome:
    """What this run did with one URL."""
    url: str
    status: str                  # done (downloaded now) | reused (done before, file still there) | failed
    file: str | None = None      # relative to the folder
    reason: str | None = None    # failed: one line
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class FetchSummary:
    folder: Path
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def lines(self) -> list[str]:
        """The closing summary: counts, then one line per failure with its reason."""
        res = [f"{self.count('done')} done, {len(self.failed)} failed, {self.count('reused')} reused "
               f"({self.folder / origin.FETCH_MANIFEST})"]
        res += [f"  FAILED {o.url}: {o.reason}" for o in self.failed]
        if self.failed:
            res.append("Rerun the same command to retry the failed ones (finished downloads are kept).")
        return res


def read_list(path: Path) -> list[str]:
    """One URL per line; blank lines and ``#`` comments (whole lines, or after the URL and a space) are
    ignored, duplicates collapsed (first occurrence kept, so the order is the file's)."""
    path = Path(path)
    if not path.is_file():
        raise ListError(f"--list {path}: no such file")
    urls: list[str] = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", line).strip()   # a URL's own '#fragment' has no space before it
        if not line:
            continue
        if len(line.split()) > 1:
            raise ListError(f"{path}:{n}: one URL per line, got {line!r}")
        if line not in urls:
            urls.append(line)
    if not urls:
        raise ListError(f"--list {path}: no URL in it (one per line; # starts a comment)")
    return urls


def url_id(url: str) -> str:
    """The stable part of a video's file name: the same URL always lands in the same file."""
    return hashlib.sha1(url.encode()).hexdigest()[:8]


def yt_dlp_version() -> str:
    return _yt_dlp().version.__version__


def _yt_dlp():
    try:
        import yt_dlp
        import yt_dlp.version  # noqa: F401
    except ImportError:
        raise MissingAsset("yt-dlp (the Python package yt_dlp)", "this Python's packages", INSTALL_HINT) from None
    return yt_dlp


class _Quiet:
    """yt-dlp's logger: silent; its errors come back as the exception we turn into the reason."""
    def debug(self, msg: str) -> None: ...
    def info(self, msg: str) -> None: ...
    def warning(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...


def _options(folder: Path, uid: str) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "paths": {"home": str(folder), "temp": str(folder)},
        "outtmpl": {"default": f"%(title).60B-{uid}.%(ext)s"},
        "restrictfilenames": True,      # ASCII, no spaces: safe in every later command line
        "overwrites": False,            # a file already there (ours, from a crash before the record) is kept
        "continuedl": True,             # a .part file is continued, not restarted
        "noplaylist": True,             # a video inside a playlist: that video only
        "retries": RETRIES, "fragment_retries": RETRIES, "socket_timeout": SOCKET_TIMEOUT_S,
        "cachedir": False,              # nothing written outside the folder
        "quiet": True, "noprogress": True, "no_warnings": True, "logger": _Quiet(),
    }
    # Sites that serve video and audio apart need ffmpeg to merge them: give yt-dlp the project's own
    # (without one it falls back to the best single-file format, often a low resolution).
    from chorushead.core.media import ffmpeg_for_tools
    if ffmpeg_for_tools():
        opts["ffmpeg_location"] = ffmpeg_for_tools()
    return opts


def reason_of(exc: BaseException) -> str:
    """yt-dlp's error as one line: without its "ERROR:" prefix, colour codes, the "(caused by ...)" repeat
    and the "please report this issue" boilerplate."""
    msg = _ANSI.sub("", str(exc)).strip()
    msg = msg.splitlines()[0] if msg else type(exc).__name__
    msg = re.sub(r"^ERROR:\s*", "", msg)
    msg = re.sub(r"\s*\(caused by .*$", "", msg)
    msg = re.sub(r";\s*please report this issue.*$", "", msg, flags=re.I)
    return " ".join(msg.split()) or type(exc).__name__


def _download(url: str, folder: Path, version: str) -> FetchRecord:
    """One URL: its record, done or failed (never raises but for KeyboardInterrupt and the like)."""
    yt_dlp = _yt_dlp()
    rec = FetchRecord(url=url, status="failed", yt_dlp=version, at=time.time())
    try:
        with yt_dlp.YoutubeDL(_options(folder, url_id(url))) as ydl:
            # Resolve first, download second: a playlist is refused before any of its videos is fetched.
            ie = ydl.extract_info(url, download=False, process=False)
            if ie.get("_type") in ("playlist", "multi_video"):
                rec.reason = (f"a playlist ({len(list(ie.get('entries') or []))} entries), not one video: "
                              "list its videos' URLs one per line")
                return rec
            info = ydl.process_ie_result(ie, download=True)
        downloads = info.get("requested_downloads") or []
        path = Path(downloads[0]["filepath"]) if downloads and downloads[0].get("filepath") else None
        if path is None or not path.is_file():
            rec.reason = "yt-dlp reported no file (nothing downloadable at this URL?)"
            return rec
        duration = info.get("duration")
        rec.status, rec.file, rec.bytes = "done", os.path.relpath(path, folder), path.stat().st_size
        rec.title, rec.uploader, rec.license = info.get("title"), info.get("uploader"), info.get("license")
        rec.duration = float(duration) if duration is not None else None
        rec.extractor = info.get("extractor")
    except Exception as e:   # yt-dlp's DownloadError, a full disk, ...: this URL fails, the batch goes on
        rec.reason = reason_of(e)
    return rec


class _Lock:
    """One fetch per folder at a time: flock on fetch.jsonl itself (released by the OS if we die)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / origin.FETCH_MANIFEST
        self.fd: int | None = None

    def __enter__(self) -> "_Lock":
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RuntimeError(f"another `chorushead fetch` is writing into {self.path.parent}; wait for it") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)   # closing drops the lock


def fetch_all(urls: list[str], folder: Path, log: Callable[[str], None] = print) -> FetchSummary:
    """Download ``urls`` into ``folder`` (see the module docstring); one progress line per URL."""
    version = yt_dlp_version()      # MissingAsset before anything is created
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ListError(f"--out {folder}: not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    summary = FetchSummary(folder)
    with _Lock(folder):
        known = origin.read(folder)
        for i, url in enumerate(urls, 1):
            prev = known.get(url)
            if prev is not None and prev.status == "done" and prev.file and (folder / prev.file).is_file():
                out = Outcome(url, "reused", prev.file, bytes=(folder / prev.file).stat().st_size)
            else:
                t0 = time.monotonic()
                rec = _download(url, folder, version)
                origin.append(folder, rec)
                out = Outcome(url, rec.status, rec.file, rec.reason, rec.bytes or 0, time.monotonic() - t0)
            summary.outcomes.append(out)
            log(f"[{i}/{len(urls)}] {_line(out)}")
    return summary


def _line(o: Outcome) -> str:
    if o.status == "failed":
        return f"failed  {o.url}: {o.reason}"
    size = f"{o.bytes / 1e6:.1f} MB"
    if o.status == "reused":
        return f"reused  {o.url} -> {o.file} ({size}, already here)"
    rate = f", {o.bytes / 1e6 / o.seconds:.1f} MB/s" if o.seconds > 0 else ""
    return f"done    {o.url} -> {o.file} ({size} in {o.seconds:.1f} s{rate})"


def fetch_list(list_file: Path, folder: Path, log: Callable[[str], None] = print) -> FetchSummary:
    """`chorushead fetch --list list_file --out folder`."""
    return fetch_all(read_list(list_file), folder, log)
