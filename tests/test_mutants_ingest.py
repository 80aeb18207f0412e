"""Tests that kill the mutants of chorushead/stages/ingest.py that survived the existing tests
(docs/mutation-survivors.md, `scripts/mutation.sh ingest`). ``media.probe`` and ``media.load_audio`` are
replaced by recorders where exact lengths matter (they return what the test chose and record how they
were asked: file, rate, mono), so outputs, metrics and every refusal line are worked out by hand; the
WAV header reader gets hand-made headers; one test runs the real ffmpeg on a tiny video.
"""
from __future__ import annotations

import re
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from chorushead.core import media
from chorushead.core.errors import BadInput
from chorushead.stages import ingest

SR = ingest.MIX_SR


def full(msg: str) -> str:
    return "^" + re.escape(msg) + "$"


# ------------------------------------------------------------------------------------ stem files
def _stems(folder: Path, names) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        media.write_wav(folder / n, np.zeros(10, np.float32), SR)
    return folder


def test_stem_files_in_the_users_numbers(tmp_path):
    f = _stems(tmp_path / "s", ["vocals.wav", "accompaniment.wav"] + [f"singer{k}.wav" for k in (10, 2, 1, 3, 4, 5, 6, 7,
                                                                                                 8, 9)])
    vocals, acc, singers = ingest._stem_files(f)
    assert (vocals, acc) == (f / "vocals.wav", f / "accompaniment.wav")
    assert [p.name for p in singers] == [f"singer{k}.wav" for k in range(1, 11)]     # 10 after 9, not after 1
    f = _stems(tmp_path / "two", ["vocals.wav", "accompaniment.wav", "singer1.wav", "singer2.wav"])
    assert [p.name for p in ingest._stem_files(f)[2]] == ["singer1.wav", "singer2.wav"]   # two is enough


@pytest.mark.parametrize("bad", ["singer_b.wav", "singer2.wav.wav", "singers.wav"])
def test_a_singer_file_not_named_by_number_is_refused(tmp_path, bad):
    f = _stems(tmp_path / "s", ["vocals.wav", "accompaniment.wav", "singer1.wav", bad])
    msg = f"stems folder {f}: {bad} is not named singer<number>.wav (singer1.wav, singer2.wav...)"
    with pytest.raises(BadInput, match=full(msg)):
        ingest._stem_files(f)


@pytest.mark.parametrize("names, missing", [
    (["accompaniment.wav", "singer1.wav", "singer2.wav"], "['vocals.wav']"),
    (["vocals.wav", "singer1.wav", "singer2.wav"], "['accompaniment.wav']"),
    (["vocals.wav", "accompaniment.wav", "singer1.wav"], "['singerN.wav (at least 2)']"),
    (["singer1.wav"], "['vocals.wav', 'accompaniment.wav', 'singerN.wav (at least 2)']")])
def test_missing_stems_are_named(tmp_path, names, missing):
    f = _stems(tmp_path / "s", names)
    msg = (f"stems folder {f} needs vocals.wav, accompaniment.wav and singer1.wav, singer2.wav...; "
           f"missing: {missing}")
    with pytest.raises(BadInput, match=full(msg)):
        ingest._stem_files(f)


@pytest.mark.parametrize("numbers, n", [((1, 3), 2), ((0, 1), 2), ((2, 3, 4), 3)])
def test_singers_must_be_numbered_from_one_without_gaps(tmp_path, numbers, n):
    f = _stems(tmp_path / "s", ["vocals.wav", "accompaniment.wav"] + [f"singer{k}.wav" for k in numbers])
    msg = (f"stems folder {f}: singers are numbered {sorted(numbers)}; number them 1..{n} without gaps "
           "(singer1.wav, singer2.wav...), so singer k is the same singer in every output")
    with pytest.raises(BadInput, match=full(msg)):
        ingest._stem_files(f)


# ------------------------------------------------------------------------------------- WAV header
def _chunk(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def _fmt(rate: int) -> bytes:
    return _chunk(b"fmt ", struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32))


def _wav(path: Path, riff: bytes, kind: bytes, *chunks: bytes) -> Path:
    body = kind + b"".join(chunks)
    path.write_bytes(riff + struct.pack("<I", len(body)) + body)
    return path


def _rate(path: Path):
    """_wav_rate in a daemon thread: a reader that seeks wrongly between chunks never ends, which fails here."""
    got = []

    def run():
        try:
            got.append(ingest._wav_rate(path))
        except BadInput as e:
            got.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(2)
    assert got, f"_wav_rate({path.name}) did not return"
    if isinstance(got[0], BadInput):
        raise got[0]
    return got[0]


