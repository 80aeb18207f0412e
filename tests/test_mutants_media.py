"""Tests that kill the mutants of chorushead/core/media.py that survived the fast tests
(docs/mutation-survivors.md). Videos are tiny (64 px, a few dozen frames) and numbered: frame i is a flat
grey of value 4·i, so a decoded frame tells its index. probe's parsing gets ffmpeg's own text (written
by hand in its format, or from real files); error lines are checked whole; the frame pipe is also fed
by a stand-in process whose bytes are known exactly."""
from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from chorushead.core import media
from chorushead.core.errors import BadInput


def _numbered(n: int, h: int = 64, w: int = 64) -> np.ndarray:
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i] = (i * 4) % 256
    return frames


def _index(chunks) -> list[int]:
    return [int(round(f.mean() / 4)) for c in chunks for f in c]


def _lens(chunks) -> list[int]:
    return [len(c) for c in chunks]


def _ffmpeg(*args: str) -> None:
    subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def _top_boxes(path: Path) -> list[str]:
    """The top-level box types of an mp4, in file order."""
    data, out, i = path.read_bytes(), [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        out.append(kind.decode("latin-1"))
        if size == 1:
            size = struct.unpack(">Q", data[i + 8:i + 16])[0]
        if size < 8:
            break
        i += size
    return out


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    """n60: 60 numbered frames (2 s at 30 fps); g90: 90 frames with a keyframe every 10 (real seeks);
    late: n60's video 0.5 s after its 3 s of audio (timeline origin 15); odd: 33x31 lossless (FFV1);
    wav: 1 s of stereo at 16 kHz."""
    d = tmp_path_factory.mktemp("media")
    v = {"n60": d / "n60.mp4", "g90": d / "g90.mp4", "late": d / "late.mp4", "odd": d / "odd.mkv",
         "wav": d / "s.wav"}
    media.encode_video(v["n60"], _numbered(60), fps=30, crf=0)
    raw = d / "g90src.mp4"
    media.encode_video(raw, _numbered(90), fps=30, crf=0)
    _ffmpeg("-i", str(raw), "-c:v", "libx264", "-crf", "0", "-g", "10", "-bf", "2", "-pix_fmt", "yuv420p",
            str(v["g90"]))
    _ffmpeg("-f", "lavfi", "-i", "sine=d=3", "-itsoffset", "0.5", "-i", str(v["n60"]), "-map", "1:v",
            "-map", "0:a", "-c:v", "copy", "-c:a", "aac", str(v["late"]))
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=33x31:rate=30:duration=0.5", "-c:v", "ffv1",
            "-pix_fmt", "bgr0", str(v["odd"]))
    t = np.arange(16000) / 16000
    media.write_wav(v["wav"], np.stack([0.5 * t - 0.25, 0.3 * np.sin(40 * t)], 1).astype(np.float32), 16000)
    return v


def _fake_run(monkeypatch, stderr, returncode=0, stdout=b""):
    """media's subprocess.run answers ``stderr``; returns the list of command lines it was given."""
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode, stdout=stdout, stderr=stderr)
    monkeypatch.setattr(media.subprocess, "run", run)
    return calls


# ----------------------------------------------------------------------------- ffmpeg_exe
def test_ffmpeg_exe_falls_back_to_path_then_says_how_to_install(monkeypatch):
    import imageio_ffmpeg

    def broken():
        raise RuntimeError("no bundled binary")
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", broken)
    monkeypatch.setattr(shutil, "which", lambda name: "/opt/bin/ffmpeg" if name == "ffmpeg" else None)
    media.ffmpeg_exe.cache_clear()
    try:
        assert media.ffmpeg_exe() == "/opt/bin/ffmpeg"
        media.ffmpeg_exe.cache_clear()
        monkeypatch.setattr(shutil, "which", lambda name: None)
        with pytest.raises(RuntimeError) as e:
            media.ffmpeg_exe()
        assert str(e.value) == "ffmpeg not found: `pip install imageio-ffmpeg` or `apt-get install ffmpeg`."
        assert media.ffmpeg_for_tools() is None
    finally:
        media.ffmpeg_exe.cache_clear()
    monkeypatch.undo()
    assert media.ffmpeg_for_tools() == media.ffmpeg_exe() == imageio_ffmpeg.get_ffmpeg_exe()


