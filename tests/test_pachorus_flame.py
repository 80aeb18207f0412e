"""FLAME loading (restricted unpickler) and linear blend skinning on a generated FLAME-format model."""
import io
import pickle

import numpy as np
import pytest
import torch

from chorushead.core.flame import (MASKS_FILE, MODEL_FILE, FlameAssetsMissing, FlameModel, _rodrigues,
                            make_synthetic_flame, safe_load_pickle)
from chorushead.core.windows import POSE


@pytest.fixture(scope="module")
def flame(tmp_path_factory):
    return FlameModel.load(make_synthetic_flame(tmp_path_factory.mktemp("flame")))


def test_loads_keys_chumpy_and_sparse(flame, tmp_path):
    assert flame.shapedirs.shape == (flame.n_vertices, 3, 400)   # came through the chumpy stand-in
    assert flame.j_regressor.shape == (5, flame.n_vertices)     # sparse matrix rebuilt densely
    assert flame.parents == [-1, 0, 1, 1, 1]
    assert flame.faces.shape[1] == 3 and flame.faces.max() < flame.n_vertices
    assert {"lips", "face", "forehead", "eye_region"} <= set(flame.masks)
    np.testing.assert_allclose(flame.j_regressor.sum(1).numpy(), 1.0, atol=1e-6)


def test_zero_coefficients_give_template(flame):
    v = flame.vertices_np(np.zeros((3, 56), np.float32))
    np.testing.assert_allclose(v, np.broadcast_to(flame.v_template.numpy(), v.shape), atol=1e-6)


def test_global_rotation_is_rigid_about_root(flame):
    c = np.zeros((1, 56), np.float32)
    c[0, POSE] = [0.1, 0.4, -0.2]
    v = flame.vertices_np(c)[0]
    rest = flame.vertices_np(np.zeros((1, 56), np.float32))[0]
    root = (flame.j_regressor @ flame.v_template)[0].numpy()
    rot = _rodrigues(torch.tensor(c[0, POSE]))
    # posedirs only react to non-root joints, so a pure global rotation is rigid
    expect = (rest - root) @ rot.numpy().T + root
    np.testing.assert_allclose(v, expect, atol=1e-5)
    # and zero_pose removes it
    np.testing.assert_allclose(flame.vertices_np(c, zero_pose=True)[0], rest, atol=1e-6)


def test_rodrigues_matches_known_rotation():
    r = _rodrigues(torch.tensor([0.0, 0.0, np.pi / 2]))
    np.testing.assert_allclose(r.numpy(), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-6)


def test_jaw_moves_lips_not_scalp(flame):
    c = np.zeros((2, 56), np.float32)
    c[1, 50] = 0.3
    v = flame.vertices_np(c)
    moved = np.linalg.norm(v[1] - v[0], axis=-1)
    assert moved[flame.masks["lips"]].mean() > 0.01          # cm-scale on a 10 cm head
    assert moved[flame.masks["scalp"]].max() < 1e-3


def test_expression_blendshapes_are_linear(flame):
    c = np.zeros((3, 56), np.float32)
    c[1, 3], c[2, 3] = 1.0, 2.0
    v = flame.vertices_np(c)
    np.testing.assert_allclose(v[2] - v[0], 2 * (v[1] - v[0]), atol=1e-6)
    dirs = flame.shapedirs[..., 300 + 3].numpy()
    np.testing.assert_allclose(v[1] - v[0], dirs, atol=1e-6)


def test_missing_files_one_clear_error(tmp_path):
    with pytest.raises(FlameAssetsMissing) as e:
        FlameModel.load(tmp_path)
    msg = str(e.value)
    assert MODEL_FILE in msg and MASKS_FILE in msg and str(tmp_path) in msg and "flame.is.tue.mpg.de" in msg


def test_unpickler_refuses_other_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle global"):
        safe_load_pickle(p)


def test_old_scipy_paths_are_mapped():
    import scipy.sparse as sp
    from chorushead.core.flame import _CscStub, _CsrStub, _RestrictedUnpickler
    u = _RestrictedUnpickler(io.BytesIO(b""))
    assert u.find_class("scipy.sparse.csc", "csc_matrix") is _CscStub   # scipy < 1.8 path
    assert u.find_class("scipy.sparse._csc", "csc_matrix") is _CscStub
    assert u.find_class("scipy.sparse.csr", "csr_matrix") is _CsrStub
    m = sp.csr_matrix(np.array([[0, 2.0], [3.0, 0]]))
    s = _CsrStub()
    s.__setstate__({"_shape": m.shape, "data": m.data, "indices": m.indices, "indptr": m.indptr})
    np.testing.assert_array_equal(s.toarray(), m.toarray())
