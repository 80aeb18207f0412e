"""vad, contiguity and smooth on generated data (real webrtcvad)."""
import numpy as np
import pytest

from chorushead.core import media
from chorushead.sample import SR, music, sing
from chorushead.stages import contiguity, smooth, vad
from chorushead.core.errors import BadInput
from conftest import validate_record
from chorushead.core.manifest import Record


def _ingest(n_frames, fps=30):
    """Complete ingest outputs (stages read them through ingest.Outputs, which wants every field)."""
    return {"source": "/x.mp4", "n_frames": n_frames, "fps": fps, "width": 512, "height": 256,
            "duration": n_frames / fps, "source_fps": float(fps)}


def _write(path, a, sr=SR):
    path.parent.mkdir(parents=True, exist_ok=True)
    media.write_wav(path, a, sr)
    return str(path)


def test_vad_finds_singing_and_trims_every_track(tmp_path, ctx_factory):
    secs = 8.0
    v1 = sing(secs, SR, [(1.5, 4.0), (4.5, 6.5)], 220.0, 1)
    v2 = sing(secs, SR, [(2.0, 6.0)], 165.0, 2)
    bgm = music(secs, SR)
    d = tmp_path / "in"
    ups = {"ingest": _ingest(int(secs * 30)),
           "bgm_split": {"vocals": _write(d / "vocals.wav", v1 + v2), "accompaniment": _write(d / "acc.wav", bgm)},
           "duet_split": {"singers": [_write(d / "s0.wav", v1), _write(d / "s1.wav", v2)], "singers_16k": []}}
    ctx = ctx_factory("vad", ups)
    res = vad.process(ctx, vad.Params(), None)
    a, b = res.outputs["start_frame"], res.outputs["end_frame"]
    assert abs(a / 30 - 1.5) < 0.15 and abs(b / 30 - 6.5) < 0.35          # singing 1.5 s .. 6.5 s
    n = round((b - a) * 16000 / 30)
    for rel in [res.outputs["vocals_16k"], res.outputs["bgm_16k"], *res.outputs["singers_16k"]]:
        x, sr = media.read_wav(ctx.tmp / rel)
        assert sr == 16000 and len(x) == n
    # the trimmed singer track is the original, cut at start_frame
    s0 = media.load_audio(d / "s0.wav", 16000)
    x, _ = media.read_wav(ctx.tmp / res.outputs["singers_16k"][0])
    off = round(a / 30 * 16000)
    np.testing.assert_allclose(x[:1000], s0[off:off + 1000], atol=1e-4)


def test_vad_silence_is_a_clear_failure(tmp_path, ctx_factory):
    d = tmp_path / "in"
    z = np.zeros(SR * 6, np.float32)
    ups = {"ingest": _ingest(180),
           "bgm_split": {"vocals": _write(d / "v.wav", z), "accompaniment": _write(d / "a.wav", z)},
           "duet_split": {"singers": [_write(d / "s0.wav", z), _write(d / "s1.wav", z)], "singers_16k": []}}
    with pytest.raises(BadInput, match="no singing"):
        vad.process(ctx_factory("vad", ups), vad.Params(), None)


def test_runs():
    m = np.zeros(400, bool)
    m[10:170] = True
    m[200:260] = True
    m[250:400] = True
    assert contiguity.runs(m, 150) == [[10, 170], [200, 400]]
    assert contiguity.runs(m, 1) == [[10, 170], [200, 400]]
    assert contiguity.runs(np.ones(149, bool), 150) == []


def _detections(tmp_path, probs, n_faces=None):
    p = tmp_path / "det.npz"
    s, t = probs.shape
    np.savez(p, probs=probs, boxes=np.zeros((s, t, 4)), n_faces=n_faces if n_faces is not None else (probs > 0.9).astype(int))
    return {"crop": {"detections": str(p), "strips": ["strip0", "strip1"], "n_strips": s, "frames": t,
                     "start_frame": 0, "crop_size": 224}}


def test_contiguity_segments_where_all_strips_have_a_face(tmp_path, ctx_factory):
    probs = np.full((2, 600), 0.99)
    probs[1, 240:270] = 0.0     # singer 2 leaves for 1 s
    probs[0, 500:] = 0.3        # singer 1 undetected at the end
    ctx = ctx_factory("contiguity", _detections(tmp_path, probs))
    res = contiguity.process(ctx, contiguity.Params(), None)
    assert res.outputs["segments"] == [[0, 240], [270, 500]]
    assert res.outputs["strip_runs"] == [[[0, 500]], [[0, 240], [270, 600]]]
    validate_record(Record(item="x", stage="contiguity", status="done", fingerprint="0" * 16,
                           outputs=res.outputs, metrics=res.metrics).to_dict())
    contiguity.STAGE.check(res)


def test_contiguity_one_face_only_and_extra_faces_fail_clearly(tmp_path, ctx_factory):
    probs = np.full((2, 300), 0.99)
    probs[1] = 0.0
    with pytest.raises(BadInput, match="strip 1: face in 0/300"):
        contiguity.process(ctx_factory("contiguity", _detections(tmp_path, probs)), contiguity.Params(), None)
    probs = np.full((2, 300), 0.99)
    n_faces = np.ones((2, 300), int)
    n_faces[1] = 2
    with pytest.raises(BadInput, match="two or more faces"):
        contiguity.process(ctx_factory("contiguity", _detections(tmp_path, probs, n_faces)),
                           contiguity.Params(), None)


def test_smooth_reduces_jitter_keeps_signal_and_edges(tmp_path, ctx_factory):
    rng = np.random.default_rng(0)
    t = np.arange(300)
    clean = np.zeros((2, 300, 56), np.float32)
    clean[..., 50] = 0.3 * np.sin(2 * np.pi * t / 60)
    clean[..., 0] = 0.5                                      # constant stays constant at the edges
    noisy = clean + rng.normal(0, 0.02, clean.shape).astype(np.float32)
    p = tmp_path / "seg.npz"
    np.savez(p, coeffs=noisy)
    ctx = ctx_factory("smooth", {"fit": {"segments": [str(p)], "n_strips": 2}})
    res = smooth.process(ctx, smooth.Params(sigma=2.0), None)
    s = np.load(ctx.tmp / res.outputs["segments"][0])["coeffs"]
    assert s.shape == noisy.shape
    assert np.abs(s - clean).mean() < 0.5 * np.abs(noisy - clean).mean()
    assert res.metrics["accel_after"] < res.metrics["accel_before"] / 3
    assert abs(s[:, 0, 0].mean() - 0.5) < 0.03
