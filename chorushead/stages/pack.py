"""pack: cut every kept segment into 5 s windows (0.5 s stride) and write them to one LMDB.

Global stage (it sees all videos, because the train/val/test split is by video so no song lands in two
splits). One writer, on local disk. Crash safety without a second copy of the data: each video is
written as (delete its old windows) → (its windows, one transaction per segment) → (a ``__done__``
marker holding its fingerprint). A rerun trusts only videos whose marker fingerprint matches, rewrites
the others from scratch, and rebuilds the index last, so an interrupted pack resumes to exactly the
content of an uninterrupted one. The format is documented in :mod:`chorushead.core.windows`.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chorushead.core import media
from chorushead.core.manifest import Record, fingerprint
from chorushead.core.decisions import decisions as review_decisions
from chorushead.stages.base import Item, Stage
from chorushead.core.windows import (DONE_PREFIX, WINDOW_PREFIX, encode_arrays, open_env, rebuild_index, window_key,
                                write_meta)

VERSION = "1"
NEEDS = ("vad", "contiguity", "smooth", "assign")


@dataclass
class PackParams:
    window: int = 150
    stride: int = 15
    split: list[float] = field(default_factory=lambda: [0.6, 0.1, 0.3])
    seed: int = 0
    sr: int = 16000
    fps: int = 30
    include_unreviewed: bool = True
    lmdb: str = "windows.lmdb"
    map_size_gb: int = 1024        # sparse on Linux; only what is written takes disk


def assign_splits(videos: list[str], fractions: list[float], seed: int) -> dict[str, str]:
    """Deterministic split by video: order by a seeded hash, then cut at the fractions
    (largest remainder, so 1 video -> train, 3 videos -> 2/0/1 for 60/10/30)."""
    order = sorted(videos, key=lambda v: hashlib.sha1(f"{seed}:{v}".encode()).hexdigest())
    n = len(order)
    raw = [f * n for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    names = ["train"] * counts[0] + ["val"] * counts[1] + ["test"] * counts[2]
    return dict(zip(order, names))


def video_windows(out: Path, video: str, recs: dict[str, Record], p: PackParams, split: str,
                  keep: set[int]):
    """Yield (segment index, [(key, value bytes), ...]) for one video."""
    order = recs["assign"].outputs["order"]
    singers = [media.read_wav(out / recs["vad"].outputs["singers_16k"][j])[0] for j in order]
    bgm = media.read_wav(out / recs["vad"].outputs["bgm_16k"])[0]
    n_audio = int(round(p.window * p.sr / p.fps))
    segments = recs["contiguity"].outputs["segments"]
    for i, ((a, b), rel) in enumerate(zip(segments, recs["smooth"].outputs["segments"])):
        if i not in keep:
            continue
        coeffs = np.load(out / rel)["coeffs"].astype(np.float32)      # (S, b - a, 56)
        entries = []
        for s in range(a, b - p.window + 1, p.stride):
            c = coeffs[:, s - a:s - a + p.window]
            s0 = int(round(s * p.sr / p.fps))
            vox = np.stack([_take(x, s0, n_audio) for x in singers])
            arrays = {"coeffs": c, "vocals": vox.astype(np.float16), "bgm": _take(bgm, s0, n_audio).astype(np.float16),
                      "pose0": c[:, 0, 53:56].copy()}
            header = {"video": video, "segment": i, "start": s, "split": split}
            entries.append((window_key(video, i, s), encode_arrays(arrays, header)))
        yield i, entries


def _take(x: np.ndarray, start: int, n: int) -> np.ndarray:
    seg = x[start:start + n]
    return np.pad(seg, (0, n - len(seg))) if len(seg) < n else seg


def _delete_prefix(txn, prefix: bytes) -> int:
    cur, n = txn.cursor(), 0
    if cur.set_range(prefix):
        while bytes(cur.key()).startswith(prefix):
            if not cur.delete():
                break
            n += 1
    return n


def run_global(out: Path, items: list[Item], params: PackParams, latest: dict[str, dict[str, Record]],
               progress: bool = True, pipeline=None) -> list[Record]:
    from tqdm.auto import tqdm

    out = Path(out)
    decisions = review_decisions(out)
    ready = {}
    for it in sorted(items, key=lambda i: i.id):
        recs = {s: latest.get(s, {}).get(it.id) for s in NEEDS}
        if all(r is not None and r.ok for r in recs.values()):
            ready[it.id] = recs
    splits = assign_splits(list(ready), params.split, params.seed)
    env = open_env(out / params.lmdb, write=True, map_size=params.map_size_gb << 30)
    records = []
    try:
        with env.begin(write=True) as txn:
            write_meta(txn, fps=params.fps, sr=params.sr, window=params.window, stride=params.stride)
            # Videos packed before but no longer ready (failed now, removed from the build) leave the LMDB.
            stale = []
            cur = txn.cursor()
            if cur.set_range(DONE_PREFIX):
                for k in cur.iternext(values=False):
                    k = bytes(k)
                    if not k.startswith(DONE_PREFIX):
                        break
                    if k[len(DONE_PREFIX):].decode() not in ready:
                        stale.append(k[len(DONE_PREFIX):].decode())
            for v in stale:
                _delete_prefix(txn, WINDOW_PREFIX + f"{v}/".encode())
                txn.delete(DONE_PREFIX + v.encode())
        bar = tqdm(total=len(ready), desc="      pack", unit="video", disable=not progress or not ready)
        for vid, recs in ready.items():
            t0 = time.time()
            n_seg = len(recs["contiguity"].outputs["segments"])
            keep = {i for i in range(n_seg)
                    if decisions.get((vid, i)) == "accept"
                    or (decisions.get((vid, i)) is None and params.include_unreviewed)}
            fp = fingerprint("pack", VERSION, vars(params), {s: r.fingerprint for s, r in recs.items()},
                             splits[vid], sorted(keep))
            marker_key = DONE_PREFIX + vid.encode()
            with env.begin() as txn:
                marker = txn.get(marker_key)
            n_windows = 0
            if marker is not None and json.loads(marker)["fingerprint"] == fp:
                n_windows = json.loads(marker)["windows"]
                status_reused = True
            else:
                status_reused = False
                with env.begin(write=True) as txn:
                    txn.delete(marker_key)
                    _delete_prefix(txn, WINDOW_PREFIX + f"{vid}/".encode())
                for _seg, entries in video_windows(out, vid, recs, params, splits[vid], keep):
                    with env.begin(write=True) as txn:
                        for k, v in entries:
                            txn.put(k, v)
                    n_windows += len(entries)
                with env.begin(write=True) as txn:
                    txn.put(marker_key, json.dumps({"fingerprint": fp, "windows": n_windows}).encode())
            prev = latest.get("pack", {}).get(vid)
            if status_reused and prev is not None and prev.fingerprint == fp:
                bar.update(1)
                continue  # nothing new to say about this video
            records.append(Record(item=vid, stage="pack", status="done", fingerprint=fp,
                                  outputs={"lmdb": params.lmdb, "split": splits[vid], "windows": n_windows,
                                           "segments_packed": sorted(keep)},
                                  metrics={"windows": n_windows, "segments_packed": len(keep),
                                           "segments_rejected": n_seg - len(keep), "reused": status_reused},
                                  stage_version=VERSION, started=t0, seconds=round(time.time() - t0, 3)))
            bar.update(1)
        bar.close()
        with env.begin(write=True) as txn:
            rebuild_index(txn)
        env.sync(True)
    finally:
        env.close()
    return records


STAGE = Stage(name="pack", version=VERSION, params=PackParams, kind="global", run_global=run_global,
              needs=NEEDS, description="5 s windows, 0.5 s stride, split by video, one LMDB writer")
