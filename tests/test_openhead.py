"""The open head (chorushead.core.openhead): FLAME's interface on MediaPipe's face mesh, and the rule
that picks a head for eval, infer and export (pachorus.vertices.resolve_head)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chorushead.core import openhead as oh
from chorushead.core.flame import FlameModel, make_synthetic_flame
from chorushead.core.windows import EXP, JAW, POSE
from pachorus.vertices import describe_head, load_head, resolve_head

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def head() -> FlameModel:
    return oh.open_head()


def coeffs(**groups) -> np.ndarray:
    c = np.zeros(56, np.float32)
    for name, value in groups.items():
        c[{"exp": EXP, "jaw": JAW, "pose": POSE}[name]] = value
    return c


def test_mesh_masks_and_units(head):
    assert head.n_vertices == 468 and head.faces.shape == (852, 3) and head.n_shape == 0
    v = head.v_template.numpy()
    iod = np.linalg.norm(v[oh.LEFT_EYE] - v[oh.RIGHT_EYE])
    assert iod == pytest.approx(oh.IOD_M, rel=1e-5)                     # metres: metrics come out in mm
    tri = v[head.faces]
    nz = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2]
    assert (nz > 0).mean() > 0.99                                       # wound towards the camera (+z)
    assert len(head.masks["lips"]) == 40 and len(head.masks["face"]) == 468
    assert set(head.masks["lips"]) >= {oh.UPPER_LIP, oh.LOWER_LIP, oh.LEFT_CORNER, oh.RIGHT_CORNER}
    up = head.upper_face()
    assert len(up) > 40 and v[up, 1].min() > v[oh.NOSE_BASE, 1]            # FDD's region: above the nose
    # the mouth is an opening: its inner-lip points sit on a boundary loop of the surface
    edges = {}
    for f in head.faces:
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            edges[tuple(sorted((a, b)))] = edges.get(tuple(sorted((a, b))), 0) + 1
    boundary = {x for e, k in edges.items() if k == 1 for x in e}
    assert {oh.UPPER_LIP, oh.LOWER_LIP} <= boundary and max(edges.values()) == 2


def test_zero_coefficients_give_the_template_and_pose_is_rigid(head):
    v0 = head.vertices_np(coeffs()[None])[0]
    np.testing.assert_allclose(v0, head.v_template.numpy(), atol=1e-7)
    v = head.vertices_np(coeffs(pose=(0.1, -0.3, 0.2))[None])[0]
    d0, d = v0 - v0.mean(0), v - v.mean(0)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), np.linalg.norm(d0, axis=1), atol=1e-6)  # rigid
    np.testing.assert_allclose(head.vertices_np(coeffs(pose=(0.1, -0.3, 0.2))[None], zero_pose=True)[0], v0, atol=1e-7)


@pytest.mark.parametrize("angle", [0.05, 0.2, 0.4])
def test_jaw_turns_the_lower_lip_about_the_pivot(head, angle):
    v0 = head.vertices_np(coeffs()[None])[0]
    v = head.vertices_np(coeffs(jaw=(angle, 0, 0))[None])[0]
    moved = np.linalg.norm(v[oh.LOWER_LIP] - v0[oh.LOWER_LIP])
    assert moved == pytest.approx(2 * oh.JAW_RADIUS * oh.IOD_M * np.sin(angle / 2), rel=1e-4)   # the chord
    assert v[oh.LOWER_LIP, 1] < v0[oh.LOWER_LIP, 1]                      # positive opens: the lip goes down
    np.testing.assert_allclose(v[oh.UPPER_LIP], v0[oh.UPPER_LIP], atol=1e-7)                  # upper lip stays
    np.testing.assert_allclose(v[list(oh.ANCHORS)], v0[list(oh.ANCHORS)], atol=1e-7)
    c = oh.load_canonical()
    undone = oh.unpose_jaw(v[None] / oh.IOD_M - 0, np.array([angle]), c)[0]
    np.testing.assert_allclose(undone, v0 / oh.IOD_M, atol=1e-5)


def test_expression_basis(head):
    c = oh.load_canonical()
    b = oh.expression_basis(c).reshape(-1, oh.N_EXP)
    np.testing.assert_allclose(b.T @ b, oh.EXP_SCALE ** 2 * np.eye(oh.N_EXP), atol=1e-9)        # orthogonal
    assert len(oh.EXP_NAMES) == oh.N_EXP == len(set(oh.EXP_NAMES))
    v0 = head.vertices_np(coeffs()[None])[0]
    k = oh.EXP_NAMES.index("smile")
    e = np.zeros(50, np.float32)
    e[k] = 1.0
    v = head.vertices_np(coeffs(exp=e)[None])[0]
    d = v - v0
    np.testing.assert_allclose(d[list(oh.ANCHORS)], 0, atol=1e-7)       # joints never move with expression
    left, right = d[oh.LEFT_CORNER], d[oh.RIGHT_CORNER]
    assert left[0] > 0 > right[0] and left[1] > 0 and right[1] > 0      # corners out and up: a smile
    assert np.linalg.norm(d, axis=1).max() * 1000 == pytest.approx(4.1, abs=0.5)   # a few mm per unit
    brow = oh.EXP_NAMES.index("brow_raise")
    e[:] = 0
    e[brow] = 1.0
    d = head.vertices_np(coeffs(exp=e)[None])[0] - v0
    assert d[head.masks["eye_region"], 1].mean() > 0 and np.abs(d[head.masks["lips"]]).max() < 1e-4


def test_heads_by_name_and_the_auto_rule(tmp_path):
    assert load_head("open").n_vertices == 468 and load_head(None) is None
    toy = make_synthetic_flame(tmp_path / "toy")
    assert load_head(toy).n_vertices == FlameModel.load(toy).n_vertices
    assert resolve_head(None, "auto", "landmarks") == "open"
    assert resolve_head(None, "auto", "synthetic") == "open"
    assert resolve_head(None, "auto", "emoca") is None                 # FLAME's expression: not the open head's
    assert resolve_head(None, "open", "emoca") == "open"
    assert resolve_head(toy, "auto", "landmarks") == str(toy) and resolve_head(toy, "none", "landmarks") is None
    assert resolve_head(None, "auto", "landmarks", shapes=True) is None
    with pytest.raises(ValueError, match="identity"):
        resolve_head(None, "open", "landmarks", shapes=True)
    with pytest.raises(ValueError, match="--flame DIR"):
        resolve_head(None, "flame", "emoca")
    with pytest.raises(ValueError, match="use one of"):
        resolve_head(None, "mesh", "emoca")
    assert "open head" in describe_head("open") and "FLAME" in describe_head(toy)


def _connections() -> Path | None:
    spec = importlib.util.find_spec("mediapipe")
    if spec is not None:
        return Path(list(spec.submodule_search_locations)[0]) / "python/solutions/face_mesh_connections.py"
    from chorushead.backends.landmarks import find_landmark_python
    from chorushead.core.assets import venv_site_packages
    exe = find_landmark_python()
    for d in venv_site_packages(exe) if exe else []:
        f = d / "mediapipe/python/solutions/face_mesh_connections.py"
        if f.is_file():
            return f
    return None


def test_shipped_topology_is_what_the_script_derives(tmp_path):
    """How chorushead/data/open_head_topology.npz was made (from MediaPipe's own edge lists)."""
    conn = _connections()
    if conn is None:
        pytest.skip("no mediapipe here or in the landmark venv (scripts/setup_landmarks_env.sh)")
    import shutil
    copy = tmp_path / "repo"
    (copy / "chorushead/data").mkdir(parents=True)
    (copy / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/make_open_head_topology.py", copy / "scripts")
    shutil.copy(oh.CANONICAL, copy / "chorushead/data")
    subprocess.run([sys.executable, str(copy / "scripts/make_open_head_topology.py"), str(conn)], check=True,
                   capture_output=True)
    made, shipped = np.load(copy / "chorushead/data/open_head_topology.npz"), np.load(oh.TOPOLOGY)
    assert sorted(made.files) == sorted(shipped.files)
    for k in shipped.files:
        np.testing.assert_array_equal(made[k], shipped[k])


def test_flame_dir_from_the_environment(tmp_path, monkeypatch):
    toy = make_synthetic_flame(tmp_path / "toy")
    monkeypatch.setenv("FLAME_DIR", str(toy))
    assert resolve_head(None, "auto", "emoca") == str(toy)              # as --flame DIR
    assert resolve_head(None, "flame", "emoca") == str(toy)
    assert resolve_head(None, "open", "emoca") == "open" and resolve_head(None, "none", "emoca") is None
    assert resolve_head(tmp_path / "other", "auto", "emoca") == str(tmp_path / "other")   # the option wins
    monkeypatch.setenv("FLAME_DIR", "")
    assert resolve_head(None, "auto", "emoca") is None