def test_wav_rate_reads_the_format_chunk(tmp_path):
    p = tmp_path / "a.wav"
    media.write_wav(p, np.zeros(5, np.float32), 22050)
    assert ingest._wav_rate(p) == 22050
    # a chunk of odd length (padded to even) and one of even length before the format chunk
    b = _wav(tmp_path / "b.wav", b"RIFF", b"WAVE", _chunk(b"LIST", b"abc"), _chunk(b"JUNK", b"abcdef"), _fmt(48000),
             _chunk(b"data", b"\0" * 8))
    assert _rate(b) == 48000
    assert _rate(_wav(tmp_path / "c.wav", b"RF64", b"WAVE", _chunk(b"ds64", b"\0" * 28), _fmt(96000))) == 96000


@pytest.mark.parametrize("riff, kind", [(b"RIFX", b"WAVE"), (b"RIFF", b"AVI "), (b"OggS", b"WAVE")])
def test_wav_rate_refuses_what_is_not_a_wav(tmp_path, riff, kind):
    p = _wav(tmp_path / "x.wav", riff, kind, _fmt(44100))
    with pytest.raises(BadInput, match=full("x.wav: not a WAV file (stems must be .wav)")):
        ingest._wav_rate(p)


def test_wav_rate_without_a_format_chunk(tmp_path):
    msg = "y.wav: WAV file without a format chunk (damaged?)"
    p = _wav(tmp_path / "y.wav", b"RIFF", b"WAVE", _chunk(b"LIST", b"abc"), _chunk(b"data", b"\0" * 4))
    with pytest.raises(BadInput, match=full(msg)):
        _rate(p)
    p = _wav(tmp_path / "y.wav", b"RIFF", b"WAVE", _chunk(b"data", b"\0" * 4), b"fmt ")   # a cut chunk header
    with pytest.raises(BadInput, match=full(msg)):
        _rate(p)


# ------------------------------------------------------------------------------------ stem checks
def test_check_stems_lines():
    # 40 s video: refused beyond min(5, 4) = 4 s, warned beyond 0.5 s
    warnings, worst = ingest._check_stems("v.mp4", 40.0, {"vocals": (40.75, 44100), "singer1": (39.0, 44100),
                                                          "singer2": (40.0, 44100)})
    assert warnings == ["stem vocals is 40.75 s, the video 40.00 s (+0.75 s)",
                        "stem singer1 is 39.00 s, the video 40.00 s (-1.00 s)"]
    assert worst == pytest.approx(1.0)
    msg = ("v.mp4: stem singer1 is 35.50 s but the video is 40.00 s (-4.50 s); these stems are from another cut "
           "of the song: supply this video's stems")
    with pytest.raises(BadInput, match=full(msg)):
        ingest._check_stems("v.mp4", 40.0, {"vocals": (40.0, 44100), "singer1": (35.5, 44100)})
    # 8 s video: 10 % is 0.8 s but never under 1 s: 8.9 s is warned, not refused
    warnings, worst = ingest._check_stems("v.mp4", 8.0, {"vocals": (8.9, 44100)})
    assert warnings == ["stem vocals is 8.90 s, the video 8.00 s (+0.90 s)"] and worst == pytest.approx(0.9)
    with pytest.raises(BadInput, match="another cut"):
        ingest._check_stems("v.mp4", 8.0, {"vocals": (9.1, 44100)})
    # 200 s video: 10 % is 20 s but at most 5 s
    with pytest.raises(BadInput, match="another cut"):
        ingest._check_stems("v.mp4", 200.0, {"vocals": (205.5, 44100)})
    assert ingest._check_stems("v.mp4", 200.0, {"vocals": (204.5, 44100)})[1] == pytest.approx(4.5)


def test_check_stems_rates():
    same = {"vocals": (10.0, 48000), "accompaniment": (10.0, 48000), "singer1": (10.0, 48000)}
    assert ingest._check_stems("v.mp4", 10.0, same) == ([], 0.0)
    odd = {"vocals": (10.0, 22050), "accompaniment": (10.0, 48000), "singer1": (10.0, 48000), "singer2": (10.0, 44100)}
    warnings, _ = ingest._check_stems("v.mp4", 10.0, odd)
    assert warnings == ["stem vocals is at 22050 Hz, the other stems at 48000 Hz (from another source?)",
                        "stem singer2 is at 44100 Hz, the other stems at 48000 Hz (from another source?)"]


