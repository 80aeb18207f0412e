"""bgm_split stage (chorushead.stages.bgm_split): cases mutation testing showed were not pinned
(docs/mutation-survivors.md). Spleeter (its venv worker) is replaced by stand-ins: a recording
``SpleeterBackend.open`` and ``identity``, and a fake separator whose stems are fixed fractions of the
mix, so the written files and the RMS metrics are worked out by hand. The stage runs in-process;
comments name what each case guards."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chorushead.backends import spleeter as spleeter_backend
from chorushead.core.errors import BadInput
from chorushead.core.manifest import Record
from chorushead.core.media import read_wav, write_wav
from chorushead.stages import bgm_split as B
from chorushead.stages.base import Context, Item, result_params


# ----------------------------------------------------------------------------- params, setup, identity

def test_params_defaults_and_what_counts_for_the_fingerprint():
    p = B.Params()
    assert (p.model, p.model_path, p.python, p.in_process, p.chunk_seconds, p.overlap_seconds,
            p.timeout_seconds) == ("2stems", "", "", "auto", 60.0, 4.0, 7200.0)
    assert result_params(p) == {"model": "2stems", "chunk_seconds": 60.0, "overlap_seconds": 4.0}
    assert B.SR == 44100
    with pytest.raises(ValueError, match=r"overlap_seconds \(5.0\) must be >= 0 and less than chunk_seconds \(5.0\)"):
        B.Params(chunk_seconds=5.0, overlap_seconds=5.0)


def test_setup_and_identity_pass_every_setting(monkeypatch):
    calls = []
    monkeypatch.setattr(B.SpleeterBackend, "open", classmethod(lambda cls, **kw: calls.append(("open", kw)) or "S"))
    monkeypatch.setattr(spleeter_backend, "identity", lambda **kw: calls.append(("identity", kw)) or {"id": 1})
    p = B.Params(model="4stems", model_path="/models", python="/py", in_process="never")
    want = {"python": "/py", "model_path_": "/models", "model": "4stems", "in_process": "never"}
    assert B.setup(p) == "S"
    assert B.identity(p) == {"id": 1}
    assert calls == [("open", want), ("identity", want)]


# ----------------------------------------------------------------------------- _as_stereo

def test_as_stereo_for_each_channel_layout():
    mono = np.array([1.0, 2.0, 3.0], np.float32)
    assert B._as_stereo(mono).tolist() == [[1, 1], [2, 2], [3, 3]]
    one = mono[:, None]
    assert B._as_stereo(one).tolist() == [[1, 1], [2, 2], [3, 3]]
    two = np.array([[1.0, -1.0], [2.0, -2.0]], np.float32)
    assert B._as_stereo(two) is two                                    # stereo: untouched
    six = np.arange(12, dtype=np.float32).reshape(2, 6)                # 5.1: front L/R are the first two
    assert B._as_stereo(six).tolist() == [[0, 1], [6, 7]]
    three = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert B._as_stereo(three).tolist() == [[0, 1], [3, 4]]


# ----------------------------------------------------------------------------- process

class FakeSpleeter:
    """vocals = 0.5 * mix, accompaniment = 0.25 * mix (or only ``names``); records each call."""

    def __init__(self, names=("vocals", "accompaniment"), where="/venv/bin/python"):
        self.names, self.where, self.calls = names, where, []

    def separate(self, mix, workdir, chunk_seconds, overlap_seconds, timeout):
        self.calls.append({"mix": mix, "workdir": workdir, "chunk": chunk_seconds, "overlap": overlap_seconds,
                           "timeout": timeout})
        return {n: mix * {"vocals": 0.5, "accompaniment": 0.25, "drums": 0.1}[n] for n in self.names}


def make_ctx(root: Path, ingest_outputs: dict) -> Context:
    item = Item(id="song", source=str(root / "song.mp4"))
    tmp = root / "items" / "song" / ".tmp-bgm_split"
    tmp.mkdir(parents=True)
    rec = Record(item="song", stage="ingest", status="done", fingerprint="x", outputs=ingest_outputs)
    return Context(item=item, out=root, tmp=tmp, final=root / "items" / "song" / "bgm_split", upstream={"ingest": rec})


def write_mix(root: Path, audio: np.ndarray, sr: int) -> str:
    (root / "items/song/ingest").mkdir(parents=True, exist_ok=True)
    write_wav(root / "items/song/ingest/audio.wav", audio, sr)
    return "items/song/ingest/audio.wav"


def test_process_separates_writes_both_stems_and_measures_them(tmp_path):
    mix = np.tile(np.array([[0.8, -0.4]], np.float32), (44100 * 2, 1))        # 2 s of a constant stereo mix
    ctx = make_ctx(tmp_path, {"audio_44k": write_mix(tmp_path, mix, 44100)})
    sep = FakeSpleeter()
    p = B.Params(chunk_seconds=30.0, overlap_seconds=2.0, timeout_seconds=99.0)
    r = B.STAGE.process(ctx, p, sep)
    B.STAGE.check(r)
    assert r.status == "done"
    assert r.outputs == {"vocals": "vocals.wav", "accompaniment": "accompaniment.wav"}
    (call,) = sep.calls
    assert (call["workdir"], call["chunk"], call["overlap"], call["timeout"]) == (ctx.tmp, 30.0, 2.0, 99.0)
    np.testing.assert_array_equal(call["mix"], mix)
    for name, k in (("vocals", 0.5), ("accompaniment", 0.25)):
        a, sr = read_wav(ctx.tmp / f"{name}.wav")
        assert sr == 44100 and a.shape == mix.shape and a.dtype == np.float32
        np.testing.assert_allclose(a, k * mix, atol=1e-7)
    # RMS over both channels: sqrt((0.4^2 + 0.2^2) / 2) for the vocals, half that for the accompaniment
    assert r.metrics["seconds_audio"] == 2.0
    assert r.metrics["vocals_rms"] == pytest.approx(np.sqrt(0.1), rel=1e-6)
    assert r.metrics["accompaniment_rms"] == pytest.approx(np.sqrt(0.1) / 2, rel=1e-6)
    assert r.metrics["spleeter"] == "/venv/bin/python"
    assert set(r.metrics) == {"seconds_audio", "vocals_rms", "accompaniment_rms", "spleeter"}


def test_rms_is_summed_in_float64(tmp_path):
    # float32 squares summed over 10 s: a large-mean float32 sum drifts; the metric must not
    mix = np.full((441000, 2), 0.1, np.float32)
    mix[::2] = 0.3
    ctx = make_ctx(tmp_path, {"audio_44k": write_mix(tmp_path, mix, 44100)})
    r = B.STAGE.process(ctx, B.Params(), FakeSpleeter())
    exact = np.sqrt(np.mean(np.square(0.5 * mix.astype(np.float64))))
    assert abs(r.metrics["vocals_rms"] - exact) < 1e-9


def test_process_resamples_a_mono_48k_mix_to_stereo_44k(tmp_path):
    t = np.arange(4800) / 48000                       # 0.1 s
    mono = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    ctx = make_ctx(tmp_path, {"audio_44k": write_mix(tmp_path, mono, 48000)})
    sep = FakeSpleeter()
    r = B.STAGE.process(ctx, B.Params(), sep)
    got = sep.calls[0]["mix"]
    assert got.shape == (4410, 2) and got.dtype == np.float32
    np.testing.assert_array_equal(got[:, 0], got[:, 1])
    t44 = np.arange(4410) / 44100
    np.testing.assert_allclose(got[500:-500, 0], 0.5 * np.sin(2 * np.pi * 440 * t44[500:-500]), atol=1e-3)
    assert r.metrics["seconds_audio"] == 4410 / 44100
    a, sr = read_wav(ctx.tmp / "vocals.wav")
    assert sr == 44100 and a.shape == (4410, 2)


def test_a_44k_mix_is_passed_on_unresampled(tmp_path):
    rng = np.random.default_rng(0)
    mix = rng.uniform(-0.5, 0.5, (1000, 2)).astype(np.float32)
    ctx = make_ctx(tmp_path, {"audio_44k": write_mix(tmp_path, mix, 44100)})
    sep = FakeSpleeter()
    B.STAGE.process(ctx, B.Params(), sep)
    np.testing.assert_array_equal(sep.calls[0]["mix"], mix)


@pytest.mark.parametrize("stems", [{"stems_vocals": "items/song/ingest/stems/vocals.wav"},
                                   {"stems_accompaniment": "items/song/ingest/stems/accompaniment.wav"}])
def test_one_supplied_stem_is_not_enough_to_skip(tmp_path, stems):
    mix = np.full((100, 2), 0.1, np.float32)
    ctx = make_ctx(tmp_path, {"audio_44k": write_mix(tmp_path, mix, 44100), **stems})
    sep = FakeSpleeter()
    r = B.STAGE.process(ctx, B.Params(), sep)
    assert r.status == "done" and len(sep.calls) == 1 and r.outputs["vocals"] == "vocals.wav"


def test_no_audio_and_no_stems_is_refused(tmp_path):
    ctx = make_ctx(tmp_path, {})
    with pytest.raises(BadInput) as e:
        B.STAGE.process(ctx, B.Params(), FakeSpleeter())
    assert str(e.value) == "the video has no audio track and no stems were supplied"


def test_an_empty_audio_track_is_refused(tmp_path):
    ctx = make_ctx(tmp_path, {"audio_44k": write_mix(tmp_path, np.zeros((0, 2), np.float32), 44100)})
    sep = FakeSpleeter()
    with pytest.raises(BadInput) as e:
        B.STAGE.process(ctx, B.Params(), sep)
    assert str(e.value) == "the video's audio track is empty"
    assert sep.calls == []


@pytest.mark.parametrize("names,missing", [(("vocals",), "accompaniment"), (("accompaniment", "drums"), "vocals")])
def test_a_model_without_a_stem_is_named(tmp_path, names, missing):
    ctx = make_ctx(tmp_path, {"audio_44k": write_mix(tmp_path, np.full((100, 2), 0.1, np.float32), 44100)})
    with pytest.raises(BadInput) as e:
        B.STAGE.process(ctx, B.Params(model="odd"), FakeSpleeter(names=names))
    assert str(e.value) == f"Spleeter model odd gave no '{missing}' stem (got {sorted(names)})"
