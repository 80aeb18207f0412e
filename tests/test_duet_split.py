"""duet_split: chunked MossFormer2 separation. The chunk stitching is tested with a separator that
returns the TRUE sources in a random order and scale per chunk; the modelscope path is tested for
real on a small random-weight MossFormer2 folder that the test writes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import lfilter

from chorushead.backends.crossfade import chunk_starts
from chorushead.core.manifest import Record
from chorushead.core.media import read_wav, resample, write_wav
from chorushead.core.errors import MissingAsset, StageError
from chorushead.stages.base import Context, Item
from chorushead.stages.duet_split import STAGE, Params, best_order, full_band_tracks, lsq_gains, separate_long

SR8 = 8000


def make_ctx(root: Path, upstream: dict[str, dict]) -> Context:
    item = Item(id="song", source=str(root / "song.mp4"))
    tmp = root / "items" / "song" / ".duet_split.tmp"
    tmp.mkdir(parents=True)
    ups = {k: Record(item="song", stage=k, status="done", fingerprint="x", outputs=v) for k, v in upstream.items()}
    return Context(item=item, out=root, tmp=tmp, final=root / "items/song/duet_split", upstream=ups)


def voices(n_src: int, n: int, seed: int = 0) -> np.ndarray:
    """Independent 'singers': coloured noise with phrase-like on/off envelopes."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_src):
        x = lfilter([1.0], [1.0, -0.9 + 0.3 * k], rng.standard_normal(n))
        env = np.repeat(rng.uniform(0.2, 1.0, n // 4000 + 1), 4000)[:n]
        out.append(x * env)
    return np.asarray(out, np.float32)


def oracle(sources: np.ndarray, chunk: int, overlap: int, seed: int = 1):
    """A separator that knows the truth but, like MossFormer2, returns it in arbitrary order and scale."""
    rng = np.random.default_rng(seed)
    starts = chunk_starts(sources.shape[1], chunk, overlap)
    calls = []

    def sep(chunks: np.ndarray) -> np.ndarray:
        assert chunks.shape == (len(starts), chunk)
        out = []
        for s in starts:
            perm = rng.permutation(len(sources))
            scale = rng.uniform(0.2, 3.0, len(sources)) * rng.choice([-1, 1], len(sources))
            out.append(sources[perm, s:s + chunk] * scale[:, None])
            calls.append(perm)
        return np.asarray(out, np.float32)
    return sep, calls


@pytest.mark.parametrize("n_src", [2, 3])
def test_stitching_recovers_sources_whatever_the_order_per_chunk(n_src):
    n = 61 * SR8 + 17
    src = voices(n_src, n)
    mix = src.sum(0)
    sep, perms = oracle(src, chunk=10 * SR8, overlap=2 * SR8)
    st = separate_long(mix, sep, 10 * SR8, 2 * SR8)
    assert len(st.starts) == 8
    assert any(not np.array_equal(p, perms[0]) for p in perms), "the test must actually shuffle"
    # the first chunk fixes the output order; every later chunk must follow it
    np.testing.assert_allclose(st.tracks, src[perms[0]], atol=2e-4)
    assert min(st.overlap_corr) > 0.999
    np.testing.assert_allclose(st.tracks.sum(0), mix, atol=2e-4)


def test_short_song_is_one_chunk():
    src = voices(2, 3 * SR8)
    sep, _ = oracle(src, chunk=3 * SR8, overlap=0)
    st = separate_long(src.sum(0), sep, 10 * SR8, 2 * SR8)
    assert st.starts == [0] and st.tracks.shape == src.shape


def test_full_band_tracks_sum_to_the_vocals_and_follow_their_singer():
    sr = 44100
    rng = np.random.default_rng(3)
    n = 3 * sr
    on = np.zeros((2, n), np.float32)                 # singer 0 in the first half, singer 1 after
    on[0, : n // 2] = 1
    on[1, n // 2:] = 1
    src = np.stack([lfilter([1.0], [1.0, -0.5], rng.standard_normal(n)) for _ in range(2)]).astype(np.float32) * on
    vocals = src.sum(0)
    tracks8 = resample(src.T, sr, SR8).T              # what an ideal 8 kHz separator would give
    full = full_band_tracks(vocals, sr, tracks8)
    assert full.shape == (2, n)
    np.testing.assert_allclose(full.sum(0), vocals, atol=1e-4)
    inner = slice(sr // 4, n // 2 - sr // 4)          # away from the switch and the edges
    plain = resample(tracks8.T, SR8, sr).T[:, :n]     # the 8 kHz tracks only resampled: no high band
    for k in range(2):
        err = np.linalg.norm(full[k] - src[k]) / np.linalg.norm(src[k])
        err_plain = np.linalg.norm(plain[k] - src[k]) / np.linalg.norm(src[k])
        assert err < 0.15 and err_plain > 0.5, (k, err, err_plain)
    assert np.abs(full[1][inner]).max() < 0.05 * np.abs(full[0][inner]).max()


def test_lsq_gains_and_order():
    src = voices(2, 8000)
    g = lsq_gains(src.sum(0), src * np.array([[2.0], [-0.5]], np.float32))
    np.testing.assert_allclose(g, [0.5, -2.0], rtol=1e-4)
    perm, corr, margin = best_order(src, src[::-1])
    assert list(perm) == [1, 0] and corr > 0.99 and margin > 0.5


# ------------------------------------------------------------------ the real modelscope path
# Marked slow: importing modelscope alone takes ~20 s on 2 cores (it indexes its own source once).

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("modelscope", reason="modelscope not installed (see backends/mossformer2.py)")
    from chorushead.backends.mossformer2 import write_random_model
    return write_random_model(tmp_path_factory.mktemp("m2") / "mossformer2_tiny", num_blocks=2, channels=32)


@pytest.mark.slow
def test_real_modelscope_model_batched_and_stitched(tmp_path, tiny_model):
    sr = 44100
    n = int(5.2 * sr)
    src = resample(voices(2, int(5.2 * SR8)).T, SR8, sr).T[:, :n]
    vocals = np.stack([src.sum(0), src.sum(0)], 1) * 0.3
    (tmp_path / "items/song/bgm_split").mkdir(parents=True)
    write_wav(tmp_path / "items/song/bgm_split/vocals.wav", vocals, sr)
    params = Params(model=str(tiny_model), batch_size=3, chunk_seconds=2.0, overlap_seconds=0.5, device="cpu")
    sep = STAGE.setup(params)
    assert sep.num_spks == 2 and sep.batch_size == 3
    # batching must not change results (GlobalLayerNorm is per item)
    chunks = np.random.default_rng(0).standard_normal((4, SR8)).astype(np.float32) * 0.1
    one = type(sep)(sep.model, sep.model_dir, sep.device, 1, sep.num_spks)(chunks)
    np.testing.assert_allclose(sep(chunks), one, atol=1e-4)

    ctx = make_ctx(tmp_path, {"ingest": {"audio_44k": "x.wav"},
                              "bgm_split": {"vocals": "items/song/bgm_split/vocals.wav"}})
    r = STAGE.process(ctx, params, sep)
    assert r.status == "done" and r.metrics["chunks"] == 4   # 5.2 s in 2 s chunks, 1.5 s hop
    assert r.metrics["residual_ratio"] <= 1.0 + 1e-6      # least squares never does worse than silence
    full = [read_wav(ctx.tmp / p) for p in r.outputs["singers"]]
    low = [read_wav(ctx.tmp / p) for p in r.outputs["singers_16k"]]
    assert [s for _, s in full] == [sr, sr] and [s for _, s in low] == [16000, 16000]
    assert all(len(a) == n for a, _ in full) and all(len(a) == round(n * 16000 / sr) for a, _ in low)
    assert all(np.isfinite(a).all() and np.abs(a).max() > 0 for a, _ in full + low)
    np.testing.assert_allclose(full[0][0] + full[1][0], vocals.mean(1), atol=1e-3)   # full band sums to vocals


@pytest.mark.slow
def test_checkpoint_that_does_not_match_its_configuration_is_refused(tmp_path, tiny_model):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    cfg = json.loads((bad / "configuration.json").read_text())
    cfg["model"]["num_blocks"] = 3
    (bad / "configuration.json").write_text(json.dumps(cfg))
    with pytest.raises(StageError, match="does not match"):
        STAGE.setup(Params(model=str(bad), device="cpu"))


def test_missing_model_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MissingAsset) as e:
        STAGE.setup(Params(device="cpu"))
    msg = str(e.value)
    assert "damo/speech_mossformer2_separation_temporal_8k" in msg and str(tmp_path / "cache") in msg
    assert "snapshot_download" in msg


@pytest.mark.slow
def test_wrong_speaker_count_is_refused(tiny_model):
    with pytest.raises(StageError, match="3"):
        STAGE.setup(Params(model=str(tiny_model), n_singers=3, model_3=str(tiny_model), device="cpu"))


def test_supplied_stems_skip_but_make_16k_copies(tmp_path):
    (tmp_path / "items/song/ingest").mkdir(parents=True)
    rels = []
    for k in range(2):
        write_wav(tmp_path / f"items/song/ingest/s{k}.wav", voices(1, 44100, k)[0], 44100)
        rels.append(f"items/song/ingest/s{k}.wav")
    ctx = make_ctx(tmp_path, {"ingest": {"stems_singers": rels}, "bgm_split": {}})
    r = STAGE.process(ctx, Params(), None)
    assert r.status == "skipped" and r.reason == "stems supplied" and r.outputs["singers"] == rels
    a, sr = read_wav(ctx.tmp / r.outputs["singers_16k"][1])
    assert sr == 16000 and len(a) == 16000


def test_overlap_not_less_than_chunk_is_refused_at_once():
    from chorushead.stages import get_stage
    for name in ("duet_split", "bgm_split"):
        with pytest.raises(ValueError, match=f"stage {name}: overlap_seconds"):
            get_stage(name).make_params({"chunk_seconds": 4.0, "overlap_seconds": 4.0})