# ----------------------------------------------------------------------------------- length
@pytest.mark.parametrize("duration, fps, msg", [
    (4.99, 30, "x.mp4: 4.99 s long; a segment needs at least 5 s (150 frames at 30 fps)."),
    (0.0, 25, "x.mp4: 0.00 s long; a segment needs at least 5 s (125 frames at 25 fps)."),
    (10800.5, 30, "x.mp4: 3.0 h is longer than max_seconds=10800; split it or raise the limit with "
                  "--set ingest.max_seconds=..."),
    (35823.6, 30, "x.mp4: 10.0 h is longer than max_seconds=10800; split it or raise the limit with "
                  "--set ingest.max_seconds=...")])                # 9.951 h
def test_check_length_lines(duration, fps, msg):
    with pytest.raises(BadInput, match=full(msg)):
        ingest._check_length(Path("/v/x.mp4"), duration, ingest.Params(), fps)


def test_check_length_bounds_are_inclusive():
    p = ingest.Params(min_seconds=6.5, max_seconds=7.25)
    assert (p.min_seconds, p.max_seconds, ingest.Params().max_seconds) == (6.5, 7.25, 10800.0)
    assert ingest._check_length(Path("x.mp4"), 6.5, p, 30) is None
    assert ingest._check_length(Path("x.mp4"), 7.25, p, 30) is None
    with pytest.raises(BadInput, match=full("x.mp4: 6.40 s long; a segment needs at least 6.5 s (195 frames at 30 fps).")):
        ingest._check_length(Path("x.mp4"), 6.4, p, 30)
    with pytest.raises(BadInput, match=re.escape("x.mp4: 0.0 h is longer than max_seconds=7.25; ")):
        ingest._check_length(Path("x.mp4"), 7.3, p, 30)


# ---------------------------------------------------------------------------------- process
@pytest.fixture
def fake_media(monkeypatch):
    """media.probe -> ``log["probe"]`` (a Probe); media.load_audio -> ``log["audio"][name]`` seconds of a
    ramp, stereo or mono as asked; every call recorded."""
    log = {"probe": None, "audio": {}, "loads": [], "probes": []}

    def probe(path):
        log["probes"].append(Path(path).name)
        return log["probe"]

    def load_audio(path, sr, mono=True, **kw):
        log["loads"].append((Path(path).name, sr, mono, kw))
        n = int(round(log["audio"][Path(path).name] * sr))
        a = (np.arange(n, dtype=np.float32) % 100) / 100
        return a if mono else np.stack([a, -a], 1)
    monkeypatch.setattr(media, "probe", probe)
    monkeypatch.setattr(media, "load_audio", load_audio)
    return log


def _probe(duration=12.0, has_audio=True, width=640, height=360, fps=29.97):
    return media.Probe(duration=duration, width=width, height=height, fps=fps, video_codec="h264",
                       has_audio=has_audio, audio_rate=48000 if has_audio else None,
                       audio_channels=2 if has_audio else None)


def _ctx(ctx_factory, source, stems=None, fps=30):
    ctx = ctx_factory("ingest", {}, source=str(source))
    ctx.item.stems = str(stems) if stems else None
    ctx.fps = fps
    return ctx


def test_a_video_with_audio(ctx_factory, fake_media):
    fake_media["probe"] = _probe(duration=12.34567)
    fake_media["audio"]["clip.mp4"] = 12.34567
    ctx = _ctx(ctx_factory, "/raw/clip.mp4", fps=25)
    res = ingest.process(ctx, ingest.Params(), None)
    ingest.STAGE.check(res)
    assert res.outputs == {"source": "/raw/clip.mp4", "n_frames": 308, "fps": 25, "width": 640, "height": 360,
                           "duration": 12.34567, "source_fps": 29.97, "audio_44k": "mix_44k.wav"}
    assert res.metrics == {"seconds_of_video": 12.346, "frames": 308, "resolution": "640x360", "source_fps": 29.97,
                           "warnings": []}
    assert fake_media["loads"] == [("clip.mp4", SR, False, {})] and fake_media["probes"] == ["clip.mp4"]
    mix, sr = media.read_wav(ctx.tmp / "mix_44k.wav")
    assert sr == SR and mix.shape == (round(12.34567 * SR), 2)
    assert res.status == "done" and not list(ctx.tmp.glob("stems"))


