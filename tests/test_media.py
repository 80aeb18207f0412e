import numpy as np
import pytest

from chorushead.core import media


def _numbered_video(path, n=60, fps=30):
    """Each frame's brightness encodes its index (robust to H.264 at this level)."""
    frames = np.zeros((n, 64, 64, 3), np.uint8)
    for i in range(n):
        frames[i] = (i * 4) % 256
    media.encode_video(path, frames, fps=fps, crf=0)
    return frames


def _index(frames):
    return [int(round(f.mean() / 4)) for f in frames]


def test_iter_frames_range_is_exact(tmp_path):
    p = tmp_path / "n.mp4"
    _numbered_video(p)
    full = np.concatenate(list(media.iter_frames(p, chunk=7)))
    assert _index(full) == list(range(60))
    part = np.concatenate(list(media.iter_frames(p, start_frame=23, n_frames=10, chunk=4)))
    assert _index(part) == list(range(23, 33))
    tail = np.concatenate(list(media.iter_frames(p, start_frame=50)))
    assert _index(tail) == list(range(50, 60))


def test_25fps_source_lands_on_30fps_timeline(tmp_path):
    p = tmp_path / "n25.mp4"
    _numbered_video(p, n=50, fps=25)                       # 2 s
    idx = _index(np.concatenate(list(media.iter_frames(p))))
    assert len(idx) == 60                                  # 2 s at 30 fps
    # fps filter: timeline frame i shows the source frame nearest to time i/30 (ties to the earlier one)
    assert idx == [int(np.ceil(i * 25 / 30 - 0.5 - 1e-9)) for i in range(60)]


def test_probe_and_audio_roundtrip(tmp_path):
    sr = 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)).astype(np.float32)
    w = tmp_path / "t.wav"
    media.write_wav(w, tone, sr)
    back = media.load_audio(w, 8000)
    assert len(back) == 8000
    np.testing.assert_allclose(media.resample(tone, sr, 8000)[100:-100], back[100:-100], atol=0.02)


def test_cut_clip_starts_on_the_range_and_keeps_audio(tmp_path):
    src, clip = tmp_path / "n.mp4", tmp_path / "clip.mp4"
    frames = np.zeros((60, 64, 128, 3), np.uint8)      # 128 wide: the clip is scaled down to max_width
    for i in range(60):
        frames[i] = i * 4
    wav = tmp_path / "a.wav"
    media.write_wav(wav, (0.2 * np.sin(np.arange(2 * 16000) * 0.1)).astype(np.float32), 16000)
    media.encode_video(src, frames, fps=30, audio=wav, crf=0)
    media.cut_clip(src, clip, start=40 / 30, duration=20 / 30, fps=30, max_width=64, crf=0)
    pr = media.probe(clip)
    assert (pr.width, pr.height) == (64, 32) and pr.has_audio
    got = [int(round(f.mean() / 4)) for f in np.concatenate(list(media.iter_frames(clip)))]
    assert got == list(range(40, 60))


def test_cut_clip_of_a_damaged_source_says_so_and_leaves_nothing(tmp_path):
    bad, clip = tmp_path / "bad.mp4", tmp_path / "clip.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(RuntimeError, match="ffmpeg could not cut the clip from bad.mp4"):
        media.cut_clip(bad, clip, 0.0, 1.0)
    assert not clip.exists()
