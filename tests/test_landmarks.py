"""fit.backend = landmarks: geometry on synthetic landmarks (no model needed), and the REAL MediaPipe
face mesh (its venv, scripts/setup_landmarks_env.sh) on real face photos warped by known motion
(tests/warped_faces.py) and through the fit stage. The model tests are skipped only when the venv
is not built."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import warped_faces as wf
from chorushead.backends import landmarks as lm
from chorushead.core import openhead as oh
from chorushead.core.windows import EXP, JAW
from chorushead.core.errors import BadInput, MissingAsset, StageError
from chorushead.runner import _model_for
from chorushead.stages.fit import STAGE, Params
from conftest import fit_upstream, make_ctx

needs_env = pytest.mark.skipif(lm.find_landmark_python() is None and not lm.in_process_available(),
                               reason=f"landmark venv not built (looked for {lm.landmark_pythons()}); "
                                      "run scripts/setup_landmarks_env.sh")
FLIP = np.array([-1.0, 1.0, 1.0])


def posed_landmarks(rvec, jaw: float, scale: float = 90.0) -> np.ndarray:
    """The canonical face rotated by ``rvec``, the lower lip swung open by ``jaw`` radians about a
    pivot JAW_RADIUS eye-widths from it, then put in MediaPipe's pixel convention."""
    c = lm.load_canonical().copy()
    c[lm.LOWER_LIP] = c[lm.UPPER_LIP]                          # closed: the inner lips touch
    pivot = c[lm.UPPER_LIP] + np.array([0.0, 0.0, -lm.JAW_RADIUS])   # behind the lips, at their height
    c[lm.LOWER_LIP] = pivot + Rotation.from_rotvec([jaw, 0, 0]).apply(c[lm.UPPER_LIP] - pivot)
    x = Rotation.from_rotvec(rvec).apply(c) * scale + np.array([112.0, -112.0, 0.0])
    return lm.to_flame_frame(x)[None].astype(np.float32)       # the axis flip is its own inverse


def test_shipped_canonical_is_frontal_and_symmetric():
    c = lm.load_canonical()
    pairs = lm.mirror_pairs(c)
    assert (pairs[pairs] == np.arange(lm.N_POINTS)).all()         # a true left-right pairing
    assert pairs[lm.RIGHT_EYE] == lm.LEFT_EYE and pairs[468] == 473   # eye corners, iris centres
    np.testing.assert_allclose(c[pairs] * FLIP, c, atol=1e-5)
    assert np.isclose(np.linalg.norm(c[lm.RIGHT_EYE] - c[lm.LEFT_EYE]), 1.0, atol=1e-5)
    assert c[lm.RIGHT_EYE, 0] < 0 < c[lm.LEFT_EYE, 0]             # subject's left = FLAME +x
    assert c[10, 1] > c[1, 1] > c[152, 1]                          # forehead above nose above chin: y up
    assert c[1, 2] > c[234, 2]                                     # nose tip in front of the cheek: z to camera


@pytest.mark.parametrize("rvec,jaw", [((0, 0, 0), 0.0), ((0.1, -0.3, 0.2), 0.25), ((-0.2, 0.5, -0.1), 0.1)])
def test_pose_and_jaw_recovered_from_exact_landmarks(rvec, jaw):
    c, found = lm.coefficients(posed_landmarks(rvec, jaw), lm.load_canonical())
    assert found.all() and c.dtype == np.float32
    np.testing.assert_allclose(c[0, :50], 0)
    np.testing.assert_allclose(c[0, JAW], [jaw, 0, 0], atol=1e-5)
    np.testing.assert_allclose(c[0, 53:], rvec, atol=1e-5)


def test_similarity_recovers_scale_rotation_shift():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(40, 3))
    r = Rotation.from_rotvec([0.3, -0.7, 1.1]).as_matrix()
    s, r2, t = lm.similarity(src, 2.5 * src @ r.T + [1.0, 2.0, 3.0])
    np.testing.assert_allclose([s, *t], [2.5, 1.0, 2.0, 3.0], atol=1e-9)
    np.testing.assert_allclose(r2, r, atol=1e-9)


def test_missing_faces_are_interpolated_and_flagged():
    lms = np.concatenate([posed_landmarks((0, 0, 0.1), 0.1), np.full((3, 478, 3), np.nan, np.float32),
                          posed_landmarks((0, 0, 0.5), 0.3)])
    c, found = lm.coefficients(lms, lm.load_canonical())
    assert found.tolist() == [True, False, False, False, True] and np.isnan(c[1:4]).all()
    filled = lm.fill_missing(c, found)
    np.testing.assert_allclose(filled[:, 55], [0.1, 0.2, 0.3, 0.4, 0.5], atol=1e-5)
    np.testing.assert_allclose(filled[:, 50], [0.1, 0.15, 0.2, 0.25, 0.3], atol=1e-5)
    assert (lm.fill_missing(c[1:4], found[1:4]) == 0).all()       # no face at all: zeros, still flagged


