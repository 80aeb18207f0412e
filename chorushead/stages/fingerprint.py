"""fingerprint: an audio fingerprint and perceptual frame hashes per video, so pack can keep duplicates
(a re-upload, the same performance from two channels) in one split.

Why these tools:

- **Audio: Chromaprint's ``fpcalc``** (Debian ``libchromaprint-tools``; AcoustID's fingerprinter). Its
  raw fingerprint is one 32-bit sub-fingerprint per ~0.124 s, each bit the sign of a filtered chroma
  feature, so it survives re-encoding (other codec/bitrate), volume changes and resampling, and a trim
  only shifts it. Two fingerprints are compared by the **bit-error rate** (fraction of differing bits) of
  the aligned sub-fingerprints at the best offset (:func:`audio_score`): ~0.5 for unrelated audio
  (independent bits), well under 0.2 for the same recording. Run on ingest's 44.1 kHz mix, so an
  audio-only item is fingerprinted too. The PyPI package named ``chromaprint`` is unrelated (terminal
  colours), and ``pyacoustid`` only shells out to the same ``fpcalc``; we call it directly.
- **Frames: our own dHash** (difference hash: 64 bits, is each pixel of a 9x8 grey thumbnail brighter
  than its right neighbour) on frames decoded by :func:`chorushead.core.media.iter_frames` at
  ``sample_fps`` with ffmpeg's area downscale straight to 9x8. It is blind to resolution, bitrate and
  mild colour changes; compared by the mean Hamming distance of aligned hashes at the best offset
  (:func:`frames_score`). Own code instead of ``imagehash`` (PyPI): 10 lines of numpy, no scipy/PyWavelets
  pin, and the decode stays the project's. Near-flat frames (black, fades) carry no picture and would
  match anything: they are marked and left out of the comparison.

Cheap: one ffmpeg decode at ``sample_fps`` of a 9x8 thumbnail plus one fpcalc run per video (see the
README for the measured time). Outputs are small typed files (``audio.npz``, ``frames.npz``: core.payloads.AudioPrint, FrameHashes). Grouping is
cross-video, so it happens in pack's split assignment (:func:`duplicate_groups`, used by
``pack.plan``); the thresholds are pack's parameters (``[stages.pack]`` in the pipeline file).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chorushead.core import media
from chorushead.core.errors import MissingAsset, StageError
from chorushead.core.manifest import Record
from chorushead.core.payloads import AudioPrint, FrameHashes
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages import ingest
from chorushead.stages.base import Context, Result, Stage

VERSION = "2"   # 2: both arrays as typed payloads (core.payloads: AudioPrint, FrameHashes)
FPCALC_HOW = ("apt-get install libchromaprint-tools (Debian/Ubuntu; scripts/setup.sh test does it as root), "
              "or put Chromaprint's fpcalc on PATH / set $CHORUSHEAD_FPCALC")
SUB_PER_S = 11025 / 1365   # Chromaprint's default: one sub-fingerprint per 1365 samples at 11025 Hz (~8.08/s)


@dataclass
class Params:
    sample_fps: int = 5            # frames hashed per second: a trim puts them at most 0.1 s off the original's
    max_seconds: float = 1800.0    # audio fingerprinted (fpcalc -length): the first half hour is plenty
    min_contrast: float = 4.0      # a thumbnail whose grey std is below this is "flat": not compared


@dataclass
class Outputs(OutputsShape):
    ingest_fingerprint: str        # the ingest record these were made from (pack checks it is current)
    audio: str | None = None       # audio.npz (core.payloads.AudioPrint); None: no audio
    frames: str | None = None      # frames.npz (core.payloads.FrameHashes); None: no picture
    sample_fps: int = 5


@dataclass
class Metrics(MetricsShape):
    audio_items: int               # sub-fingerprints (~8 per second)
    frames_hashed: int
    frames_flat: int               # frames too flat to compare


def fpcalc_exe() -> str:
    """Chromaprint's fpcalc: $CHORUSHEAD_FPCALC, else on PATH. One clear error when missing."""
    import os
    env = os.environ.get("CHORUSHEAD_FPCALC")
    if env:
        if Path(env).is_file() and os.access(env, os.X_OK):
            return env
        raise MissingAsset("Chromaprint's fpcalc", [f"$CHORUSHEAD_FPCALC={env}"], FPCALC_HOW)
    found = shutil.which("fpcalc")
    if found is None:
        raise MissingAsset("Chromaprint's fpcalc", [f"PATH ({os.environ.get('PATH', '')})"], FPCALC_HOW)
    return found


