"""Values of pachorus.metrics that mutation testing showed were not pinned (docs/mutation-survivors.md).

Each test states a value computed by hand; the comment names the mutants it kills.
"""
import numpy as np
import pytest

from pachorus import metrics as M


def test_ppe_is_the_distance_not_the_sum_and_is_over_the_three_components():
    # equal non-zero poses: distance 0 (pred + gt would give |2p|)
    p = np.array([[0.3, -0.4, 0.0], [0.0, 0.0, 1.0]])
    assert M.ppe(p, p) == 0.0
    # 3-4-5 triangle per frame; stacked (K, T, 3) the norm is still over the last axis only
    gt = np.zeros((2, 4, 3))
    pred = np.zeros((2, 4, 3))
    pred[..., 0], pred[..., 1] = 3.0, 4.0
    assert M.ppe(pred, gt) == pytest.approx(5.0)


def test_coeff_mse_is_of_the_difference():
    f = np.full((2, 56), 0.5)
    assert M.coeff_mse(f, f) == {"exp_mse": 0.0, "jaw_mse": 0.0, "pose_mse": 0.0}
    g = f.copy()
    g[:, 50:53] += 2.0
    out = M.coeff_mse(g, f)
    assert out["jaw_mse"] == pytest.approx(4.0) and out["exp_mse"] == 0.0 and out["pose_mse"] == 0.0


def test_frame_energy_db_by_hand_one_sample_per_frame():
    # sr == fps: frame t is sample t exactly; level = 20 log10 |a_t|; the first sample counts
    a = np.array([0.1, 0.0, 0.01, 1.0])
    db = M.frame_energy_db(a, sr=25, fps=25.0, n_frames=5)
    assert db[0] == pytest.approx(-20.0)            # sample 0 belongs to frame 0 (clip(1, .) / energy[0]=1 mutants)
    assert db[1] == -np.inf                         # exact silence
    assert db[2] == pytest.approx(-40.0)            # one-sample frames divide by 1 (maximum(n, 2), n > 1 mutants)
    assert db[3] == pytest.approx(0.0)
    assert db[4] == -np.inf                         # past the end of the audio


def test_frame_energy_db_only_sample_zero_loud():
    a = np.zeros(640 * 3)
    a[0] = 1.0
    db = M.frame_energy_db(a, sr=16000, fps=25.0, n_frames=3)
    assert db[0] == pytest.approx(10 * np.log10(1 / 640))
    assert np.isneginf(db[1:]).all()


@pytest.mark.parametrize("shape", [(640 * 2, 1), (1, 640 * 2)])   # a column; one channel first (torchaudio)
def test_frame_energy_db_flattens_one_channel_audio(shape):
    a = np.full(shape, 0.1)
    a.reshape(-1)[640:] = 0.01
    db = M.frame_energy_db(a, sr=16000, fps=25.0, n_frames=2)
    assert db.shape == (2,)
    np.testing.assert_allclose(db, [-20.0, -40.0])


def test_frame_energy_db_of_float32_audio_is_accurate_after_a_loud_stretch():
    # float32 audio (what decoders return): a loud minute then quiet frames; a float32 running sum
    # cancels the quiet frames' energy away, so the level must be computed in float64
    sr, fps = 16000, 25.0
    loud = np.full(sr * 60, 0.9, np.float32)
    quiet = np.full(640 * 4, 1e-3, np.float32)
    a = np.concatenate([loud, quiet])
    n = len(a) // 640
    db = M.frame_energy_db(a, sr, fps, n)
    np.testing.assert_allclose(db[-4:], 20 * np.log10(np.float32(1e-3)), atol=1e-3)


def test_silent_frames_is_strictly_below_the_threshold():
    a = np.full(640 * 2, 0.01)
    level = M.frame_energy_db(a, 16000, 25.0, 2)[0]
    assert not M.silent_frames(a, 16000, 25.0, 2, threshold_db=level).any()
    assert M.silent_frames(a, 16000, 25.0, 2, threshold_db=level + 1e-9).all()


def test_jaw_opening_is_per_frame_for_stacked_sequences():
    jaw = np.zeros((2, 5, 3))
    jaw[..., 1], jaw[..., 2] = 0.3, 0.4
    np.testing.assert_allclose(M.jaw_opening(jaw), np.full((2, 5), 0.5))


def test_silent_jaw_takes_a_0_1_mask_as_a_mask():
    jaw = np.array([[0.1, 0, 0], [0.2, 0, 0], [0.6, 0, 0]])
    assert M.silent_jaw(jaw, [0, 0, 1]) == (pytest.approx(0.6), 1)     # not frames 0, 0, 1
    assert M.silent_jaw(jaw, np.array([1, 1, 0])) == (pytest.approx(0.15), 2)
    assert M.silent_jaw(jaw, [0, 0, 0]) == (None, 0)


def test_pairwise_pose_distance_two_samples():
    p = np.zeros((2, 3, 3))
    p[1, :, 0] = 0.2
    assert M.pairwise_pose_distance(p) == pytest.approx(0.2)
    # three samples: pairs (0,1)=0.2, (0,2)=0.5, (1,2)=0.3 -> mean 1/3 (adjacent pairs included)
    q = np.zeros((3, 2, 3))
    q[1, :, 0], q[2, :, 0] = 0.2, 0.5
    assert M.pairwise_pose_distance(q) == pytest.approx(1.0 / 3)
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        M.pairwise_pose_distance(np.zeros((1, 3, 3)))


def test_kl_per_dim_by_hand_and_in_float64():
    # mu = -1, logvar = 0: 0.5 (1 + 1 - 0 - 1) = 0.5 (mu ** 3 would give -0.5)
    assert M.kl_per_dim(np.array([-1.0]), np.array([0.0]))[0] == pytest.approx(0.5)
    # float32 inputs (the model's) are computed in float64: no overflow where float64 has room
    mu = np.array([1e20, 0.0], np.float32)
    logvar = np.array([0.0, 100.0], np.float32)
    kl = M.kl_per_dim(mu, logvar)
    assert kl.dtype == np.float64 and np.isfinite(kl).all()
    assert kl[0] == pytest.approx(0.5 * float(np.float32(1e20)) ** 2, rel=1e-6)
    assert kl[1] == pytest.approx(0.5 * (np.exp(100.0) - 101.0))


def test_active_units_is_strictly_above_the_threshold():
    assert M.active_units(np.array([0.01, 0.0100001, 0.0]), threshold=0.01) == 1
