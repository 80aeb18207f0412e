"""The review's clip cache: each segment cut from its source video once, under ``<out>/review_cache``.

Clips are derived data (safe to delete). The cut itself is :func:`chorushead.core.media.cut_clip`.
"""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from chorushead.core import media
from chorushead.review.view import Segment, Video

CACHE_DIR = "review_cache"
CLIP_WIDTH = 640          # review clips are for eyes, not for fitting: small and quick to cut


def has_source(v: Video) -> bool:
    return bool(v.source) and Path(v.source).is_file()


class ClipCache:
    """Cuts, stores and prefetches per-segment mp4 clips; a clip's name changes with its source and range."""

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

    def url(self, s: Segment, v: Video) -> Optional[str]:
        """The clip's URL, or None without a readable source. The version query makes the browser drop
        a cached clip when the segment or the source changes."""
        return f"/clip/{s.video}/{s.index}.mp4?v={self.tag(s, v)}" if has_source(v) else None

    def path_for(self, s: Segment, v: Video) -> Path:
        return self.root / s.video / f"seg{s.index:03d}-{self.tag(s, v)}.mp4"

    def get(self, s: Segment, v: Video) -> Path:
        path = self.path_for(s, v)
        with self._guard:
            lock = self._locks.setdefault(str(path), threading.Lock())
        with lock:                         # a second request for the same clip waits for the first
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                # cut beside the final name, then rename: a half-written clip is never served
                tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.mp4")
                try:
                    media.cut_clip(v.source, tmp, s.abs_start / v.fps, s.n_frames / v.fps, v.fps,
                                   max_width=CLIP_WIDTH)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
        return path

    def prefetch(self, s: Segment, v: Video) -> None:
        self.pool.submit(self._quiet_get, s, v)

    def _quiet_get(self, s: Segment, v: Video) -> None:
        try:
            self.get(s, v)
        except Exception:   # a prefetch failure shows up again, with its message, on the real request
            pass

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
