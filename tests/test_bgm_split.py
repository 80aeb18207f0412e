"""bgm_split: Spleeter through its own venv. The integration tests run the REAL worker on a
random-weight model (Spleeter runs untrained weights when ``$MODEL_PATH/2stems/.probe`` exists and no
checkpoint does). They are skipped only when the Spleeter venv is not built."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chorushead.backends import spleeter as sp
from chorushead.backends.crossfade import chunk_starts
from chorushead.backends.spleeter_worker import separate_chunked
from chorushead.core.manifest import Record
from chorushead.core.media import read_wav, write_wav
from chorushead.core.errors import MissingAsset
from chorushead.stages.base import Context, Item
from chorushead.stages.bgm_split import STAGE, Params

SR = 44100


def make_ctx(root: Path, ingest_outputs: dict) -> Context:
    item = Item(id="song", source=str(root / "song.mp4"))
    final = root / "items" / "song" / "bgm_split"
    tmp = root / "items" / "song" / ".bgm_split.tmp"
    tmp.mkdir(parents=True)
    rec = Record(item="song", stage="ingest", status="done", fingerprint="x", outputs=ingest_outputs)
    return Context(item=item, out=root, tmp=tmp, final=final, upstream={"ingest": rec})


def spleeter_python() -> str | None:
    return sp.find_spleeter_python()


needs_venv = pytest.mark.skipif(
    spleeter_python() is None,
    reason=f"Spleeter venv not built (looked for {sp.spleeter_pythons()}); run scripts/setup_spleeter_env.sh")


def random_weight_models(root: Path) -> Path:
    (root / "models" / "2stems").mkdir(parents=True)
    (root / "models" / "2stems" / ".probe").touch()
    return root / "models"


# ---------------------------------------------------------------- fast tests, no Spleeter needed

def test_chunking_covers_long_songs_without_truncation():
    """A 700 s song (past Spleeter's 600 s default cut) comes back whole; with a pointwise 'separator'
    the chunked result must equal the whole-song result exactly, cross-fades included."""
    sr = 4000          # the chunking is rate-agnostic; a low rate keeps 700 s cheap to test
    n = 700 * sr + 123
    mix = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    fn = lambda x: {"vocals": np.tanh(x), "accompaniment": x - np.tanh(x)}  # noqa: E731
    out = separate_chunked(mix, fn, chunk=60 * sr, overlap=4 * sr)
    assert out["vocals"].shape == mix.shape
    np.testing.assert_allclose(out["vocals"], np.tanh(mix), atol=1e-5)
    np.testing.assert_allclose(out["vocals"] + out["accompaniment"], mix, atol=1e-5)


def test_chunk_starts():
    assert chunk_starts(10, 20, 2) == [0]
    s = chunk_starts(100, 30, 5)
    assert s[0] == 0 and s[-1] == 70 and all(b - a <= 25 for a, b in zip(s, s[1:]))


def test_missing_model_says_how_to_get_it(tmp_path):
    with pytest.raises(MissingAsset) as e:
        STAGE.setup(Params(model_path=str(tmp_path / "nothing")))
    msg = str(e.value)
    assert "2stems" in msg and str(tmp_path / "nothing") in msg and ".probe" in msg


def test_checkpoint_without_probe_is_explained(tmp_path):
    (tmp_path / "2stems").mkdir()
    (tmp_path / "2stems" / "checkpoint").write_text("x")
    with pytest.raises(MissingAsset, match="touch"):
        STAGE.setup(Params(model_path=str(tmp_path)))


def test_missing_venv_says_how_to_build_it(tmp_path):
    models = random_weight_models(tmp_path)
    with pytest.raises(MissingAsset) as e:
        STAGE.setup(Params(model_path=str(models), python=str(tmp_path / "no-venv" / "bin" / "python")))
    assert "setup_spleeter_env.sh" in str(e.value) and "no-venv" in str(e.value)


def test_supplied_stems_skip(tmp_path):
    ctx = make_ctx(tmp_path, {"audio_44k": "items/song/ingest/audio.wav",
                              "stems_vocals": "items/song/ingest/stems/vocals.wav",
                              "stems_accompaniment": "items/song/ingest/stems/accompaniment.wav"})
    r = STAGE.process(ctx, Params(), None)
    assert r.status == "skipped" and r.reason == "stems supplied"
    assert r.outputs == {"vocals": "items/song/ingest/stems/vocals.wav",
                         "accompaniment": "items/song/ingest/stems/accompaniment.wav"}


# ---------------------------------------------------------------- the real worker

@pytest.mark.slow
@needs_venv
def test_real_worker_separates_and_keeps_length(tmp_path):
    models = random_weight_models(tmp_path)
    rng = np.random.default_rng(1)
    t = np.arange(int(3.2 * SR)) / SR
    mix = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)], 1)
    mix = (mix + 0.05 * rng.standard_normal(mix.shape)).astype(np.float32)
    (tmp_path / "items" / "song" / "ingest").mkdir(parents=True)
    write_wav(tmp_path / "items/song/ingest/audio.wav", mix, SR)
    params = Params(model_path=str(models), chunk_seconds=2.0, overlap_seconds=0.5)  # 2 chunks
    backend = STAGE.setup(params)
    try:
        assert backend.worker is not None, "the project env must not import spleeter; it runs in its venv"
        for _ in range(2):                     # the worker serves several songs
            ctx = make_ctx(tmp_path / f"run{_}", {"audio_44k": "../items/song/ingest/audio.wav"})
            r = STAGE.process(ctx, params, backend)
            assert r.status == "done"
            for name in ("vocals", "accompaniment"):
                a, sr = read_wav(ctx.tmp / r.outputs[name])
                assert sr == SR and a.shape == mix.shape and a.dtype == np.float32
                assert np.isfinite(a).all() and np.abs(a).max() > 0
            assert not list(ctx.tmp.glob("*.npy")), "worker scratch files must be cleaned up"
    finally:
        backend.close()
    assert backend.worker is None
