"""duet_split stage (chorushead.stages.duet_split): cases mutation testing showed were not pinned
(docs/mutation-survivors.md). MossFormer2 is replaced by stand-ins (a frequency splitter, a fake
loader), so the stage runs in-process in milliseconds; values are stated by hand and comments name
what each case guards."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import chorushead.stages.duet_split as D
from chorushead.backends import mossformer2
from chorushead.core.errors import BadInput, StageError
from chorushead.core.manifest import Record
from chorushead.core.media import read_wav, resample, write_wav
from chorushead.stages.base import Context, Item


# ----------------------------------------------------------------------------- set-up and identity

class FakeSeparator:
    loads: list[tuple] = []

    def __init__(self, model_dir, num_spks):
        self.model_dir, self.num_spks = Path(model_dir), num_spks

    @classmethod
    def load(cls, model, device, batch_size, allow_download):
        cls.loads.append((model, device, batch_size, allow_download))
        return cls(f"/models/{model}", 3 if model.endswith("3") else 2)


@pytest.fixture
def fake_loader(monkeypatch):
    FakeSeparator.loads = []
    monkeypatch.setattr(mossformer2, "MossFormer2Separator", FakeSeparator)
    return FakeSeparator.loads


def test_setup_loads_the_model_for_the_singer_count(fake_loader):
    sep = D.setup(D.Params(model="m2", model_3="m3", device="cpu", batch_size=7, allow_download=True))
    assert fake_loader == [("m2", "cpu", 7, True)] and sep.num_spks == 2
    sep = D.setup(D.Params(n_singers=3, model="m2", model_3="m3"))
    assert fake_loader[-1] == ("m3", "auto", 4, False) and sep.num_spks == 3


def test_setup_refuses_a_missing_or_mismatched_model(fake_loader):
    with pytest.raises(StageError) as e:
        D.setup(D.Params(n_singers=3))
    assert str(e.value) == ("duet_split: no MossFormer2 model configured for 3 singers "
                            "(set duet_split.model_3 to a hub id or a folder)")
    assert fake_loader == []
    with pytest.raises(StageError) as e:
        D.setup(D.Params(n_singers=3, model_3="two"))
    assert str(e.value) == "duet_split: model /models/two separates 2 voices, but n_singers = 3"


def test_identity_names_the_model_that_will_run(monkeypatch):
    monkeypatch.setattr(mossformer2, "identity", lambda model: {"model": model})
    assert D.identity(D.Params(model="m2", model_3="m3")) == {"model": "m2"}
    assert D.identity(D.Params(n_singers=3, model="m2", model_3="m3")) == {"model": "m3"}
    assert D.identity(D.Params(n_singers=3, model="m2")) == {"missing": "duet_split.model_3"}


# ----------------------------------------------------------------------------- gains and order

def test_lsq_gains_with_the_ridge_worked_out():
    # two orthogonal tracks of equal energy (4 each): a = 4·I + 1e-6·4·I, so g = true / (1 + 1e-6)
    est = np.array([[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, -1, 1, -1]], np.float32)
    mix = 3 * est[0] - 0.5 * est[1]
    np.testing.assert_allclose(D.lsq_gains(mix, est), [3 / (1 + 1e-6), -0.5 / (1 + 1e-6)], rtol=1e-12)
    # a stronger ridge scales the same way
    np.testing.assert_allclose(D.lsq_gains(mix, est, ridge=0.5), [2.0, -1 / 3], rtol=1e-12)


def test_lsq_gains_of_silent_tracks_are_zero_not_an_error():
    est = np.zeros((2, 6), np.float32)
    np.testing.assert_array_equal(D.lsq_gains(np.ones(6, np.float32), est), [0.0, 0.0])   # 1e-12 keeps a invertible
    est[0] = 1
    g = D.lsq_gains(2 * np.ones(6, np.float32), est)
    assert g[1] == 0 and abs(g[0] - 2 / (1 + 0.5e-6)) < 1e-12                 # trace/2 = 3 = half of |est0|²


def test_lsq_gains_work_in_float64():
    est = np.array([[1e20, 0, 0], [0, 1e20, 0]], np.float32)                 # squares overflow float32
    g = D.lsq_gains(np.array([2e20, 1e20, 0], np.float32), est)
    np.testing.assert_allclose(g, [2 / (1 + 1e-6), 1 / (1 + 1e-6)], rtol=1e-9)


def orthonormal(n: int = 8) -> np.ndarray:
    """Three zero-mean orthonormal rows of length n."""
    rows = np.array([[1, -1, 1, -1, 1, -1, 1, -1], [1, 1, -1, -1, 1, 1, -1, -1], [1, 1, 1, 1, -1, -1, -1, -1]],
                    np.float64)[:, :n]
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_best_order_with_its_correlation_and_margin():
    p = orthonormal()
    prev = p[:2] + np.array([[5.0], [-2.0]])            # offsets: correlation is of each track centred
    cur = np.stack([p[1], (p[0] + p[1]) / np.sqrt(2)]) * 3.0
    # corr = [[0, 0.7071], [1, 0.7071]]: best 1 -> 0, 0 -> 1 (sum 1.7071), the other assignment 0.7071;
    # each unit vector is x / (|x| + 1e-9): |prev| = 1, |cur| = 3
    perm, corr, margin = D.best_order(prev, cur)
    assert list(perm) == [1, 0]
    eps = 1 / ((1 + 1e-9) * (1 + 1e-9 / 3))
    assert corr == pytest.approx((1 + 2 ** -0.5) / 2 * eps, abs=1e-13)
    assert margin == pytest.approx(0.5 * eps, abs=1e-13)
    assert isinstance(corr, float) and isinstance(margin, float)


def test_best_order_of_three_takes_the_best_assignment_avoiding_one_pair():
    p = orthonormal()
    cur = np.stack([p[2], p[0], 0.6 * p[1] + 0.8 * p[2]])
    # corr (rows: prev, columns: cur) = [[0, 1, 0], [0, 0, .6], [1, 0, .8]]
    perm, corr, margin = D.best_order(p, cur)
    assert list(perm) == [1, 2, 0]                            # 1 + .6 + 1 = 2.6
    assert corr == pytest.approx(2.6 / 3, abs=1e-8)
    # best without (0, 1): 1.0; without (1, 2) or (2, 0): (0, 1) + (1, 0) + (2, 2) = 1.8. The margin
    # is over the best of these (1.8), not the worst
    assert margin == pytest.approx((2.6 - 1.8) / 3, abs=1e-8)


def test_best_order_of_one_track_and_of_silence():
    p = orthonormal()
    perm, corr, margin = D.best_order(p[:1], -p[:1])
    assert list(perm) == [0] and corr == pytest.approx(-1.0) and margin == 1.0
    perm, corr, margin = D.best_order(p[:2], np.zeros((2, 8)))              # silence: 0, not NaN
    assert corr == 0.0 and margin == 0.0


# ----------------------------------------------------------------------------- stitching

def two_voices(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, n)).astype(np.float32) * np.array([[1.0], [0.5]], np.float32)


def swapping(sources: np.ndarray, starts: list[int], chunk: int, swap: set[int], scale: float = 2.0):
    """A separator returning the true sources, swapped in the chunks ``swap``, scaled by ``scale``."""
    seen = []

    def sep(chunks):
        seen.append(chunks.copy())
        out = []
        for c, s in enumerate(starts):
            y = sources[:, s:s + chunk] * scale
            out.append(y[::-1] if c in swap else y)
        return np.asarray(out, np.float32)
    return sep, seen


def test_separate_long_aligns_every_chunk_to_the_first_and_records_the_seams():
    src = two_voices(1000)
    mix = src.sum(0)
    starts = [0, 300, 600]                                        # chunk 400, overlap 100: hop 300, last ends at 1000
    sep, seen = swapping(src, starts, 400, swap={1})
    st = D.separate_long(mix, sep, 400, 100)
    assert st.starts == starts and len(seen) == 1 and seen[0].shape == (3, 400)
    np.testing.assert_array_equal(seen[0][1], mix[300:700])
    np.testing.assert_allclose(st.tracks, src, atol=1e-5)
    assert st.tracks.dtype == np.float32 and st.tracks.shape == (2, 1000)
    assert len(st.gains) == 3 and len(st.overlap_corr) == 2 and len(st.overlap_margin) == 2
    np.testing.assert_allclose(st.gains, [[0.5, 0.5]] * 3, rtol=1e-5)       # gains follow the reordering
    assert min(st.overlap_corr) > 0.999 and min(st.overlap_margin) > 0.5


def test_separate_long_gains_follow_a_swap():
    src = two_voices(700)

    def sep(chunks):                                  # chunk 0: (2·src0, 4·src1); chunk 1 swapped
        a, b = 2 * src[:, 0:400], 4 * src[:, 300:700]
        return np.stack([np.stack([a[0], 4 * src[1, 0:400]]), np.stack([b[1], 2 * src[0, 300:700]])])
    st = D.separate_long(src.sum(0), sep, 400, 100)
    # chunk 1's gains are solved in its own order (0.25, 0.5), then reordered with its tracks
    np.testing.assert_allclose(st.gains, [[0.5, 0.25], [0.5, 0.25]], rtol=1e-5)
    np.testing.assert_allclose(st.tracks, src, atol=1e-4)


def test_separate_long_without_overlap_does_not_reorder():
    src = two_voices(800)
    sep, _ = swapping(src, [0, 400], 400, swap={1})
    st = D.separate_long(src.sum(0), sep, 400, 0)
    assert st.starts == [0, 400] and st.overlap_corr == [] and st.overlap_margin == []
    np.testing.assert_allclose(st.tracks[:, 400:], src[::-1, 400:], atol=1e-5)   # nothing to align on


def test_separate_long_aligns_on_a_one_sample_overlap():
    """n = 799, chunk 400, overlap 1: starts 0 and 399 share one sample. Its centred correlation is 0
    (one sample has no shape), but the seam is still measured and recorded."""
    src = two_voices(799)
    sep, _ = swapping(src, [0, 399], 400, swap=set())
    st = D.separate_long(src.sum(0), sep, 400, 1)
    assert st.starts == [0, 399] and st.overlap_corr == [0.0] and st.overlap_margin == [0.0]


def test_separate_long_of_a_song_shorter_than_a_chunk():
    src = two_voices(250)
    calls = []

    def sep(chunks):
        calls.append(chunks.shape)
        return np.stack([src] * len(chunks))
    st = D.separate_long(src.sum(0), sep, 400, 100)
    assert calls == [(1, 250)] and st.starts == [0] and st.overlap_corr == []
    np.testing.assert_allclose(st.tracks, src, atol=1e-5)


def test_fit_length():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(D._fit_length(a, 2), [[0, 1], [3, 4]])
    np.testing.assert_array_equal(D._fit_length(a, 3), a)
    np.testing.assert_array_equal(D._fit_length(a, 5), [[0, 1, 2, 0, 0], [3, 4, 5, 0, 0]])
    np.testing.assert_array_equal(D._fit_length(np.ones(2), 4), [1, 1, 0, 0])


# ----------------------------------------------------------------------------- full band

SR = 44100


def tone(hz: float, n: int, amp: float = 1.0) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * hz * np.arange(n) / SR)).astype(np.float32)


def band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    f = np.fft.rfftfreq(len(x), 1 / SR)
    X = np.abs(np.fft.rfft(x)) ** 2
    return float(X[(f >= lo) & (f < hi)].sum())


def test_full_band_splits_evenly_where_nobody_sings():
    n = SR // 2
    vocals = tone(1000, n) + tone(6000, n, 0.5)
    full = D.full_band_tracks(vocals, SR, np.zeros((2, n * 8000 // SR), np.float32))
    assert full.shape == (2, n) and full.dtype == np.float32
    inner = slice(4096, n - 4096)
    np.testing.assert_allclose(full[0][inner], vocals[inner] / 2, atol=1e-4)
    np.testing.assert_allclose(full[1][inner], vocals[inner] / 2, atol=1e-4)
    full3 = D.full_band_tracks(vocals, SR, np.zeros((3, n * 8000 // SR), np.float32))
    np.testing.assert_allclose(full3[2][inner], vocals[inner] / 3, atol=1e-4)


def test_full_band_high_bins_follow_the_presence_band():
    """Track 0 sings at 3 kHz (inside the 2-3.8 kHz band), track 1 at 1 kHz (below it). Below 3.8 kHz
    each bin goes to whoever has energy in it; from 3.8 kHz on (the vocals' 3.9 and 6 kHz), bins
    follow the 2-3.8 kHz band, so they go to track 0."""
    n = SR
    low8 = 8000
    t8 = np.arange(n * low8 // SR) / low8
    tracks8 = np.stack([np.sin(2 * np.pi * 3000 * t8), np.sin(2 * np.pi * 1000 * t8)]).astype(np.float32)
    vocals = tone(1000, n) + tone(3000, n) + tone(6000, n, 0.5) + tone(3900, n, 0.5) + tone(1500, n, 0.3)
    full = D.full_band_tracks(vocals, SR, tracks8)
    np.testing.assert_allclose(full.sum(0), vocals, atol=1e-4)
    e = lambda k, lo, hi: band_energy(full[k], lo, hi)
    total = lambda lo, hi: band_energy(vocals, lo, hi)
    assert e(0, 5900, 6100) > 0.99 * total(5900, 6100) and e(1, 5900, 6100) < 1e-3 * total(5900, 6100)
    assert e(0, 3850, 3950) > 0.99 * total(3850, 3950)           # 3.9 kHz: above low_hz, follows the band
    assert e(1, 950, 1050) > 0.99 * total(950, 1050) and e(0, 2950, 3050) > 0.99 * total(2950, 3050)


def test_full_band_bins_on_the_edges():
    """At 409.6 kHz the 2048-point STFT has bins every 200 Hz: 2000 Hz is bin 10 (the band's first),
    3800 Hz bin 19 (the first above the band, and the first that follows the band). Track 0 sings
    3800 Hz, track 1 2000 Hz: the band holds track 1's 2000 Hz and only a leak of track 0's 3800 Hz
    (into bin 18), so the vocals' 3800 Hz bin goes mostly to track 1."""
    sr = 409600
    n = sr // 8
    t8 = np.arange(n * 8000 // sr) / 8000
    tracks8 = np.stack([np.sin(2 * np.pi * 3800 * t8), np.sin(2 * np.pi * 2000 * t8)]).astype(np.float32)
    t = np.arange(n) / sr
    vocals = (np.sin(2 * np.pi * 3800 * t) + np.sin(2 * np.pi * 2000 * t)).astype(np.float32)
    full = D.full_band_tracks(vocals, sr, tracks8)

    def near(x, hz):
        X = np.abs(np.fft.rfft(x)) ** 2
        return float(X[np.abs(np.fft.rfftfreq(len(x), 1 / sr) - hz) < 150].sum())
    share = [near(full[k], 3800) / near(vocals, 3800) for k in range(2)]
    # measured: 0.056 and 0.585. 3800 Hz by its own energy (bin 19 below low_hz): 0.75 / 0.02;
    # bin 10 left out of the band, or bin 19 let in: about 0.2 / 0.3
    assert share[0] < 0.1 and share[1] > 0.5, share
    assert near(full[1], 2000) > 0.99 * near(vocals, 2000)
    np.testing.assert_array_equal(full, D.full_band_tracks(vocals, sr, tracks8, nfft=2048))   # the default


def test_full_band_output_has_the_vocals_length():
    """A longer 8 kHz track is cut, a shorter one padded: the output always has the vocals' length."""
    n = 10000
    vocals = tone(500, n)
    for n8 in (n * 8000 // SR - 20, n * 8000 // SR + 20):
        t8 = np.arange(n8) / 8000
        full = D.full_band_tracks(vocals, SR, np.stack([np.sin(2 * np.pi * 500 * t8), 0 * t8]).astype(np.float32))
        assert full.shape == (2, n)
        np.testing.assert_allclose(full.sum(0), vocals, atol=1e-4)


# ----------------------------------------------------------------------------- the stage

class Splitter:
    """MossFormer2 stand-in: per chunk, the part below 1 kHz and the rest (they sum to the chunk)."""

    def __init__(self):
        self.model_dir = Path("/models/split")
        self.calls: list[tuple] = []

    def __call__(self, chunks: np.ndarray) -> np.ndarray:
        self.calls.append(chunks.shape)
        X = np.fft.rfft(chunks, axis=-1)
        f = np.fft.rfftfreq(chunks.shape[-1], 1 / 8000)
        low = np.fft.irfft(X * (f < 1000), n=chunks.shape[-1], axis=-1)
        return np.stack([low, chunks - low], axis=1).astype(np.float32)


def make_ctx(root: Path, vocals: np.ndarray | None, sr: int = SR, stems: list[str] | None = None) -> Context:
    item = Item(id="song", source=str(root / "song.mp4"))
    tmp = root / "items" / "song" / ".tmp-duet_split"
    tmp.mkdir(parents=True)
    if vocals is not None:
        (root / "items/song/bgm_split").mkdir(parents=True)
        write_wav(root / "items/song/bgm_split/vocals.wav", vocals, sr)
    ups = {"ingest": {"stems_singers": stems} if stems else {"audio_44k": "x.wav"},
           "bgm_split": {"vocals": "items/song/bgm_split/vocals.wav", "accompaniment": "a.wav"}}
    return Context(item=item, out=root, tmp=tmp, final=root / "items/song/duet_split",
                   upstream={k: Record(item="song", stage=k, status="done", fingerprint="x", outputs=v)
                             for k, v in ups.items()})


def song(n: int) -> np.ndarray:
    return tone(440, n, 0.3) + tone(2500, n, 0.2)


def test_process_writes_numbered_singers_and_metrics(tmp_path):
    n = SR // 2 + 5                                   # 16 kHz: 8001.81 samples -> 8002 (rounded, not cut)
    mono = song(n)
    ctx = make_ctx(tmp_path, np.stack([mono + 0.1, mono - 0.1], 1))      # stereo: the mean is sung
    sep = Splitter()
    res = D.process(ctx, D.Params(chunk_seconds=0.2, overlap_seconds=0.05), sep)
    assert res.status == "done"
    assert res.outputs == {"singers": ["singer1.wav", "singer2.wav"], "singers_16k": ["singer1_16k.wav", "singer2_16k.wav"]}
    n8 = len(resample(mono, SR, 8000))
    assert sep.calls == [(len(D.chunk_starts(n8, 1600, 400)), 1600)]
    full = [read_wav(ctx.tmp / f"singer{k}.wav") for k in (1, 2)]
    low = [read_wav(ctx.tmp / f"singer{k}_16k.wav") for k in (1, 2)]
    assert [(len(a), s) for a, s in full] == [(n, SR)] * 2 and [(len(a), s) for a, s in low] == [(8002, 16000)] * 2
    np.testing.assert_allclose(full[0][0] + full[1][0], mono, atol=1e-4)
    assert band_energy(full[0][0], 400, 480) > 0.95 * band_energy(mono, 400, 480)      # 440 Hz: the low singer
    assert band_energy(full[1][0], 2400, 2600) > 0.95 * band_energy(mono, 2400, 2600)
    np.testing.assert_allclose(low[0][0], D._fit_length(resample(full[0][0], SR, 16000), 8002), atol=1e-6)
    m = res.metrics
    assert n8 == 4001 and m["chunks"] == 4 and m["model"] == "/models/split"    # starts 0, 1200, 2400, 2401
    assert 0 <= m["residual_ratio"] < 1e-3
    assert m["track_rms"][0] == pytest.approx(0.3 / np.sqrt(2), rel=0.05)
    assert m["track_rms"][1] == pytest.approx(0.2 / np.sqrt(2), rel=0.05)
    assert m["seam_corr_min"] > 0.99 and m["seam_margin_min"] > 0.9
    D.STAGE.check(res)


def test_process_metrics_by_hand_with_a_worst_case_separator(tmp_path):
    """A separator that returns silence: residual |mix| / |mix| = 1; tracks of zero RMS; one chunk, no seam."""
    n = SR // 4
    mono = song(n)
    ctx = make_ctx(tmp_path, mono)                      # mono file
    silent = lambda chunks: np.zeros((len(chunks), 2, chunks.shape[1]), np.float32)
    sep = type("Silent", (), {"__call__": staticmethod(silent), "model_dir": "/m"})()
    res = D.process(ctx, D.Params(full_band=False), sep)
    m = res.metrics
    assert m["chunks"] == 1 and m["seam_corr_min"] is None and m["seam_margin_min"] is None
    assert m["residual_ratio"] == 1.0 and m["track_rms"] == [0.0, 0.0]   # |mix| / |mix|: no better than silence
    a, sr = read_wav(ctx.tmp / "singer1.wav")
    assert sr == SR and len(a) == n and not a.any()


def test_process_without_full_band_only_resamples(tmp_path):
    n = SR // 4
    mono = song(n)
    ctx = make_ctx(tmp_path, mono)
    res = D.process(ctx, D.Params(full_band=False), Splitter())
    full = [read_wav(ctx.tmp / p)[0] for p in res.outputs["singers"]]
    mix8 = resample(mono, SR, 8000)
    tracks8 = Splitter()(mix8[None])[0]
    g = D.lsq_gains(mix8, tracks8)
    for k in range(2):
        want = D._fit_length(resample((tracks8[k] * g[k]).astype(np.float32), 8000, SR), n)
        np.testing.assert_allclose(full[k], want, atol=1e-5)


def test_empty_vocals_are_bad_input(tmp_path):
    ctx = make_ctx(tmp_path, np.zeros((0, 2), np.float32))
    with pytest.raises(BadInput) as e:
        D.process(ctx, D.Params(), Splitter())
    assert str(e.value) == "the vocals track is empty"


def test_supplied_stereo_stems_keep_their_names(tmp_path):
    (tmp_path / "items/song/ingest").mkdir(parents=True)
    left, right = tone(300, 22050), tone(700, 22050)
    write_wav(tmp_path / "items/song/ingest/singer2.wav", np.stack([left, right], 1), 22050)
    write_wav(tmp_path / "items/song/ingest/lead.wav", left, 22050)
    rels = ["items/song/ingest/singer2.wav", "items/song/ingest/lead.wav"]
    ctx = make_ctx(tmp_path, None, stems=rels)
    r = D.process(ctx, D.Params(), None)
    assert (r.status, r.reason) == ("skipped", "stems supplied")
    assert r.outputs == {"singers": rels, "singers_16k": ["singer2_16k.wav", "lead_16k.wav"]}
    a, sr = read_wav(ctx.tmp / "singer2_16k.wav")
    assert sr == 16000 and a.ndim == 1 and len(a) == 16000
    np.testing.assert_allclose(a, resample((left + right) / 2, 22050, 16000), atol=1e-6)   # the mean of L and R
