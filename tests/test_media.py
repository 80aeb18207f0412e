import numpy as np

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
