"""The demo's singers sing: each singer's mouth opens with that singer's own voice (its loudness per
video frame) and stays shut while that singer is silent, and smiles while the partner sings (a
listening smile: the mouth corners rise, the lips stay shut), read off the generated frames themselves."""
from __future__ import annotations

import numpy as np
import pytest

from chorushead.core import media
from chorushead.sample import SR, face_images, write_sample
from chorushead.demo_faces import MOUTHS, listening, loudness_envelope, open_mouth, smile


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A 6 s duet: singer 1 sings from 1.0 s, singer 2 from 2.4 s (both stop at 5.5 s; their phrase
    breaks differ), so each has frames where only the other one sings."""
    folder = tmp_path_factory.mktemp("sample")
    path, stems, vid = write_sample(folder, seconds=6.0, name="duet", seed=3, absent_s=None, with_audio=False)
    envs = []
    for k in range(2):
        voice, sr = media.read_wav(stems / "duet" / f"singer{k + 1}.wav")
        envs.append(loudness_envelope(voice, sr, vid.fps, len(vid.frames)))
    return path, vid, np.stack(envs)


def mouth_change(vid, k: int) -> np.ndarray:
    """(T,) mean absolute difference between singer k's mouth region in each frame (located through
    the true face box) and the same region of the untouched photo."""
    x0, y0, x1, y1 = vid.boxes[k, 0].astype(int)
    fs = x1 - x0
    sw = vid.frames.shape[2] // 2
    rx0, ry0, rx1, ry1 = MOUTHS[k].region(fs)
    closed = face_images(fs)[k][ry0:ry1, rx0:rx1].astype(np.float32)
    out = np.empty(len(vid.frames), np.float32)
    for t, fr in enumerate(vid.frames):
        bx, by = vid.boxes[k, t, :2].astype(int)
        face = fr[by:by + fs, k * sw + bx:k * sw + bx + fs]
        out[t] = np.abs(face[ry0:ry1, rx0:rx1].astype(np.float32) - closed).mean()
    return out


def test_each_mouth_follows_its_own_singers_voice_and_is_shut_in_silence(sample):
    _, vid, envs = sample
    assert vid.mouth_gap is not None and vid.mouth_gap.shape == envs.shape
    for k in range(2):
        change, own, other = mouth_change(vid, k), envs[k], envs[1 - k]
        r_own, r_other = np.corrcoef(change, own)[0, 1], np.corrcoef(change, other)[0, 1]
        assert r_own > 0.9 and r_own > r_other + 0.3, (k, r_own, r_other)
        silent, loud = own == 0, own > 0.5
        hush = silent & (listening(envs, vid.fps)[k] == 0)   # nobody sings (or not for half a second)
        assert hush.sum() > 20 and loud.sum() > 30, (hush.sum(), loud.sum())
        assert (change[hush] == 0).all()                      # still, pixel for pixel, in silence
        assert change[loud].min() > 2.0, change[loud].min()   # visibly open while singing out
        np.testing.assert_allclose(vid.mouth_gap[k][silent], 0)    # the lips stay shut while silent ...
        listen = silent & (other > 0.5)
        assert listen.sum() > 10 and (vid.smile[k][listen] > 0).all()   # ... and smile at the partner
        assert 0 < change[listen].mean() < 0.5 * change[loud].mean()     # a smile moves less than singing


def test_the_encoded_video_shows_the_mouths_moving(sample):
    """Through the encoder and back: mouth-region change still tracks each singer's loudness."""
    path, vid, envs = sample
    decoded = np.concatenate(list(media.iter_frames(path, fps=vid.fps)))
    assert decoded.shape == vid.frames.shape
    from dataclasses import replace
    for k in range(2):
        change = mouth_change(replace(vid, frames=decoded), k)
        assert np.corrcoef(change, envs[k])[0, 1] > 0.8


def test_listening_smile_follows_the_partner():
    fps = 30
    loud = np.zeros((3, 90), np.float32)
    loud[1, 30:60] = 1.0                                    # singer 2 sings for one second
    lis = listening(loud, fps)
    assert lis.shape == (3, 90) and lis.dtype == np.float32
    assert (lis[1] == 0).all()                              # nobody else sings: singer 2 does not smile
    np.testing.assert_allclose(lis[0], lis[2])              # both listeners smile alike
    assert lis[0, 45] == 1.0 and lis[0, :22].max() == 0 and lis[0, 68:].max() == 0   # 0.5 s smoothing
    assert 0 < lis[0, 30] < 1 and np.all(np.diff(lis[0, 20:46]) >= 0)               # it rises, no jump


def test_smile_moves_the_corners_out_and_up():
    face = face_images(224)[0]
    assert smile(face, MOUTHS[0], 0.0) is face
    lifted = smile(face, MOUTHS[0], 6.0).astype(int)
    diff = np.abs(lifted - face).sum(axis=2) > 0
    ys, xs = np.nonzero(diff)
    m = MOUTHS[0]
    assert abs(np.median(ys) - m.y) < 15                    # around the lip line ...
    assert xs.min() < m.x0 < m.x1 < xs.max()                # ... at both corners
    assert not diff[:40].any()                              # the eyes and above do not move


def test_deterministic_per_seed(tmp_path):
    a = write_sample(tmp_path / "a", seconds=3.0, name="d", seed=1, absent_s=None, with_audio=False)[2]
    b = write_sample(tmp_path / "b", seconds=3.0, name="d", seed=1, absent_s=None, with_audio=False)[2]
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.mouth_gap, b.mouth_gap)
    assert a.mouth_gap.max() > 0


def test_open_mouth_scales_with_the_image_and_leaves_gap_zero_untouched():
    small, big = face_images(112)[0], face_images(224)[0]
    assert open_mouth(small, MOUTHS[0], 0.0) is small
    x0, y0, x1, y1 = MOUTHS[0].region(112)
    opened = open_mouth(small, MOUTHS[0], 6.0)
    diff = np.abs(opened.astype(int) - small).sum(axis=2) > 0
    assert diff.any() and not diff[:y0].any() and not diff[:, :x0].any() and not diff[:, x1:].any()
    # the interior band sits under the lip line, as at the reference size
    band = (opened == (45, 20, 25)).all(axis=2)
    ys = np.nonzero(band.any(axis=1))[0]
    assert MOUTHS[0].scaled(112).y <= ys.min() and ys.max() < MOUTHS[0].scaled(112).y + 6
    assert (open_mouth(big, MOUTHS[0], 12.0) == (45, 20, 25)).all(axis=2).sum() > 4 * band.sum() * 0.8


def test_loudness_envelope_is_zero_in_silence_and_one_when_loud():
    sr, fps = 16000, 30
    t = np.arange(3 * sr) / sr
    v = np.where((t > 1) & (t < 2), np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * (t - 1)), 0.0)
    v += 1e-4 * np.random.default_rng(0).standard_normal(len(t))
    env = loudness_envelope(v, sr, fps, 90)
    assert env.shape == (90,) and env.dtype == np.float32
    assert (env[:29] == 0).all() and (env[61:] == 0).all()
    assert env[31:59].min() > 0.4 and env[55:59].max() == pytest.approx(1.0, abs=0.05)
    assert np.all(np.diff(env[31:59]) > -0.02)   # rises with the loudness