def test_a_video_without_audio_needs_stems(ctx_factory, fake_media):
    fake_media["probe"] = _probe(has_audio=False)
    msg = ("clip.mp4: the video has no audio stream; ChorusHead needs the song (or supply per-singer stems "
           "with --stems DIR).")
    with pytest.raises(BadInput, match=full(msg)):
        ingest.process(_ctx(ctx_factory, "/raw/clip.mp4"), ingest.Params(), None)
    assert fake_media["loads"] == []


def test_a_video_too_short_is_refused_before_decoding(ctx_factory, fake_media):
    fake_media["probe"] = _probe(duration=4.0)
    with pytest.raises(BadInput, match=full("clip.mp4: 4.00 s long; a segment needs at least 5 s "
                                            "(150 frames at 30 fps).")):
        ingest.process(_ctx(ctx_factory, "/raw/clip.mp4"), ingest.Params(), None)
    assert fake_media["loads"] == []


def test_an_audio_stream_that_decodes_to_nothing(ctx_factory, fake_media):
    fake_media["probe"] = _probe()
    fake_media["audio"]["clip.mp4"] = 0.0
    with pytest.raises(BadInput, match=full("clip.mp4: the audio stream decodes to nothing (damaged file?)")):
        ingest.process(_ctx(ctx_factory, "/raw/clip.mp4"), ingest.Params(), None)


def test_an_audio_file_is_a_song_without_a_picture(ctx_factory, fake_media):
    fake_media["audio"]["mix.FLAC"] = 7.5
    ctx = _ctx(ctx_factory, "/raw/mix.FLAC", fps=24)
    res = ingest.process(ctx, ingest.Params(), None)
    ingest.STAGE.check(res)
    assert res.outputs == {"source": "/raw/mix.FLAC", "n_frames": 180, "fps": 24, "width": 0, "height": 0,
                           "duration": 7.5, "source_fps": 0.0, "audio_44k": "mix_44k.wav"}
    assert res.metrics == {"seconds_of_video": 7.5, "frames": 180, "resolution": "audio only", "source_fps": 0.0,
                           "warnings": []}
    assert fake_media["probes"] == [] and fake_media["loads"] == [("mix.FLAC", SR, False, {})]
    mix, sr = media.read_wav(ctx.tmp / "mix_44k.wav")
    assert sr == SR and mix.shape == (round(7.5 * SR), 2)
    fake_media["audio"]["mix.FLAC"] = 1 / 3 + 5                     # seconds rounded to 3 places in the metrics
    assert ingest.process(ctx, ingest.Params(), None).metrics["seconds_of_video"] == 5.333


def test_an_audio_file_too_short_or_empty(ctx_factory, fake_media):
    fake_media["audio"]["mix.wav"] = 0.0
    with pytest.raises(BadInput, match=full("mix.wav: the audio decodes to nothing (damaged file?)")):
        ingest.process(_ctx(ctx_factory, "/raw/mix.wav"), ingest.Params(), None)
    fake_media["audio"]["mix.wav"] = 3.0
    with pytest.raises(BadInput, match=full("mix.wav: 3.00 s long; a segment needs at least 5 s (100 frames at 20 fps).")):
        ingest.process(_ctx(ctx_factory, "/raw/mix.wav", fps=20), ingest.Params(), None)


def test_an_audio_file_with_stems_goes_the_video_way(ctx_factory, fake_media, tmp_path):
    stems = _stems(tmp_path / "st", ["vocals.wav", "accompaniment.wav", "singer1.wav", "singer2.wav"])
    fake_media["probe"] = _probe(duration=10.0, has_audio=False)
    fake_media["audio"].update({"vocals.wav": 10.0, "accompaniment.wav": 10.0, "singer1.wav": 10.0, "singer2.wav": 10.0})
    res = ingest.process(_ctx(ctx_factory, "/raw/mix.wav", stems=stems), ingest.Params(), None)
    assert fake_media["probes"] == ["mix.wav"] and "audio_44k" not in res.outputs