def known_expression_landmarks(smile: np.ndarray, jaw: np.ndarray, seed: int = 0) -> np.ndarray:
    """Landmarks of the canonical face with a smile warp that is NOT the basis's (other widths and
    directions), its jaw turned by the open head's skinning, a random pose and 0.3 px noise each frame."""
    rng = np.random.default_rng(seed)
    c = lm.load_canonical()
    v = c[:oh.N_VERTS]
    bump = lambda p: np.exp(-((v - p) ** 2).sum(1) / (2 * 0.09 ** 2))[:, None]  # noqa: E731
    field = bump(c[oh.LEFT_CORNER]) * [0.06, 0.05, 0.0] + bump(c[oh.RIGHT_CORNER]) * [-0.06, 0.05, 0.0]
    pivot, w = oh.jaw_pivot(c), oh.jaw_weights(c)[:, None]
    out = []
    for s, j in zip(smile, jaw):
        x = c.copy()
        x[:oh.N_VERTS] += s * field
        turned = (x[:oh.N_VERTS] - pivot) @ Rotation.from_rotvec([j, 0, 0]).as_matrix().T + pivot
        x[:oh.N_VERTS] += w * (turned - x[:oh.N_VERTS])
        x = Rotation.from_rotvec(rng.normal(0, 0.2, 3)).apply(x) * 90 + [112.0, -112.0, 0.0]
        out.append(lm.to_flame_frame(x + rng.normal(0, 0.3, x.shape)))
    return np.asarray(out, np.float32)


def test_expression_from_exact_geometry_smile_and_jaw():
    """The expression fit without the model: canonical-frame alignment, the jaw undone with the head's
    own skinning, the segment's median as neutral, the projection on the basis."""
    t = np.arange(60)
    smile = 0.5 * (1 - np.cos(2 * np.pi * t / 60))
    jaw = 0.2 * np.abs(np.sin(2 * np.pi * t / 30))
    c = lm.load_canonical()
    aligned = np.zeros((len(t), oh.N_VERTS, 3))
    coeffs, found = lm.coefficients(known_expression_landmarks(smile, jaw), c, aligned=aligned)
    e = lm.expression(aligned, coeffs[:, 50], found, c, oh.expression_basis(c))
    k = oh.EXP_NAMES.index("smile")
    assert np.corrcoef(e[:, k], smile)[0, 1] > 0.99                    # measured 0.997
    assert (e[:, k] ** 2).sum() > 0.7 * (e ** 2).sum()                  # most of the energy (measured 0.81)
    assert np.corrcoef(coeffs[:, 50], jaw)[0, 1] > 0.99
    still = lm.expression(aligned[:1].repeat(5, 0), np.zeros(5), np.ones(5, bool), c, oh.expression_basis(c))
    np.testing.assert_allclose(still, 0, atol=1e-6)                     # a held face is the neutral
    gone = lm.expression(aligned[:3], coeffs[:3, 50], np.array([True, False, True]), c, oh.expression_basis(c))
    assert np.isnan(gone[1]).all() and np.isfinite(gone[[0, 2]]).all()


def test_missing_environment_and_bad_backend_are_explained(tmp_path):
    with pytest.raises(MissingAsset, match="setup.sh") as e:
        STAGE.setup(Params(backend="landmarks", landmarks_python=str(tmp_path / "nope" / "python")))
    assert str(tmp_path / "nope") in str(e.value) and "mediapipe" in str(e.value)
    with pytest.raises(BadInput, match="landmarks"):
        STAGE.setup(Params(backend="emocca"))


# ---------------------------------------------------------------------------------------------- the real model

@pytest.fixture(scope="module")
def backend():
    b = lm.LandmarksBackend.open()
    yield b
    b.close()


@pytest.fixture(scope="module")
def known(tmp_path_factory, backend):
    """Both photos through 3 × 30 frames of known roll, yaw squeeze and mouth opening."""
    root = tmp_path_factory.mktemp("known")
    clip = wf.known_motion(30)
    strips = wf.write_strips(root, clip)
    paths, n = backend.fit([str(s) for s in strips], [(0, len(clip.phase))], root, 32)
    with np.load(paths[0]) as z:
        return clip, z["coeffs"], z["found"]


@needs_env
def test_known_motion_roll_yaw_jaw(known):
    clip, coeffs, found = known
    assert found.all()
    for s in range(2):
        pose = Rotation.from_rotvec(coeffs[s, :, 53:].astype(np.float64))
        # roll relative to the untouched photo (frame 0): the photos' own head tilt is not known
        rel = pose * Rotation.from_rotvec(coeffs[s, 0, 53:].astype(np.float64)).inv()
        roll = np.degrees(rel.as_euler("ZYX")[:, 0])
        on = clip.phase == 0
        assert np.abs(roll[on] - clip.roll_deg[on]).mean() < 2.0
        on = (clip.phase == 1) & (np.abs(clip.yaw_a) > 0.1)
        assert (np.sign(coeffs[s, on, 54]) == np.sign(clip.yaw_a[on])).all()   # squeezed right = turned right
        on = clip.phase == 2
        assert np.corrcoef(coeffs[s, on, 50], clip.gap_px[on])[0, 1] >= 0.9
        np.testing.assert_array_equal(coeffs[s, :, 51:53], 0)


