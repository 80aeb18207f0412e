"""Tests that kill the mutants of chorushead/core/flame.py that survived the existing tests
(docs/mutation-survivors.md).

The skinning is checked against a closed form written here by hand: with only the global pose and the
jaw rotating (neck and eyes stay at rest), every joint but the jaw moves a point x to
Rg (x - J0) + J0 and the jaw to Rg (Rj (x - J2) + J2 - J0) + J0, applied to the shaped vertices plus
the pose correctives (posedirs times the flattened R - I of joints 1..4). Rotations are compared with
the textbook matrices about x, y and z. The restricted unpickler is fed hand-made protocol-2 bytes and
the stand-ins are fed raw state dicts. The synthetic model is checked from its definition: a 10 cm UV
sphere (closed, outward faces), masks and skinning weights from the stated height/depth bands, each
joint regressed from its four nearest vertices, and random directions drawn from ``seed``.

Every test loads its own model (function-scoped fixture): mutmut maps a mutant to the tests that reach
the mutated function, and a module-scoped fixture would only be charged to the first test."""
from __future__ import annotations

import io
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from chorushead.core import flame as F
from chorushead.core.windows import EXP, JAW, POSE


@pytest.fixture
def folder(tmp_path):
    return F.make_synthetic_flame(tmp_path / "flame")


@pytest.fixture
def model(folder):
    return F.FlameModel.load(folder)


