"""`pachorus infer --song`: a mixed song separated by the build's own stages (through `chorushead separate`,
a child process) and animated. The separators are the random-weight models the build tests use: Spleeter
in its venv with a ``.probe`` model, a tiny MossFormer2 folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from chorushead.backends import spleeter as sp
from chorushead.core.media import load_audio, read_wav
from pachorus.cli import app

TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--latent", "4", "--threads", "1", "--no-progress"]
SECONDS = 6.0


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def spleeter_models(root: Path) -> Path:
    """Spleeter runs untrained weights when <model_path>/2stems/.probe exists (see test_bgm_split)."""
    (root / "2stems").mkdir(parents=True)
    (root / "2stems" / ".probe").touch()
    return root


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    """The demo's generated duet: its mix (two synthesised voices + music) as a wav."""
    from chorushead.sample import write_sample
    _, stems, _ = write_sample(tmp_path_factory.mktemp("song"), seconds=SECONDS, size=(128, 256), absent_s=None)
    return stems / "duet_sample" / "mix.wav"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    res = cli("synth", "--out", root / "d.lmdb", "--videos", "3", "--seconds", "3", "--window", "25",
              "--stride", "25", "--fps", "25")
    assert res.exit_code == 0, res.stderr
    res = cli("train", "--data", root / "d.lmdb", "--out", root / "run", "--epochs", "1", "--batch-size", "2", *TINY)
    assert res.exit_code == 0, res.stderr
    return root / "run" / "model.pt"


@pytest.mark.slow
@pytest.mark.skipif(sp.find_spleeter_python() is None, reason="Spleeter venv not built (scripts/setup_spleeter_env.sh)")
def test_infer_song_separates_as_the_build_and_animates_each_voice(song, ckpt, tmp_path):
    from chorushead.backends.mossformer2 import write_random_model
    m2 = write_random_model(tmp_path / "m2", num_blocks=2, channels=32)
    models = spleeter_models(tmp_path / "spleeter")
    out = tmp_path / "inf"
    res = cli("infer", "--ckpt", ckpt, "--song", song, "--out", out, "-k", "1",
              "--set", f"bgm_split.model_path={models}", "--set", f"duet_split.model={m2}",
              "--set", "duet_split.device=cpu", "--set", "duet_split.chunk_seconds=2.0",
              "--set", "duet_split.overlap_seconds=0.5")
    assert res.exit_code == 0, (res.stdout, res.stderr)
    # the order note: without a video, the separator's order, said on stderr and in the result
    assert "singer order is the separator's" in res.stderr
    result = json.loads(res.stdout)
    assert result["separation"]["order_source"] == "separator" and result["singers"] == 2

    sep_dir = out / "separation"
    sep = json.loads((sep_dir / "separation.json").read_text())
    assert sep["singers"] == ["singer1.wav", "singer2.wav"] and sep["order"] == [0, 1]
    assert sep["models"]["mossformer2"] == str(m2) and sep["models"]["spleeter"].startswith("2stems")
    # the build's guarantees: vocals + accompaniment give the mix back (Spleeter's masks, chunk
    # cross-fades), the singers give the vocals back (duet_split's full-band masks sum to one)
    mix = load_audio(song, 44100, mono=False)
    vocals, sr = read_wav(sep_dir / "vocals.wav")
    acc, _ = read_wav(sep_dir / "accompaniment.wav")
    assert sr == 44100 and vocals.shape == acc.shape == mix.shape
    rms = lambda a: float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))  # noqa: E731
    assert rms(vocals + acc - mix) < 0.05 * rms(mix)
    singers = [read_wav(sep_dir / f"singer{k}.wav")[0] for k in (1, 2)]
    assert all(s.shape == (len(mix),) for s in singers)
    assert rms(singers[0] + singers[1] - vocals.mean(axis=1)) < 1e-4 * rms(vocals)
    assert min(rms(s) for s in singers) > 0
    # the same tracks as the build's own records (no re-implementation): duet_split's singer files
    build = Path(sep["build"])
    from chorushead.core.manifest import iter_records
    rec = next(iter(iter_records(build, ["duet_split"])["duet_split"].values()))
    assert np.array_equal(read_wav(build / rec.outputs["singers"][0])[0], singers[0])
    # one coefficient file per singer, 25 fps (the checkpoint's) over the song
    for k in (1, 2):
        coeffs = np.load(out / f"singer{k}_sample0.npy")
        assert coeffs.shape == (int(SECONDS * 25), 56) and np.isfinite(coeffs).all()