# ----------------------------------------------------------------------------- probe
_FULL = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.mp4':
  Metadata:
    encoder         : Lavf63.1.102
  Duration: 01:02:03.50, start: 0.000000, bitrate: 60 kb/s
  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 1280x720 [SAR 1:1 DAR 16:9], 20 kb/s, 29.97 fps, 29.97 tbr, 15360 tbn (default)
    Metadata:
      handler_name    : VideoHandler
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, {layout}, fltp, 1 kb/s (default)
At least one output file must be specified
"""


def test_probe_parses_ffmpegs_text(monkeypatch, tmp_path):
    f = tmp_path / "x.mp4"
    f.write_bytes(b"x")
    calls = _fake_run(monkeypatch, _FULL.format(layout="mono"))
    assert media.probe(f) == media.Probe(duration=3723.5, width=1280, height=720, fps=29.97, video_codec="h264",
                                         has_audio=True, audio_rate=44100, audio_channels=1)
    assert calls == [[media.ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(f)]]
    for layout, n in [("stereo", 2), ("6 channels", 6), ("5.1(side)", 6), ("5.1", 6), ("7.1", 8),
                      ("downmix", 2)]:
        _fake_run(monkeypatch, _FULL.format(layout=layout))
        assert media.probe(f).audio_channels == n, layout


def test_probe_without_duration_fps_or_audio(monkeypatch, tmp_path):
    f = tmp_path / "x.mkv"
    f.write_bytes(b"x")
    # the rate is read from the video's own line: the next line's "25 fps" is not it
    _fake_run(monkeypatch, "  Duration: N/A, bitrate: N/A\n"
                           "  Stream #0:0: Video: mjpeg (Baseline), yuvj420p(pc), 320x240\n"
                           "  Stream #0:1: Data: none, 25 fps\n")
    assert media.probe(f) == media.Probe(duration=0.0, width=320, height=240, fps=0.0, video_codec="mjpeg",
                                         has_audio=False, audio_rate=None, audio_channels=None)
    _fake_run(monkeypatch, "  Stream #0:0: Video: vp9, yuv420p, 64x48, 25 fps, 25 tbr\n    Metadata:\n")
    assert media.probe(f).fps == 25.0


def test_probe_refusals_say_why(monkeypatch, tmp_path):
    missing = tmp_path / "none.mp4"
    with pytest.raises(BadInput) as e:
        media.probe(missing)
    assert str(e.value) == f"{missing}: file does not exist"
    with pytest.raises(BadInput) as e:
        media.probe(tmp_path)                                   # exists, but open() fails
    assert str(e.value) == f"{tmp_path}: cannot read the file (Is a directory); check its permissions"
    f = tmp_path / "x.mp4"
    f.write_bytes(b"x")
    _fake_run(monkeypatch, "first\n\n   the last line  \n\n")
    with pytest.raises(BadInput) as e:
        media.probe(f)
    assert str(e.value) == ("x.mp4: ffmpeg finds no video stream (the last line). "
                            "The file is not a video or is damaged.")
    _fake_run(monkeypatch, "")
    with pytest.raises(BadInput) as e:
        media.probe(f)
    assert str(e.value) == "x.mp4: ffmpeg finds no video stream (no output). The file is not a video or is damaged."


def test_probe_of_real_files(vids, tmp_path):
    pr = media.probe(vids["late"])
    assert (pr.width, pr.height, pr.fps, pr.video_codec, pr.has_audio, pr.audio_rate, pr.audio_channels) == \
        (64, 64, 30.0, "h264", True, 44100, 1)
    assert pr.duration == pytest.approx(3.0, abs=0.05)
    with pytest.raises(BadInput) as e:
        media.probe(vids["wav"])
    assert str(e.value) == ("s.wav: ffmpeg finds no video stream (At least one output file must be specified). "
                            "The file is not a video or is damaged.")
    # a name that is not UTF-8: ffmpeg prints it back as raw bytes, which are decoded with replacement
    odd = tmp_path / os.fsdecode(b"v\xff.mp4")
    shutil.copy(vids["n60"], odd)
    assert media.probe(odd).width == 64


# ----------------------------------------------------------------------------- audio
def test_load_audio_cuts_and_channels(vids):
    sr, st = wavfile.read(str(vids["wav"]))
    whole = media.load_audio(vids["wav"], 16000, mono=False)
    assert whole.dtype == np.float32 and whole.shape == (16000, 2)
    np.testing.assert_array_equal(whole, st)
    part = media.load_audio(vids["wav"], 16000, mono=False, start=0.5, duration=0.25)
    np.testing.assert_array_equal(part, st[8000:12000])
    mono = media.load_audio(vids["wav"], 16000, start=0.5)
    assert mono.shape == (8000,) and mono.dtype == np.float32
    np.testing.assert_allclose(mono, st[8000:].sum(1) * np.sqrt(0.5), atol=1e-5)     # ffmpeg's downmix
    assert len(media.load_audio(vids["wav"], 8000, duration=0.5)) == 4000


def test_load_audio_failure_line(monkeypatch, vids):
    with pytest.raises(BadInput) as e:
        media.load_audio(vids["wav"].with_name("nothing.wav"), 16000)
    assert str(e.value).startswith("nothing.wav: cannot decode audio: ")
    assert str(e.value).endswith("No such file or directory")
    calls = _fake_run(monkeypatch, b"\xff" + b"e" * 400 + b"\n  ", returncode=1)
    with pytest.raises(BadInput) as e:
        media.load_audio(Path("/d/a.wav"), 8000)
    assert str(e.value) == "a.wav: cannot decode audio: " + "e" * 300
    assert calls == [[media.ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", "/d/a.wav",
                      "-vn", "-ac", "1", "-ar", "8000", "-f", "f32le", "-"]]


def test_wav_write_and_read(tmp_path):
    p = tmp_path / "f.wav"
    media.write_wav(p, np.array([0.5, -2.0, 1.5]), 8000)                 # float64 in: float32 file, unclipped
    sr, a = wavfile.read(str(p))
    assert sr == 8000 and a.dtype == np.float32 and a.tolist() == [0.5, -2.0, 1.5]
    for dtype, full in ((np.int16, 32768), (np.int32, 2147483648)):
        q = tmp_path / f"{dtype.__name__}.wav"
        wavfile.write(str(q), 22050, np.array([-full, 0, full // 2], dtype))
        a, sr = media.read_wav(q)
        assert a.dtype == np.float32 and a.tolist() == [-1.0, 0.0, 0.5] and sr == 22050 and type(sr) is int
    a, sr = media.read_wav(p)
    assert a.dtype == np.float32 and a.tolist() == [0.5, -2.0, 1.5] and sr == 8000


def test_resample_exact_ratio():
    from scipy.signal import resample_poly
    x = np.random.default_rng(0).standard_normal((441, 2))
    same = media.resample(x, 16000, 16000)
    assert same.dtype == np.float32 and np.array_equal(same, x.astype(np.float32))
    y = media.resample(x, 44100, 16000)                                  # gcd 100: up 160, down 441
    assert y.dtype == np.float32 and y.shape == (160, 2)
    np.testing.assert_array_equal(y, resample_poly(x, 160, 441, axis=0).astype(np.float32))
    assert media.resample(x[:, 0], 48000, 16000).shape == (147,)


def test_count_frames_rounds_down_with_a_tiny_tolerance():
    assert media.count_frames(1.0) == 30
    assert media.count_frames(0.5) == 15
    assert media.count_frames(2.0, 25) == 50
    assert media.count_frames(0.1 * 3) == 9                      # 0.30000000000000004 · 30: not 8
    assert media.count_frames(10 / 30 - 1e-9) == 10              # within 1e-6 frame of 10
    assert media.count_frames((30 - 5e-6) / 30) == 29            # 5e-6 frame short: not yet 30


# ----------------------------------------------------------------------------- frames
def test_iter_frames_chunks_ranges_and_scale(vids):
    v = vids["n60"]
    full = list(media.iter_frames(v, chunk=6))                    # 60 = 10 full chunks: all of them
    assert _lens(full) == [6] * 10 and _index(full) == list(range(60))
    assert full[0].shape == (6, 64, 64, 3) and full[0].dtype == np.uint8
    assert _lens(media.iter_frames(v)) == [32, 28]                # default chunk 32
    head = list(media.iter_frames(v, n_frames=5))                 # only a count: from frame 0
    assert _index(head) == [0, 1, 2, 3, 4]
    small = list(media.iter_frames(v, start_frame=7, n_frames=3, scale=(32, 16)))
    # scaling converts the colours a little differently (up to 2 levels): the frames are still 7, 8, 9
    means = [f.mean() for f in full[1]][1:4]
    assert small[0].shape == (3, 16, 32, 3) and np.abs([f.mean() for f in small[0]] - np.array(means)).max() <= 2
    assert _index(media.iter_frames(vids["g90"], fps=15, n_frames=4)) == [0, 2, 4, 6]


def test_opencv_conversion_is_used_for_even_sizes_only(vids, monkeypatch):
    import cv2
    real, calls = cv2.cvtColor, []

    def spy(src, code, dst=None):
        calls.append(code)
        return real(src, code, dst=dst)
    monkeypatch.setattr(cv2, "cvtColor", spy)
    v = vids["n60"]
    a = list(media.iter_frames(v, start_frame=10, n_frames=8, chunk=5, convert="opencv"))
    assert calls == [cv2.COLOR_YUV2RGB_I420] * 8 and _lens(a) == [5, 3] and _index(a) == list(range(10, 18))
    b = np.concatenate(list(media.iter_frames(v, start_frame=10, n_frames=8, chunk=5)))
    assert np.abs(np.concatenate(a).astype(int) - b).max() <= 2
    calls.clear()
    for scale in ((34, 31), (33, 32)):                          # an odd side: ffmpeg converts
        got = list(media.iter_frames(v, n_frames=2, scale=scale, convert="opencv"))
        assert calls == [] and got[0].shape == (2, scale[1], scale[0], 3)
        assert np.array_equal(got[0], next(media.iter_frames(v, n_frames=2, scale=scale)))
    odd = list(media.iter_frames_from(vids["odd"], n_frames=3, convert="opencv"))
    assert calls == [] and odd[0].shape == (3, 31, 33, 3)
    assert np.array_equal(odd[0], next(media.iter_frames(vids["odd"], n_frames=3)))
    a = list(media.iter_frames_from(v, start_frame=40, n_frames=4, convert="opencv"))
    assert calls == [cv2.COLOR_YUV2RGB_I420] * 4 and _index(a) == [40, 41, 42, 43]


def test_timeline_origin(vids, monkeypatch):
    assert media.timeline_origin(vids["n60"]) == 0
    assert media.timeline_origin(vids["late"]) == 15             # 0.5 s at 30 fps
    assert media.timeline_origin(vids["late"], fps=10) == 5
    with pytest.raises(BadInput) as e:
        media.timeline_origin(vids["wav"])
    assert str(e.value).startswith("s.wav: cannot decode the first video frame: ")
    calls = _fake_run(monkeypatch, "x" * 10 + "y" * 300 + "\n")
    with pytest.raises(BadInput) as e:
        media.timeline_origin("/d/v.mp4", fps=12)
    assert str(e.value) == "v.mp4: cannot decode the first video frame: " + "y" * 300
    assert calls == [[media.ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "info", "-i", "/d/v.mp4",
                      "-an", "-vf", "fps=12,showinfo", "-frames:v", "1", "-f", "null", "-"]]
    _fake_run(monkeypatch, "[Parsed_showinfo_1 @ 0x1] n:   0 pts:     -3 pts_time:-0.1\n")
    assert media.timeline_origin("/d/v.mp4") == -3


def test_iter_frames_from_seeks_and_gives_the_same_frames(vids):
    g = vids["g90"]
    for start, n in ((60, 12), (75, None), (31, 1)):
        want = list(media.iter_frames(g, start_frame=start, n_frames=n, chunk=5))
        got = list(media.iter_frames_from(g, start_frame=start, n_frames=n, chunk=5))
        assert _lens(got) == _lens(want) and _index(got) == _index(want), (start, n)
        assert all(np.array_equal(x, y) for x, y in zip(got, want))
    assert _index(media.iter_frames_from(g, start_frame=60, n_frames=3)) == [60, 61, 62]
    assert _index(media.iter_frames_from(g, start_frame=20, n_frames=3, fps=15)) == [40, 42, 44]
    # a video that starts after its audio: frame 0 of the timeline is the video's first frame
    late = vids["late"]
    assert _index(media.iter_frames_from(late, start_frame=40, n_frames=3)) == [40, 41, 42]
    assert _index(media.iter_frames_from(late, start_frame=40, n_frames=3, origin=15)) == [40, 41, 42]
    assert _index(media.iter_frames_from(late, start_frame=40, n_frames=3, origin=20)) == [45, 46, 47]


def _stand_in(body: str) -> list[str]:
    return [sys.executable, "-c", "import os, sys, signal\n" + body]


def test_pipe_frames_splits_chunks_and_drops_a_torn_frame():
    # 2x2 RGB frames of 12 bytes: 2.5 frames written, chunks of 2
    data = bytes(range(30))
    out = list(media._pipe_frames(_stand_in(f"sys.stdout.buffer.write(bytes(range(30)))"), "v.mp4", 2, 2,
                                  False, 2))
    assert _lens(out) == [2]
    assert np.array_equal(out[0], np.frombuffer(data[:24], np.uint8).reshape(2, 2, 2, 3))
    # the same in yuv420p: 6 bytes a frame, 1.5 frames written, chunks of 1
    out = list(media._pipe_frames(_stand_in("sys.stdout.buffer.write(bytes(9 * [128]))"), "v.mp4", 2, 2,
                                  True, 1))
    assert _lens(out) == [1] and out[0].shape == (1, 2, 2, 3)
    assert list(media._pipe_frames(_stand_in("pass"), "v.mp4", 2, 2, False, 4)) == []


def test_pipe_frames_reports_a_failed_decoder_but_not_a_killed_one():
    fail = _stand_in("sys.stdout.buffer.write(bytes(12)); sys.stderr.write('a' * 10 + 'b' * 300 + '\\n'); "
                     "sys.exit(3)")
    got = []
    with pytest.raises(BadInput) as e:
        for c in media._pipe_frames(fail, Path("/d/clip.mp4"), 2, 2, False, 4):
            got.append(c)
    assert str(e.value) == "clip.mp4: video decoding failed: " + "b" * 300
    assert _lens(got) == [1]
    killed = _stand_in("sys.stdout.buffer.write(bytes(12)); sys.stdout.flush(); os.kill(os.getpid(), signal.SIGTERM)")
    assert _lens(media._pipe_frames(killed, "v.mp4", 2, 2, False, 4)) == [1]


def test_grow_pipe_is_one_mebibyte_and_best_effort(monkeypatch):
    import fcntl
    r, w = os.pipe()
    try:
        with os.fdopen(r, "rb") as f:
            media._grow_pipe(f)
            assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == 1 << 20
    finally:
        os.close(w)

    class Closed:
        def fileno(self):
            raise OSError("closed")
    media._grow_pipe(Closed())                                  # OSError: the default stays
    monkeypatch.setitem(sys.modules, "fcntl", None)             # no fcntl (not Linux): nothing happens
    media._grow_pipe(Closed())


# ----------------------------------------------------------------------------- writing
def test_video_writer_defaults_frames_and_audio(vids, tmp_path):
    p = tmp_path / "w.mp4"
    with media.VideoWriter(p, 64, 32) as vw:
        vw.write(np.full((32, 64, 3), 100.7))                   # one float frame: cast to uint8 100
        vw.write(_numbered(3, 32, 64))                          # a batch
    pr = media.probe(p)
    assert (pr.width, pr.height, pr.fps, pr.has_audio) == (64, 32, 30.0, False)
    frames = np.concatenate(list(media.iter_frames(p)))
    assert len(frames) == 4 and abs(frames[0].mean() - 100) < 1.5 and _index([frames[1:]]) == [0, 1, 2]
    assert b" crf=20.0 " in p.read_bytes() and b" keyint=250 " in p.read_bytes()
    q = tmp_path / "a.mp4"
    with media.VideoWriter(q, 64, 64, fps=25, audio=vids["late"], crf=30) as vw:    # 3 s of audio
        vw.write(_numbered(10))
    pr = media.probe(q)
    assert pr.fps == 25.0 and pr.has_audio and pr.duration < 0.5                   # cut to the video
    assert b" crf=30.0 " in q.read_bytes()


def test_video_writer_failure_line(tmp_path):
    where = tmp_path / os.fsdecode(b"\xff") / ("d" * 300) / "w.mp4"              # no such folder
    vw = media.VideoWriter(where, 64, 64)
    with pytest.raises(RuntimeError) as e:
        vw.close()
    head = f"ffmpeg could not encode {where}: "
    assert str(e.value).startswith(head) and len(str(e.value)) == len(head) + 500
    assert "\ufffd" in str(e.value)[len(head):]                  # ffmpeg's raw bytes, decoded with replacement


def test_encode_video_defaults(tmp_path):
    p = tmp_path / "e.mp4"
    media.encode_video(p, list(_numbered(3, 32, 64)))
    pr = media.probe(p)
    assert (pr.width, pr.height, pr.fps, pr.has_audio) == (64, 32, 30.0, False)
    assert b" crf=20.0 " in p.read_bytes() and _index(media.iter_frames(p)) == [0, 1, 2]


def test_cut_clip_defaults_keyframes_and_faststart(vids, tmp_path):
    src = tmp_path / "wide.mp4"
    media.encode_video(src, np.zeros((20, 32, 704, 3), np.uint8), fps=25)
    clip = tmp_path / "c.mp4"
    media.cut_clip(src, clip, 0.2, 0.4)
    pr = media.probe(clip)
    assert (pr.width, pr.fps, pr.has_audio) == (640, 30.0, False)        # no audio in: none out, no error
    data = clip.read_bytes()
    assert b" crf=23.0 " in data and b" keyint=15 " in data               # a keyframe every half second
    boxes = _top_boxes(clip)
    assert boxes.index("moov") < boxes.index("mdat")                     # faststart: playable while loading
    one = tmp_path / "one.mp4"
    media.cut_clip(vids["n60"], one, 0.0, 2.0, fps=1)
    assert b" keyint=1 " in one.read_bytes() and _lens(media.iter_frames(one, fps=1)) == [2]


def test_cut_clip_failures_leave_nothing(monkeypatch, tmp_path):
    bad, clip = tmp_path / "bad.mp4", tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video" * 100)
    clip.write_bytes(b"an old clip")                                       # replaced or removed, never kept
    with pytest.raises(RuntimeError, match="ffmpeg could not cut the clip from bad.mp4: "):
        media.cut_clip(bad, clip, 0.0, 1.0)
    assert not clip.exists()
    calls = _fake_run(monkeypatch, b"\xff" + b"w" * 400 + b"\n", returncode=0)     # "success", no file
    with pytest.raises(RuntimeError) as e:
        media.cut_clip(Path("/d/src.mp4"), clip, 1.5, 2.25)
    assert str(e.value) == "ffmpeg could not cut the clip from src.mp4: " + "w" * 300
    assert calls[0][6:13] == ["-ss", "1.500000", "-i", "/d/src.mp4", "-t", "2.250000", "-map"]


# ----------------------------------------------------------------------------- second round (survivors)
def test_decoding_failures_name_the_file(monkeypatch, tmp_path):
    """probe said yes, ffmpeg then fails (exit 1, its usual failure code): the line names the file."""
    gone = tmp_path / "gone.mp4"
    monkeypatch.setattr(media, "probe", lambda p: media.Probe(1.0, 64, 64, 30.0, "h264", False, None, None))
    for frames in (media.iter_frames(gone), media.iter_frames_from(gone, start_frame=3, origin=0)):
        with pytest.raises(BadInput) as e:
            list(frames)
        assert str(e.value).startswith("gone.mp4: video decoding failed: ")
        assert str(e.value).endswith("No such file or directory")


def test_pipe_frames_exit_codes_and_undecodable_messages():
    # nothing written and exit 1: still a failure (the empty read ends the loop, not the check)
    quiet = _stand_in("sys.stderr.buffer.write(b'\\xff' + b'b' * 10); sys.exit(1)")
    with pytest.raises(BadInput) as e:
        list(media._pipe_frames(quiet, Path("/d/clip.mp4"), 2, 2, False, 4))
    assert str(e.value) == "clip.mp4: video decoding failed: \ufffd" + "b" * 10     # bytes decoded with replacement
    ok = _stand_in("sys.stdout.buffer.write(bytes(24)); sys.stderr.write('just a warning')")
    assert _lens(media._pipe_frames(ok, "v.mp4", 2, 2, False, 4)) == [2]          # exit 0: no error


def test_iter_frames_from_defaults_and_seek_points(vids, monkeypatch):
    g = vids["g90"]
    assert _lens(media.iter_frames_from(g)) == [32, 32, 26]                        # default chunk 32
    # fps 10 on a video starting 0.5 s late: origin 5 (not 30 fps' 15), so the same frames as iter_frames
    # (frame 10 = 1.5 s = 1 s into the video, which the fps filter's rounding shows as video frame 31)
    late = [media.iter_frames_from(vids["late"], start_frame=10, n_frames=3, fps=10),
            media.iter_frames(vids["late"], start_frame=10, n_frames=3, fps=10)]
    assert _index(late[0]) == _index(late[1]) == [31, 34, 37]
    real, seeks = subprocess.Popen, []

    def spy(cmd, **kw):
        if "-copyts" in cmd:                            # the decode (probe's ffmpeg -i also runs a Popen)
            seeks.append(cmd[cmd.index("-ss") + 1] if "-ss" in cmd else None)
        return real(cmd, **kw)
    monkeypatch.setattr(media.subprocess, "Popen", spy)
    # seek = start time - 1 s (margin_s), only when that is after the start of the file
    for start, seek in ((60, "1.000000"), (45, "0.500000"), (31, "0.033333"), (30, None), (10, None)):
        seeks.clear()
        assert _index(media.iter_frames_from(g, start_frame=start, n_frames=2, origin=0)) == [start, start + 1]
        assert seeks == [seek], start
    seeks.clear()
    assert _index(media.iter_frames_from(g, start_frame=54, n_frames=1, origin=0, margin_s=0.5)) == [54]
    assert seeks == ["1.300000"]


def test_timeline_origin_of_a_file_name_that_is_not_utf8(vids, tmp_path):
    odd = tmp_path / os.fsdecode(b"t\xfe.mp4")        # ffmpeg prints it back raw: decoded with replacement
    shutil.copy(vids["late"], odd)
    assert media.timeline_origin(odd) == 15


def test_grow_pipe_uses_fcntls_constant_else_linuxs(monkeypatch):
    class Pipe:
        def fileno(self):
            return 7

    class Fcntl:                                       # a platform whose fcntl names the request
        F_SETPIPE_SZ = 4242

        def __init__(self):
            self.calls = []

        def fcntl(self, fd, cmd, arg):
            self.calls.append((fd, cmd, arg))

    named = Fcntl()
    monkeypatch.setitem(sys.modules, "fcntl", named)
    media._grow_pipe(Pipe())
    assert named.calls == [(7, 4242, 1 << 20)]

    class OldFcntl(Fcntl):                             # a Python without the name: Linux's number 1031
        F_SETPIPE_SZ = property()                      # (instances have no such attribute)
    old = OldFcntl()
    monkeypatch.setitem(sys.modules, "fcntl", old)
    media._grow_pipe(Pipe())
    assert old.calls == [(7, 1031, 1 << 20)]


def test_encode_video_passes_crf_and_cut_clip_keyframe_rounding(tmp_path):
    p = tmp_path / "q.mp4"
    media.encode_video(p, _numbered(2, 32, 64), crf=31)
    assert b" crf=31.0 " in p.read_bytes()
    clip = tmp_path / "c15.mp4"
    media.cut_clip(p, clip, 0.0, 0.2, fps=15)
    assert b" keyint=7 " in clip.read_bytes()          # 15 // 2: a whole number of frames, rounded down
