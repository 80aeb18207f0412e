"""Upstream state for pack tests: what vad/contiguity/smooth/assign leave behind, written directly."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chorushead.core import media
from chorushead.core.manifest import Manifest, Record
from chorushead.runner import Pipeline, Plan, save_items
from chorushead.stages import get_stage
from chorushead.stages.base import Item
from chorushead.core.windows import POSE


def make_upstream(out: Path, n_videos: int = 3, seconds: float = 12.0, segments=((0, 200), (220, 360)),
                  sr: int = 16000, fps: int = 30, seed: int = 0, fit_backend: str | None = None,
                  read_by_pack_only: bool = False, vad_start: int | Sequence[int] = 0,
                  singers: int | Sequence[int] = 2) -> list[Item]:
    """A build's records up to pack, current under the default pipeline (Plan), so a build's pack packs
    them: ingest and crop with small real outputs, the separations skipped as with stems, vad ..
    assign as pack reads them. ``read_by_pack_only``: only vad .. assign (an older or partial build:
    a run_global_stage without the build's plan packs it, a build blocks it). ``vad_start``: vad's start
    frame on the timeline (crop frame t = timeline frame vad_start + t; the tracks are already trimmed).
    ``vad_start`` and ``singers`` (strips = voice tracks, S) may be one value per video (a sequence),
    else every video gets the same; singer k's coefficients carry k in exp[1] (0 for singer 0)."""
    rng = np.random.default_rng(seed)
    plan = Plan.of(Pipeline.load())
    items = []
    vad_starts = [vad_start] * n_videos if isinstance(vad_start, int) else [int(x) for x in vad_start]
    n_singers = [singers] * n_videos if isinstance(singers, int) else [int(x) for x in singers]
    assert len(vad_starts) == n_videos and len(n_singers) == n_videos
    for v in range(n_videos):
        vad_start, S = vad_starts[v], n_singers[v]
        it = Item(id=f"song{v}-abcdef", source=f"/raw/song{v}.mp4")
        items.append(it)
        d = it.dir(out)
        n = int(seconds * sr)
        (d / "vad").mkdir(parents=True, exist_ok=True)
        singers = []
        for k in range(S):
            # each singer's audio encodes (video, singer, sample index) so window slicing is checkable
            a = (np.arange(n) % 1000 / 1000.0 * (k + 1) + v).astype(np.float32) / 10
            media.write_wav(d / "vad" / f"singer{k}_16k.wav", a, sr)
            singers.append(f"items/{it.id}/vad/singer{k}_16k.wav")
        media.write_wav(d / "vad" / "bgm_16k.wav", rng.standard_normal(n).astype(np.float32) * 0.1, sr)
        (d / "smooth").mkdir(parents=True, exist_ok=True)
        segs = []
        for i, (a, b) in enumerate(segments):
            c = np.zeros((S, b - a, 56), np.float32)
            c[:, :, 0] = np.arange(a, b)[None]          # exp[0] = frame number: checks alignment
            c[1:, :, 1] = np.arange(1, S)[:, None]       # singer k marker: k (singer 1: 1.0)
            c[:, :, POSE] = rng.standard_normal((S, b - a, 3)) * 0.1
            np.savez(d / "smooth" / f"seg{i:03d}.npz", coeffs=c)
            segs.append(f"items/{it.id}/smooth/seg{i:03d}.npz")
        fit = {"segments": segs, "n_strips": S}     # (the raw fits are not read by pack)
        if fit_backend is not None:                 # else: a record from before fits named their backend
            fit.update(backend=fit_backend, coeff_groups=["exp", "jaw", "pose"])
        n_frames = int(seconds * fps)
        (d / "crop").mkdir(parents=True, exist_ok=True)
        probs = np.full((S, n_frames), 0.99, np.float32)
        np.savez(d / "crop" / "detections.npz", probs=probs, detected=np.ones((S, n_frames), bool))
        ups = {
            "ingest": {"source": it.source, "n_frames": n_frames, "fps": fps, "width": 512, "height": 256,
                       "duration": float(seconds), "source_fps": float(fps)},
            "crop": {"detections": f"items/{it.id}/crop/detections.npz", "strips": [], "n_strips": S,
                     "frames": n_frames, "start_frame": vad_start, "crop_size": 224},
            "vad": {"start_frame": vad_start, "end_frame": vad_start + n_frames, "start_s": vad_start / fps,
                    "end_s": vad_start / fps + float(seconds),
                    "singers_16k": singers, "bgm_16k": f"items/{it.id}/vad/bgm_16k.wav", "vocals_16k": singers[0],
                    "sr": sr},
            "contiguity": {"segments": [list(s) for s in segments], "strip_runs": [], "n_frames": int(seconds * fps)},
            "fit": fit,
            "smooth": {"segments": segs},
            "assign": {"order": list(range(S)), "confidence": 1.0, "low_confidence": False},
        }
        metrics = {"crop": {"frames": n_frames, "frames_expected": n_frames, "faces_per_strip": [n_frames] * S,
                            "multi_face_frames": 0, "detected_fraction": 0.1, "decode_wait_s": 0.0, "detect_s": 0.0,
                            "save_s": 0.0, "seconds": 0.0, "frames_per_s": 0.0, "detector_images": 0},
                   "ingest": {"seconds_of_video": float(seconds), "frames": n_frames, "resolution": "512x256",
                              "source_fps": float(fps)},
                   "contiguity": {"segments": len(segments), "frames_kept": int(sum(b - a for a, b in segments)),
                                  "frames": n_frames, "kept_fraction": sum(b - a for a, b in segments) / n_frames}}
        # Every item stage gets a record with the fingerprint the runner computes for it (Plan), chained
        # through its upstream ones, so a build sees them all as current.
        recs: dict[str, Record] = {}
        for stage in plan.order:
            if get_stage(stage).kind == "global":
                continue
            fp = plan.fingerprint(stage, it, {need: recs[need] for need in get_stage(stage).needs if need in recs})
            skipped = stage in ("bgm_split", "duet_split")
            if stage == "fingerprint":   # a video without audio fingerprint or frame hashes: in no group
                ups[stage] = {"ingest_fingerprint": recs["ingest"].fingerprint}
                metrics[stage] = {"audio_items": 0, "frames_hashed": 0, "frames_flat": 0}
            recs[stage] = Record(item=it.id, stage=stage, status="skipped" if skipped else "done", fingerprint=fp,
                                 outputs=ups.get(stage, {}), metrics=metrics.get(stage, {}),
                                 reason="stems supplied" if skipped else None)
            if not read_by_pack_only or stage in ups and stage not in ("ingest", "crop"):
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