@needs_env
def test_known_smile_is_read_as_the_smile_coefficient(known):
    """The warped smile (both mouth corners out and up by 0..8 px) through the real face mesh: of the
    50 expression coefficients the open head's `smile` follows it (measured r = 0.999 / 0.998 on the
    two photos), and it is the largest; on rigid roll it stays small."""
    clip, coeffs, _ = known
    k = oh.EXP_NAMES.index("smile")
    on = clip.phase == 3
    for s in range(2):
        e = coeffs[s, :, EXP].astype(np.float64)
        r = [np.corrcoef(e[on, j], clip.smile_px[on])[0, 1] for j in range(oh.N_EXP)]
        assert r[k] >= 0.97, r[k]
        swing = np.ptp(e[on, k])
        assert swing > 1.0                                              # ~1.5-1.7 units for 8 px
        assert np.abs(e[on]).mean(0).argmax() == k                      # the largest coefficient of the phase
        assert np.abs(e[clip.phase == 0, k]).max() < 0.3 * swing        # roll is rigid: no smile read into it


@needs_env
def test_canonical_is_made_from_the_model_on_the_photos(tmp_path, backend):
    """How chorushead/data/face_mesh_canonical.npy was made (rerun this to regenerate it)."""
    import cv2
    paths = []
    for k, img in enumerate(wf.photos()):
        paths.append(str(tmp_path / f"{k}.png"))
        cv2.imwrite(paths[-1], cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    shapes = np.stack([lm.to_flame_frame(x.astype(np.float64)) for x in backend.detect(paths, tmp_path)])
    np.testing.assert_allclose(lm.make_canonical(shapes), lm.load_canonical(), atol=2e-3)


@needs_env
def test_fit_stage_through_landmarks(tmp_path):
    clip = wf.known_motion(10)                   # 40 frames; frame 25 shows no face
    wf.write_strips(tmp_path / "items/song/crop", clip, blank=(25,))
    segments = [[2, 12], [20, 30]]
    ctx = make_ctx(tmp_path, "fit", fit_upstream(2, segments, 30, "song"), item_id="song", out=tmp_path)
    params = Params(backend="landmarks", batch_size=4)
    model = _model_for(STAGE, params)            # as the runner hands it over: behind a lazy proxy
    try:
        assert model.worker is not None, "the project env must not import mediapipe; it runs in its venv"
        r = STAGE.process(ctx, params, model)
        STAGE.check(r)
        assert r.outputs["segments"] == ["seg000.npz", "seg001.npz"]
        assert r.outputs["backend"] == "landmarks" and r.outputs["coeff_groups"] == ["exp", "jaw", "pose"]
        assert r.metrics["images"] == 2 * 20 and r.metrics["no_face"] == 2 and r.metrics["device"] == "cpu"
        for name, (start, end) in zip(r.outputs["segments"], segments):
            with np.load(ctx.tmp / name) as z:
                c, found = z["coeffs"], z["found"]
                assert c.shape == (2, end - start, 56) and c.dtype == np.float32 and np.isfinite(c).all()
                assert list(z["frames"]) == [start, end] and found.shape == (2, end - start)
        with np.load(ctx.tmp / "seg001.npz") as z:
            c, found = z["coeffs"], z["found"]
        assert found[:, 5].tolist() == [False, False] and found.sum() == 2 * 10 - 2
        np.testing.assert_allclose(c[:, 5], (c[:, 4] + c[:, 6]) / 2, atol=1e-6)   # interpolated
        # the same worker serves the next video after a failing one
        ctx.upstream["contiguity"].outputs["segments"] = [[35, 50]]          # crops end at 40
        with pytest.raises(StageError, match="missing"):
            STAGE.process(ctx, params, model)
        shutil.rmtree(ctx.tmp)
        ctx.tmp.mkdir()
        ctx.upstream["contiguity"].outputs["segments"] = [[0, 3]]
        assert STAGE.process(ctx, params, model).outputs["segments"] == ["seg000.npz"]
    finally:
        model.close()


def test_doctor_reports_the_landmark_env(tmp_path):
    from chorushead.doctor import doctor
    checks = {c.what: c for c in doctor({"fit": {"landmarks_python": str(tmp_path / "no" / "python")}})}
    env = checks["landmarks: mediapipe environment + face-mesh models"]
    assert not env.found and str(tmp_path / "no") in env.looked_in and "setup.sh" in env.how_to_get
    assert checks["landmarks: canonical face"].found


@needs_env
def test_doctor_finds_the_built_env():
    from chorushead.doctor import doctor
    env = {c.what: c for c in doctor()}["landmarks: mediapipe environment + face-mesh models"]
    assert env.found, env