def rot(axis: str, a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


# ---------------------------------------------------------------- rotations

def test_rodrigues_about_each_axis_and_in_a_batch():
    a = 0.3                                   # cos a != 0: the (1 - cos) term counts
    for i, axis in enumerate("xyz"):
        r = np.zeros(3)
        r[i] = a
        np.testing.assert_allclose(F._rodrigues(torch.tensor(r)).numpy(), rot(axis, a), atol=1e-12)
    batch = torch.tensor([[a, 0, 0], [0, 2 * a, 0], [0, 0, -a]], dtype=torch.float64)
    out = F._rodrigues(batch)                 # each row its own angle
    assert out.shape == (3, 3, 3)
    for k, expect in enumerate([rot("x", a), rot("y", 2 * a), rot("z", -a)]):
        np.testing.assert_allclose(out[k].numpy(), expect, atol=1e-12)
    r = F._rodrigues(torch.tensor([0.2, -0.5, 0.7]))
    np.testing.assert_allclose((r @ r.T).numpy(), np.eye(3), atol=1e-6)
    assert abs(float(torch.linalg.det(r)) - 1) < 1e-6


def test_rodrigues_keeps_the_input_dtype():
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        r = F._rodrigues(torch.tensor([0.1, 0.2, 0.3], dtype=dt))
        assert r.dtype == dt, dt                     # a half-precision pose stays half precision
        np.testing.assert_allclose(r.double().numpy(), F._rodrigues(torch.tensor([0.1, 0.2, 0.3])).numpy(),
                                   atol=1e-2)


def test_rodrigues_of_a_tiny_or_zero_rotation_is_finite():
    # (-1e-8, -1e-8, -1e-8) made the old norm(rvec + 1e-8) exactly 0 and the matrix NaN.
    for v in ([0.0, 0.0, 0.0], [1e-8, 1e-8, 1e-8], [-1e-8, -1e-8, -1e-8], [-1e-12, 0.0, 3e-9]):
        r = F._rodrigues(torch.tensor(v, dtype=torch.float32))
        assert torch.isfinite(r).all(), v
        np.testing.assert_allclose(r.numpy(), np.eye(3), atol=1e-6)


def test_rodrigues_gradient_at_zero_is_the_cross_product_matrix():
    # d R / d r at r = 0 is [e_i]x: fits that start at the rest pose depend on it.
    r = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(F._rodrigues, r)          # (3, 3, 3)
    for i in range(3):
        e = np.zeros(3); e[i] = 1.0
        skew = np.array([[0, -e[2], e[1]], [e[2], 0, -e[0]], [-e[1], e[0], 0]])
        np.testing.assert_allclose(jac[..., i].numpy(), skew, atol=1e-6)


# ---------------------------------------------------------------- restricted unpickler and stand-ins

def test_find_class_maps_chumpy_scipy_and_python2_names():
    u = F._RestrictedUnpickler(io.BytesIO(b""))
    assert u.find_class("chumpy", "Ch") is F._ChumpyStub
    assert u.find_class("chumpy.ch", "Ch") is F._ChumpyStub
    assert u.find_class("chumpy.reordering", "transpose") is F._ChumpyStub
    assert u.find_class("scipy.sparse.csr", "csr_matrix") is F._CsrStub
    import copyreg
    assert u.find_class("copy_reg", "_reconstructor") is copyreg._reconstructor     # Python 2 names
    assert u.find_class("__builtin__", "object") is object
    import numpy._core.multiarray as ma
    assert u.find_class("numpy.core.multiarray", "_reconstruct") is ma._reconstruct   # numpy 1 pickles
    assert u.find_class("numpy.core.multiarray", "scalar") is ma.scalar
    assert u.find_class("numpy", "ndarray") is np.ndarray


@pytest.mark.parametrize("module,name", [("os", "system"), ("chumpyx", "Ch"), ("scipy.sparse", "coo_matrix"),
                                         ("numpy", "load")])
def test_find_class_refuses_the_rest_with_the_whole_message(module, name):
    u = F._RestrictedUnpickler(io.BytesIO(b""))
    with pytest.raises(pickle.UnpicklingError) as e:
        u.find_class(module, name)
    assert str(e.value) == (f"refusing to unpickle global {module}.{name}: only numpy arrays, scipy sparse "
                            "matrices and chumpy arrays are expected in FLAME files")


def test_python2_byte_strings_are_read_as_latin1(tmp_path):
    p = tmp_path / "py2.pkl"
    p.write_bytes(b"\x80\x02U\x02\xe9\xe8q\x00.")      # protocol 2, SHORT_BINSTRING of two non-ASCII bytes
    assert F.safe_load_pickle(p) == "\xe9\xe8"


def test_chumpy_stub_finds_its_array():
    a, b = np.arange(3.0), np.ones((2, 2))
    s = F._ChumpyStub()
    with pytest.raises(ValueError) as e:                  # no state at all
        s.array
    assert str(e.value) == "chumpy object without an array payload (derived term?) in the FLAME pickle"
    s.__setstate__({"x": a, "y": b})
    assert s.array is a
    s.__setstate__({"x": "not an array", "n": 3, "y": b, "z": a})   # derived term: first array found
    assert s.array is b
    s.__setstate__(a)                                     # a non-dict state is kept too
    assert s.array is a
    s.__setstate__({"x": 1})
    with pytest.raises(ValueError, match="without an array payload"):
        s.array
    s.__setstate__({"x": a})
    assert s.__array__() is a
    f32 = s.__array__(np.float32)
    assert f32.dtype == np.float32 and f32.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("stub,cls", [(F._CscStub, sp.csc_matrix), (F._CsrStub, sp.csr_matrix)])
@pytest.mark.parametrize("key", ["_shape", "shape"])     # new and old scipy spell the shape differently
def test_sparse_stub_keeps_the_shape_with_empty_last_rows_and_columns(stub, cls, key):
    dense = np.zeros((4, 5))
    dense[0, 1], dense[2, 0] = 2.0, 3.0                   # last two rows / columns empty
    m = cls(dense)
    s = stub()
    s.__setstate__({key: m.shape, "data": m.data, "indices": m.indices, "indptr": m.indptr})
    out = s.toarray()
    assert out.shape == (4, 5)
    np.testing.assert_array_equal(out, dense)


def test_as_array_of_scipy_matrices_stubs_and_lists():
    dense = np.array([[0.0, 1.0], [2.0, 0.0]])
    for m in (sp.csr_matrix(dense), sp.csc_matrix(dense)):
        out = F._as_array(m)
        assert isinstance(out, np.ndarray) and out.shape == (2, 2)
        np.testing.assert_array_equal(out, dense)
    s = F._ChumpyStub()
    s.__setstate__({"x": dense})
    np.testing.assert_array_equal(F._as_array(s), dense)
    assert F._as_array([1, 2]).tolist() == [1, 2]


# ---------------------------------------------------------------- loading

def test_load_message_lists_each_missing_file(tmp_path):
    with pytest.raises(F.FlameAssetsMissing) as e:
        F.FlameModel.load(tmp_path)
    assert str(e.value).startswith(f"FLAME files missing: {F.MODEL_FILE}, {F.MASKS_FILE} (looked in "
                                   f"{tmp_path.resolve()}). ")
    F.make_synthetic_flame(tmp_path)
    (tmp_path / F.MASKS_FILE).unlink()
    with pytest.raises(F.FlameAssetsMissing) as e:
        F.FlameModel.load(tmp_path)
    assert str(e.value) == f"FLAME files missing: {F.MASKS_FILE} (looked in {tmp_path.resolve()}). {F.HOW_TO_GET}"


def test_load_types_values_and_n_shape(folder):
    m = F.FlameModel.load(folder)
    raw = F.safe_load_pickle(folder / F.MODEL_FILE)
    assert m.n_shape == 300 and m.n_vertices == 178
    for k, key in [("v_template", "v_template"), ("posedirs", "posedirs"), ("weights", "weights"),
                   ("j_regressor", "J_regressor"), ("shapedirs", "shapedirs")]:
        t = getattr(m, k)
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32, k
        np.testing.assert_allclose(t.numpy(), F._as_array(raw[key]), rtol=1e-6, atol=1e-12)
    assert m.faces.dtype == np.int64 and m.faces.shape == (352, 3)
    assert all(v.dtype == np.int64 for v in m.masks.values())
    # n_shape is capped at the directions that are not the 50 used expression ones
    assert F.FlameModel.load(folder, n_shape=1000).n_shape == 400 - 50
    assert F.FlameModel.load(folder, n_shape=7).n_shape == 7


def test_to_moves_every_tensor_and_returns_the_model(model):
    assert model.to(torch.float64) is model
    for k in ("v_template", "shapedirs", "posedirs", "j_regressor", "weights"):
        assert getattr(model, k).dtype == torch.float64, k


def test_upper_face_is_forehead_and_eye_region(model):
    u = model.upper_face()
    expect = sorted(set(model.masks["forehead"].tolist()) | set(model.masks["eye_region"].tolist()))
    assert u.tolist() == expect and len(model.masks["forehead"]) and len(model.masks["eye_region"])


# ---------------------------------------------------------------- skinning

def reference(m: F.FlameModel, coeffs: np.ndarray, betas: np.ndarray | None = None) -> np.ndarray:
    """Posed vertices (V, 3) of one frame by the closed form in the module docstring above."""
    c = np.asarray(coeffs, np.float64)
    v0 = m.v_template.double().numpy()
    sd = m.shapedirs.double().numpy()
    v = v0 + sd[..., 300:350] @ c[EXP]          # expression: the first 50 of the last 100
    if betas is not None:
        v = v + sd[..., :len(betas)] @ betas
    J = m.j_regressor.double().numpy() @ v
    Rg = F._rodrigues(torch.tensor(c[POSE], dtype=torch.float64)).numpy()
    Rj = F._rodrigues(torch.tensor(c[JAW], dtype=torch.float64)).numpy()
    feat = np.concatenate([np.zeros(9), (Rj - np.eye(3)).ravel(), np.zeros(18)])
    vp = v + m.posedirs.double().numpy() @ feat
    root = (vp - J[0]) @ Rg.T + J[0]
    jaw = ((vp - J[2]) @ Rj.T + J[2] - J[0]) @ Rg.T + J[0]
    w = m.weights.double().numpy()
    return (w[:, [0, 1, 3, 4]].sum(1, keepdims=True) * root) + w[:, [2]] * jaw


def test_vertices_match_the_closed_form_with_jaw_pose_and_expression(model):
    c = np.zeros(56)
    c[EXP][:] = np.linspace(-1.0, 1.0, 50)
    c[JAW] = [0.25, 0.05, -0.03]
    c[POSE] = [0.1, -0.3, 0.2]
    got = model.vertices(c[None].astype(np.float32))[0].numpy()
    np.testing.assert_allclose(got, reference(model, c), atol=2e-6)
    # the jaw alone moves the lower front ("lips"), the rest only by the pose correctives
    j = np.zeros(56)
    j[JAW] = [0.3, 0, 0]
    np.testing.assert_allclose(model.vertices_np(j[None])[0], reference(model, j), atol=2e-6)


def test_vertices_keep_leading_dimensions_and_take_float64(model):
    rng = np.random.default_rng(3)
    c = rng.normal(0, 0.2, (2, 3, 56))
    out = model.vertices(c)                            # float64 input, default zero_pose=False
    assert out.shape == (2, 3, 178, 3) and out.dtype == torch.float32
    for i in range(2):
        for t in range(3):
            np.testing.assert_allclose(out[i, t].numpy(), reference(model, c[i, t]), atol=2e-6)
    one = model.vertices(torch.tensor(c[0, 0], dtype=torch.float32))   # a single frame (56,) -> (V, 3)
    assert one.shape == (178, 3)
    np.testing.assert_allclose(one.numpy(), out[0, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(model.vertices_np(c), out.numpy(), atol=1e-6)
    np.testing.assert_allclose(model.vertices_np(c, chunk=4), out.numpy(), atol=1e-6)   # 6 frames, 2 chunks
    still = model.vertices_np(c, zero_pose=True)
    c0 = c.copy()
    c0[..., POSE] = 0
    np.testing.assert_allclose(still, model.vertices_np(c0), atol=1e-6)


def test_identity_shape_one_vector_or_one_per_frame(folder):
    m = F.FlameModel.load(folder, n_shape=10)
    c = np.zeros((2, 56), np.float32)
    c[:, JAW] = [0.2, 0, 0]
    betas = np.linspace(1.0, 3.0, 10)
    out = m.vertices(c, shape=torch.tensor(betas, dtype=torch.float32))   # one identity for both frames
    assert out.shape == (2, 178, 3)
    for t in range(2):
        np.testing.assert_allclose(out[t].numpy(), reference(m, c[t], betas), atol=2e-6)
    at_rest = m.vertices(np.zeros((1, 56), np.float32), shape=betas)[0].numpy()
    expect = m.v_template.numpy() + m.shapedirs[..., :10].numpy() @ betas
    np.testing.assert_allclose(at_rest, expect, atol=1e-6)
    per_frame = np.stack([betas, -betas])
    out2 = m.vertices(c, shape=per_frame)
    np.testing.assert_allclose(out2[0].numpy(), reference(m, c[0], betas), atol=2e-6)
    np.testing.assert_allclose(out2[1].numpy(), reference(m, c[1], -betas), atol=2e-6)


# ---------------------------------------------------------------- the synthetic model

def test_uv_sphere_vertices_and_closed_outward_faces():
    n_lat, n_lon = 4, 5
    v, f = F._uv_sphere(n_lat, n_lon)
    assert v.shape == (2 + 3 * 5, 3) and f.shape == (2 * 5 * 3, 3) and f.dtype == np.int64
    np.testing.assert_allclose(v[0], [0, 0.1, 0], atol=1e-15)
    np.testing.assert_allclose(v[-1], [0, -0.1, 0], atol=1e-15)
    for i in range(1, n_lat):                          # ring i, longitude j
        for j in range(n_lon):
            th, ph = np.pi * i / n_lat, 2 * np.pi * j / n_lon
            np.testing.assert_allclose(v[1 + (i - 1) * n_lon + j],
                                       0.1 * np.array([np.sin(th) * np.sin(ph), np.cos(th), np.sin(th) * np.cos(ph)]),
                                       atol=1e-15)
    # a closed surface: every directed edge once, and its reverse once
    edges = [(a, b) for t in f.tolist() for a, b in zip(t, t[1:] + t[:1])]
    assert len(set(edges)) == len(edges) == 90 and {(b, a) for a, b in edges} == set(edges)
    assert all(len(set(t)) == 3 for t in f.tolist())
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert (np.einsum("fc,fc->f", normals, v[f].mean(1)) > 0).all()     # every face points outwards


def test_default_synthetic_model_contents(folder):
    raw = F.safe_load_pickle(folder / F.MODEL_FILE)
    assert (folder / F.MODEL_FILE).read_bytes()[:2] == b"\x80\x02"     # protocol 2, like FLAME 2020
    assert (folder / F.MASKS_FILE).read_bytes()[:2] == b"\x80\x02"
    assert sorted(raw) == sorted(["v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights",
                                  "kintree_table", "bs_style", "bs_type"])
    assert raw["bs_style"] == "lbs" and raw["bs_type"] == "lrotmin"
    assert isinstance(raw["shapedirs"], F._ChumpyStub) and isinstance(raw["J_regressor"], F._CscStub)
    assert raw["f"].dtype == np.uint32
    assert raw["kintree_table"].dtype == np.int64
    assert raw["kintree_table"].tolist() == [[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]]
    v, f = F._uv_sphere(12, 16)                        # the defaults: 12 rings of 16
    np.testing.assert_array_equal(raw["v_template"], v)
    np.testing.assert_array_equal(raw["f"], f)
    assert raw["posedirs"].shape == (178, 3, 36) and F._as_array(raw["shapedirs"]).shape == (178, 3, 400)


def test_synthetic_masks_and_weights_follow_their_bands(folder):
    masks = F.safe_load_pickle(folder / F.MASKS_FILE)
    raw = F.safe_load_pickle(folder / F.MODEL_FILE)
    v = raw["v_template"]
    x, y, z = v.T
    front = z > 0.02
    idx = lambda m: np.flatnonzero(m).tolist()   # noqa: E731
    expect = {"lips": idx(front & (y < -0.02) & (y > -0.07)), "face": idx(front),
              "forehead": idx(front & (y > 0.05)), "eye_region": idx(front & (y > 0) & (y <= 0.05)),
              "nose": idx(front & (np.abs(y) < 0.02)), "scalp": idx(y > 0.07), "neck": idx(y < -0.08)}
    assert {k: np.asarray(m).tolist() for k, m in masks.items()} == expect
    assert all(len(m) for m in expect.values())
    w = raw["weights"]
    lower_front = front & (y < -0.02)
    assert w.shape == (178, 5) and lower_front.sum() > 0
    np.testing.assert_array_equal(w[~lower_front], np.tile([1.0, 0, 0, 0, 0], ((~lower_front).sum(), 1)))
    np.testing.assert_array_equal(w[lower_front], np.tile([0.2, 0, 0.8, 0, 0], (lower_front.sum(), 1)))


def test_synthetic_joints_regress_from_their_four_nearest_vertices(folder):
    raw = F.safe_load_pickle(folder / F.MODEL_FILE)
    v = raw["v_template"]
    jreg = raw["J_regressor"].toarray()
    assert jreg.shape == (5, 178)
    # root, neck, jaw, left eye, right eye (metres)
    at = [(0, 0, 0), (0, -0.08, -0.02), (0, -0.03, -0.03), (0.035, 0.03, 0.08), (-0.035, 0.03, 0.08)]
    for j, p in enumerate(at):
        row = jreg[j]
        chosen = np.flatnonzero(row)
        assert len(chosen) == 4 and (row[chosen] == 0.25).all(), j
        d = np.linalg.norm(v - np.asarray(p), axis=1)
        others = np.setdiff1d(np.arange(178), chosen)
        assert d[chosen].max() <= d[others].min() + 1e-12, j
    J = jreg @ v
    assert J[3, 0] > 0 > J[4, 0] and abs(J[3, 0] + J[4, 0]) < 1e-12       # eyes mirror each other


def test_synthetic_random_directions_come_from_the_seed(tmp_path):
    a = F.make_synthetic_flame(tmp_path / "a")
    b = F.make_synthetic_flame(tmp_path / "b", seed=0)
    c = F.make_synthetic_flame(tmp_path / "c", seed=1)
    ra, rb, rc = (F.safe_load_pickle(p / F.MODEL_FILE) for p in (a, b, c))
    sa = F._as_array(ra["shapedirs"])
    np.testing.assert_array_equal(sa, F._as_array(rb["shapedirs"]))         # the default seed is 0
    np.testing.assert_array_equal(ra["posedirs"], rb["posedirs"])
    assert not np.allclose(sa, F._as_array(rc["shapedirs"]))
    # identity and pose directions: N(0, 1e-3) and N(0, 1e-4) draws of seed 0, in that order;
    # expression directions are the next draws scaled by 0.5 + 4 * (a Gaussian bump at the mouth, front only)
    v = ra["v_template"]
    rng = np.random.default_rng(0)
    draws = rng.normal(0, 1e-3, (178, 3, 400))
    posedirs = rng.normal(0, 1e-4, (178, 3, 36))
    np.testing.assert_array_equal(sa[..., :300], draws[..., :300])
    np.testing.assert_array_equal(ra["posedirs"], posedirs)
    bump = np.exp(-((v[:, 1] + 0.045) ** 2 + v[:, 0] ** 2) / 0.002) * (v[:, 2] > 0.02)
    np.testing.assert_allclose(sa[..., 300:], draws[..., 300:] * (0.5 + 4 * bump)[:, None, None], rtol=1e-12)
    assert bump.max() > 0.9 and (bump[v[:, 2] <= 0.02] == 0).all()


def test_synthetic_model_in_a_new_nested_folder_leaves_sys_modules_alone(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "chumpy", raising=False)
    mine = types.ModuleType("chumpy.ch")
    monkeypatch.setitem(sys.modules, "chumpy.ch", mine)
    out = F.make_synthetic_flame(tmp_path / "x" / "y")
    assert out == tmp_path / "x" / "y" and (out / F.MODEL_FILE).is_file() and (out / F.MASKS_FILE).is_file()
    assert "chumpy" not in sys.modules and sys.modules["chumpy.ch"] is mine
    F.make_synthetic_flame(out)                          # the folder exists already: written again
    assert F.FlameModel.load(out).n_vertices == 178
