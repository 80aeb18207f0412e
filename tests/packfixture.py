"""Upstream state for pack tests: what vad/contiguity/smooth/assign leave behind, written directly."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from chorushead.core import media
from chorushead.core.manifest import Manifest, Record
from chorushead.runner import Pipeline, Plan, save_items
from chorushead.stages import get_stage
from chorushead.stages.base import Item


def make_upstream(out: Path, n_videos: int = 3, seconds: float = 12.0, segments=((0, 200), (220, 360)),
                  sr: int = 16000, fps: int = 30, seed: int = 0, fit_backend: str | None = None) -> list[Item]:
    rng = np.random.default_rng(seed)
    plan = Plan.of(Pipeline.load())
    items = []
    for v in range(n_videos):
        it = Item(id=f"song{v}-abcdef", source=f"/raw/song{v}.mp4")
        items.append(it)
        d = it.dir(out)
        n = int(seconds * sr)
        (d / "vad").mkdir(parents=True, exist_ok=True)
        singers = []
        for k in range(2):
            # each singer's audio encodes (video, singer, sample index) so window slicing is checkable
            a = (np.arange(n) % 1000 / 1000.0 * (k + 1) + v).astype(np.float32) / 10
            media.write_wav(d / "vad" / f"singer{k}_16k.wav", a, sr)
            singers.append(f"items/{it.id}/vad/singer{k}_16k.wav")
        media.write_wav(d / "vad" / "bgm_16k.wav", rng.standard_normal(n).astype(np.float32) * 0.1, sr)
        (d / "smooth").mkdir(parents=True, exist_ok=True)
        segs = []
        for i, (a, b) in enumerate(segments):
            c = np.zeros((2, b - a, 56), np.float32)
            c[:, :, 0] = np.arange(a, b)[None]          # exp[0] = frame number: checks alignment
            c[1, :, 1] = 1.0                             # singer 1 marker
            c[:, :, 53:56] = rng.standard_normal((2, b - a, 3)) * 0.1
            np.savez(d / "smooth" / f"seg{i:03d}.npz", coeffs=c)
            segs.append(f"items/{it.id}/smooth/seg{i:03d}.npz")
        fit = {"segments": segs, "n_strips": 2}     # (the raw fits are not read by pack)
        if fit_backend is not None:                 # else: a record from before fits named their backend
            fit.update(backend=fit_backend, coeff_groups=["exp", "jaw", "pose"])
        ups = {
            "vad": {"start_frame": 0, "end_frame": int(seconds * fps), "start_s": 0.0, "end_s": float(seconds),
                    "singers_16k": singers, "bgm_16k": f"items/{it.id}/vad/bgm_16k.wav", "vocals_16k": singers[0],
                    "sr": sr},
            "contiguity": {"segments": [list(s) for s in segments], "strip_runs": [], "n_frames": int(seconds * fps)},
            "fit": fit,
            "smooth": {"segments": segs},
            "assign": {"order": [0, 1], "confidence": 1.0, "low_confidence": False},
        }
        # Every item stage gets a record, with the fingerprint the runner computes for it under the default
        # pipeline (Plan), so a build's pack sees these records as current; the stages pack does not read
        # carry no outputs.
        recs: dict[str, Record] = {}
        for stage in plan.order:
            if get_stage(stage).kind == "global":
                continue
            fp = plan.fingerprint(stage, it, {need: recs[need] for need in get_stage(stage).needs})
            recs[stage] = Record(item=it.id, stage=stage, status="done", fingerprint=fp, outputs=ups.get(stage, {}))
            Manifest(out, stage).append(recs[stage])
    save_items(out, items)
    return items


def lmdb_content(path: Path, generation: bool = False) -> dict[bytes, bytes]:
    """Every key -> value. Without ``generation``, the write counter (``__generation__`` and __meta__'s
    ``generation``) is left out: a pack resumed after a kill is a later generation of the same content."""
    import json
    import lmdb
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        content = {bytes(k): bytes(v) for k, v in txn.cursor()}
    env.close()
    if not generation:
        content.pop(b"__generation__", None)
        if b"__meta__" in content:
            meta = json.loads(content[b"__meta__"])
            meta.pop("generation", None)
            content[b"__meta__"] = json.dumps(meta, sort_keys=True).encode()
    return content