def audio_fingerprint(path: str | Path, max_seconds: float = 1800.0) -> np.ndarray:
    """Raw Chromaprint fingerprint (uint32 per ~0.124 s) of an audio or video file."""
    cmd = [fpcalc_exe(), "-raw", "-json", "-length", str(int(max_seconds)), str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    # fpcalc 1.5.1 with FFmpeg 5 prints the whole fingerprint, then "Error decoding audio frame (End of
    # file)" and exits 1 on many files: its output is what counts, the exit status only without one.
    try:
        fp = json.loads(r.stdout).get("fingerprint") or []
    except json.JSONDecodeError:
        fp = []
    if not fp:
        raise StageError(f"fpcalc gave no fingerprint for {Path(path).name} (exit {r.returncode}): "
                         f"{' '.join(r.stderr.split())[:300]}")
    return (np.asarray(fp, np.int64) & 0xFFFFFFFF).astype(np.uint32)


def frame_hashes(path: str | Path, sample_fps: int = 5, min_contrast: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """dHash (uint64) of every frame at ``sample_fps``, and whether each frame has enough contrast."""
    hashes, informative = [], []
    weights = 1 << np.arange(63, -1, -1, dtype=np.uint64)
    for chunk in media.iter_frames(path, fps=sample_fps, scale=(9, 8), chunk=256):
        grey = chunk.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)   # (k, 8, 9)
        bits = (grey[:, :, 1:] > grey[:, :, :-1]).reshape(len(grey), 64).astype(np.uint64)
        hashes.append((bits * weights).sum(axis=1, dtype=np.uint64))
        informative.append(grey.reshape(len(grey), -1).std(axis=1) >= min_contrast)
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    return np.concatenate(hashes), np.concatenate(informative)


def process(ctx: Context, p: Params, _model) -> Result:
    ing = ingest.Outputs.of(ctx.upstream["ingest"])
    out = Outputs(ingest_fingerprint=ctx.upstream["ingest"].fingerprint, sample_fps=p.sample_fps)
    n_audio = n_frames = n_flat = 0
    if ing.audio_44k:
        fp = audio_fingerprint(ctx.path(ing.audio_44k), p.max_seconds)
        AudioPrint(fingerprint=fp).save(ctx.tmp / "audio.npz")
        out.audio, n_audio = "audio.npz", len(fp)
    if ing.width > 0:
        h, ok = frame_hashes(ing.source, p.sample_fps, p.min_contrast)
        FrameHashes(hashes=h, informative=ok, sample_fps=np.asarray(p.sample_fps)).save(ctx.tmp / "frames.npz")
        out.frames, n_frames, n_flat = "frames.npz", len(h), int((~ok).sum())
    return Result(outputs=out, metrics=Metrics(audio_items=n_audio, frames_hashed=n_frames, frames_flat=n_flat))


# ----------------------------------------------------------------------------- comparing
def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)


def _best_offset(a: np.ndarray, b: np.ndarray, bits: int, min_overlap: int, max_offset: int,
                 valid_a: np.ndarray | None = None, valid_b: np.ndarray | None = None) -> tuple[float, int, int]:
    """Lowest mean fraction of differing bits over offsets (b shifted by ``off`` against a) with at
    least ``min_overlap`` compared items; (score, offset, compared). (1.0, 0, 0) when none overlap enough."""
    best = (1.0, 0, 0)
    if len(a) == 0 or len(b) == 0:
        return best
    va = np.ones(len(a), bool) if valid_a is None else valid_a
    vb = np.ones(len(b), bool) if valid_b is None else valid_b
    lo, hi = max(-(len(b) - 1), -max_offset), min(len(a) - 1, max_offset)
    for off in range(lo, hi + 1):      # a[i] against b[i - off]
        i0, i1 = max(0, off), min(len(a), len(b) + off)
        if i1 - i0 < min_overlap:
            continue
        m = va[i0:i1] & vb[i0 - off:i1 - off]
        n = int(m.sum())
        if n < min_overlap:
            continue
        err = float(_popcount(a[i0:i1][m] ^ b[i0 - off:i1 - off][m]).sum()) / (n * bits)
        if err < best[0]:
            best = (err, off, n)
    return best