def test_stems_are_imported_with_their_names_and_checked(ctx_factory, fake_media, tmp_path):
    stems = _stems(tmp_path / "st", ["vocals.wav", "accompaniment.wav", "singer1.wav", "singer2.wav"])
    media.write_wav(stems / "singer2.wav", np.zeros(10, np.float32), 22050)     # another rate than the rest
    fake_media["probe"] = _probe(duration=20.0, has_audio=False)
    fake_media["audio"].update({"vocals.wav": 20.0, "accompaniment.wav": 20.75, "singer1.wav": 19.9,
                                "singer2.wav": 20.0})
    ctx = _ctx(ctx_factory, "/raw/clip.mp4", stems=stems)
    res = ingest.process(ctx, ingest.Params(), None)
    ingest.STAGE.check(res)
    assert res.outputs == {"source": "/raw/clip.mp4", "n_frames": 600, "fps": 30, "width": 640, "height": 360,
                           "duration": 20.0, "source_fps": 29.97, "stems_vocals": "stems/vocals.wav",
                           "stems_accompaniment": "stems/accompaniment.wav",
                           "stems_singers": ["stems/singer1.wav", "stems/singer2.wav"]}
    assert res.metrics == {"seconds_of_video": 20.0, "frames": 600, "resolution": "640x360", "source_fps": 29.97,
                           "stems_max_diff_s": 0.75,
                           "warnings": ["stem accompaniment.wav is 20.75 s, the video 20.00 s (+0.75 s)",
                                        "stem singer2.wav is at 22050 Hz, the other stems at 44100 Hz "
                                        "(from another source?)"]}
    assert fake_media["loads"] == [("vocals.wav", SR, False, {}), ("accompaniment.wav", SR, False, {}),
                                   ("singer1.wav", SR, True, {}), ("singer2.wav", SR, True, {})]
    for name, shape in [("vocals.wav", (20 * SR, 2)), ("accompaniment.wav", (round(20.75 * SR), 2)),
                        ("singer1.wav", (round(19.9 * SR),)), ("singer2.wav", (20 * SR,))]:
        a, sr = media.read_wav(ctx.tmp / "stems" / name)
        assert sr == SR and a.shape == shape, name
    assert not (ctx.tmp / "mix_44k.wav").exists()


def test_stems_beside_the_videos_own_audio(ctx_factory, fake_media, tmp_path):
    stems = _stems(tmp_path / "st", ["vocals.wav", "accompaniment.wav", "singer1.wav", "singer2.wav"])
    fake_media["probe"] = _probe(duration=10.0)
    fake_media["audio"].update({"clip.mp4": 10.0, "vocals.wav": 10.0001, "accompaniment.wav": 10.0,
                                "singer1.wav": 10.0, "singer2.wav": 10.0})
    res = ingest.process(_ctx(ctx_factory, "/raw/clip.mp4", stems=stems), ingest.Params(), None)
    assert res.outputs["audio_44k"] == "mix_44k.wav" and res.outputs["stems_vocals"] == "stems/vocals.wav"
    assert res.metrics["stems_max_diff_s"] == 0.0 and res.metrics["warnings"] == []


def test_stage():
    s = ingest.STAGE
    assert (s.name, s.version, s.needs, s.process) == ("ingest", "1", (), ingest.process)
    assert ingest.MIX_SR == 44100


def test_a_real_tiny_video(ctx_factory, tmp_path):
    """ffmpeg's own test pattern with a tone, 5.5 s at 10 fps: probed and decoded for real."""
    src = tmp_path / "tiny.mp4"
    subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=64x48:rate=10:duration=5.5", "-f", "lavfi", "-i", "sine=frequency=440:duration=5.5",
                    "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(src)], check=True)
    ctx = _ctx(ctx_factory, src)
    res = ingest.process(ctx, ingest.Params(), None)
    o = res.outputs
    assert (o["width"], o["height"], o["source_fps"], o["audio_44k"]) == (64, 48, 10.0, "mix_44k.wav")
    assert o["duration"] == pytest.approx(5.5, abs=0.1) and o["n_frames"] == media.count_frames(o["duration"], 30)
    mix, sr = media.read_wav(ctx.tmp / "mix_44k.wav")
    assert sr == SR and mix.ndim == 2 and mix.shape[1] == 2 and abs(len(mix) / SR - 5.5) < 0.1


def test_stems_of_another_cut_are_refused_naming_the_video(ctx_factory, fake_media, tmp_path):
    stems = _stems(tmp_path / "st", ["vocals.wav", "accompaniment.wav", "singer1.wav", "singer2.wav"])
    fake_media["probe"] = _probe(duration=20.0)
    fake_media["audio"].update({"clip.mp4": 20.0, "vocals.wav": 20.0, "accompaniment.wav": 20.0, "singer1.wav": 20.0,
                                "singer2.wav": 30.0})
    msg = ("clip.mp4: stem singer2.wav is 30.00 s but the video is 20.00 s (+10.00 s); these stems are from another "
           "cut of the song: supply this video's stems")
    with pytest.raises(BadInput, match=full(msg)):
        ingest.process(_ctx(ctx_factory, "/raw/clip.mp4", stems=stems), ingest.Params(), None)