@pytest.mark.slow
@pytest.mark.skipif(sp.find_spleeter_python() is None, reason="Spleeter venv not built (scripts/setup_spleeter_env.sh)")
def test_infer_song_video_orders_singers_by_the_build_assign_step(ckpt, tmp_path):
    """A video as the song: vad, crop, fit (open landmark backend), smooth and assign run as in the
    build, and singer k is the track assign gave the k-th face."""
    from chorushead.backends import landmarks as lm
    from chorushead.backends.mossformer2 import write_random_model
    from chorushead.core.manifest import iter_records
    from chorushead.sample import write_sample
    if lm.find_landmark_python() is None and not lm.in_process_available():
        pytest.skip(f"landmark env not built (looked for {lm.landmark_pythons()})")
    video, _, _ = write_sample(tmp_path / "v", seconds=8.0, absent_s=None)
    m2 = write_random_model(tmp_path / "m2", num_blocks=2, channels=32)
    out = tmp_path / "inf"
    res = cli("infer", "--ckpt", ckpt, "--song", video, "--video", video, "--out", out, "-k", "1",
              "--set", f"bgm_split.model_path={spleeter_models(tmp_path / 'spleeter')}",
              "--set", f"duet_split.model={m2}", "--set", "duet_split.device=cpu",
              "--set", "duet_split.chunk_seconds=2.0", "--set", "duet_split.overlap_seconds=0.5",
              "--set", "fit.backend=landmarks")
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert "k-th face from the left" in res.stderr
    sep = json.loads((out / "separation" / "separation.json").read_text())
    assert sep["order_source"] == "assign (video)" and sep["models"]["fit"] == "landmarks"
    build = Path(sep["build"])
    latest = iter_records(build, ["duet_split", "assign"])
    (duet,), (assigned,) = latest["duet_split"].values(), latest["assign"].values()
    assert assigned.status == "done" and sep["order"] == assigned.outputs["order"]
    assert sep["confidence"] == assigned.outputs["confidence"]
    for k, j in enumerate(sep["order"], start=1):
        assert np.array_equal(read_wav(out / "separation" / f"singer{k}.wav")[0],
                              read_wav(build / duet.outputs["singers"][j])[0])
        assert np.load(out / f"singer{k}_sample0.npy").shape == (8 * 25, 56)


def test_missing_separation_model_is_one_line_exit_2(song, tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")   # never loaded: the separation fails first
    res = cli("infer", "--ckpt", ckpt, "--song", song, "--out", tmp_path / "inf",
              "--set", f"bgm_split.model_path={tmp_path / 'nothing'}")
    assert res.exit_code == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pachorus: error: separating mix.wav: bgm_split: "), res.stderr
    assert "Spleeter model '2stems' not found" in lines[0] and str(tmp_path / "nothing") in lines[0]
    assert not list((tmp_path / "inf").glob("singer*_sample*.npy"))


def test_song_and_tracks_are_exclusive(song, tmp_path):
    res = cli("infer", "--ckpt", tmp_path / "m.pt", "--song", song, "--vocals", song, song, "--bgm", song,
              "--out", tmp_path / "inf")
    assert res.exit_code == 2 and "either --song or --vocals" in res.stderr
    res = cli("infer", "--ckpt", tmp_path / "m.pt", "--out", tmp_path / "inf")
    assert res.exit_code == 2 and "--song mix.wav" in res.stderr
    assert not (tmp_path / "inf").exists()


def test_ingest_takes_an_audio_only_song(song, ctx_factory):
    from chorushead.core.errors import BadInput
    from chorushead.stages import ingest
    ctx = ctx_factory("ingest", {}, source=str(song))
    res = ingest.process(ctx, ingest.Params(), None)
    ingest.STAGE.check(res)
    got = res.outputs
    assert (got["width"], got["height"], got["n_frames"], got["fps"]) == (0, 0, int(SECONDS * 30), 30)
    mix, sr = read_wav(ctx.tmp / got["audio_44k"])
    assert sr == 44100 and mix.shape == (int(SECONDS * 44100), 2)
    with pytest.raises(BadInput, match="at least 8"):
        ingest.process(ctx_factory("ingest", {}, source=str(song)), ingest.Params(min_seconds=8.0), None)


def test_separate_refuses_a_mix_with_another_video_and_a_second_song(song, tmp_path):
    from chorushead.core.errors import BadInput
    from chorushead.runner import Pipeline, save_items
    from chorushead.separate import _item, separate
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    with pytest.raises(BadInput, match="pass the video itself as --song clip.mp4"):
        separate(song, tmp_path / "a", Pipeline.load(), video=video)
    save_items(tmp_path / "b" / "build", [_item(video)])
    with pytest.raises(ValueError, match="another song"):
        separate(song, tmp_path / "b", Pipeline.load())
    assert not (tmp_path / "a").exists()