def audio_score(a: np.ndarray, b: np.ndarray, min_overlap_s: float = 5.0, max_offset_s: float = 60.0) -> tuple[float, float]:
    """(bit-error rate at the best alignment, its offset in seconds): ~0.5 unrelated, < 0.2 the same audio."""
    err, off, _ = _best_offset(a, b, 32, max(1, int(min_overlap_s * SUB_PER_S)), int(max_offset_s * SUB_PER_S))
    return err, off / SUB_PER_S


def frames_score(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], sample_fps: int,
                 min_overlap_s: float = 5.0, max_offset_s: float = 60.0) -> tuple[float, float]:
    """(mean Hamming distance in bits of 64 over aligned informative frames, offset in seconds)."""
    err, off, _ = _best_offset(a[0], b[0], 64, max(1, int(min_overlap_s * sample_fps)), int(max_offset_s * sample_fps),
                               a[1], b[1])
    return err * 64, off / sample_fps


@dataclass
class Thresholds:
    audio_max_ber: float
    frames_max_hamming: float
    min_overlap_s: float
    max_offset_s: float


def load(out: Path, rec: Record) -> dict[str, Any]:
    o = Outputs.of(rec)
    d: dict[str, Any] = {}
    if o.audio:
        d["audio"] = AudioPrint.load(Path(out) / o.audio).fingerprint
    if o.frames:
        h = FrameHashes.load(Path(out) / o.frames, o.sample_fps)
        d["frames"] = (h.hashes, h.informative)
        d["sample_fps"] = int(h.sample_fps)
    return d


def duplicate_groups(prints: dict[str, dict[str, Any]], t: Thresholds) -> list[dict[str, Any]]:
    """Connected components of "same song" links between videos: audio bit-error rate <= audio_max_ber
    OR mean frame-hash distance <= frames_max_hamming. ``prints``: video -> :func:`load`'s dict. Each
    group (two or more videos): {"members": sorted ids, "links": [{"a", "b", "by", "score"}]}, sorted by
    first member. Every pair is compared (O(n²); ~1 ms a pair for 3-minute songs)."""
    vids = sorted(prints)
    parent = {v: v for v in vids}

    def root(v: str) -> str:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    links = []
    for i, a in enumerate(vids):
        for b in vids[i + 1:]:
            pa, pb = prints[a], prints[b]
            found = None
            if "audio" in pa and "audio" in pb:
                s, _ = audio_score(pa["audio"], pb["audio"], t.min_overlap_s, t.max_offset_s)
                if s <= t.audio_max_ber:
                    found = ("audio", s)
            if found is None and "frames" in pa and "frames" in pb and pa["sample_fps"] == pb["sample_fps"]:
                s, _ = frames_score(pa["frames"], pb["frames"], pa["sample_fps"], t.min_overlap_s, t.max_offset_s)
                if s <= t.frames_max_hamming:
                    found = ("frames", s)
            if found is not None:
                links.append({"a": a, "b": b, "by": found[0], "score": round(found[1], 4)})
                parent[root(b)] = root(a)
    comps: dict[str, list[str]] = {}
    for v in vids:
        comps.setdefault(root(v), []).append(v)
    groups = []
    for members in comps.values():
        if len(members) > 1:
            ms = set(members)
            groups.append({"members": sorted(members), "links": [lk for lk in links if lk["a"] in ms]})
    return sorted(groups, key=lambda g: g["members"][0])


STAGE = Stage(name="fingerprint", version=VERSION, params=Params, outputs=Outputs, metrics=Metrics, process=process,
              needs=("ingest",), description="Chromaprint audio fingerprint + dHash per sampled frame (duplicates)")
