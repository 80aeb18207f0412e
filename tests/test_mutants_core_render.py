"""The software mesh renderer (chorushead.core.render): camera fit and projection, shading, culling,
painter's order and sub-pixel drawing, written to kill the mutants that survived
``scripts/mutation.sh core_render`` (see docs/mutation-survivors.md). Numbers are worked out by hand:
LIGHT is (0.3, 0.4, 1) / sqrt(1.25), and a face of unit normal n is filled with grey
int(60 + 180 * clip(n . LIGHT, 0, 1))."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from chorushead.core.render import LIGHT, Camera, draw_mesh

BG = 24
FRONT = 220    # n = (0, 0, 1): n . LIGHT = 1 / sqrt(1.25) = 0.8944, 60 + 161.0 -> 220
LIT = 240      # n = LIGHT: shade 1 -> 60 + 180
DARK = 60      # n . LIGHT < 0: shade clipped to 0


def test_light_is_a_unit_vector_towards_the_viewer():
    np.testing.assert_allclose(LIGHT, np.array([0.3, 0.4, 1.0]) / np.sqrt(1.25))


def test_camera_fit_centres_the_box_and_fills_the_size_inside_the_margin():
    v = np.array([[0, 0, 5], [2, 0, -5], [0, 4, 0]], float)   # x span 2, y span 4: the larger one counts
    c = Camera.fit(v, 100)
    np.testing.assert_allclose(c.center, [1.0, 2.0])
    assert c.scale == pytest.approx(100 * 0.7 / 4)               # default margin 0.15 on each side
    assert c.size == 100
    c = Camera.fit(v, 200, margin=0.25)
    assert c.scale == pytest.approx(200 * 0.5 / 4) and c.size == 200
    # the x span can be the larger one too
    c = Camera.fit(np.array([[-3, 1, 0], [3, 2, 0]], float), 60, margin=0.0)
    np.testing.assert_allclose(c.center, [0.0, 1.5])
    assert c.scale == pytest.approx(60 / 6)


def test_camera_fit_of_a_single_point_uses_a_unit_span():
    c = Camera.fit(np.array([[3.0, -2.0, 1.0]]), 50, margin=0.1)
    np.testing.assert_allclose(c.center, [3.0, -2.0])
    assert c.scale == pytest.approx(50 * 0.8 / 1.0)


def test_project_puts_the_centre_mid_image_and_model_y_up():
    c = Camera(center=np.array([1.0, 2.0]), scale=10.0, size=101)   # odd size: the middle is 50.5
    px = c.project(np.array([[1, 2, 7], [2, 2, 0], [1, 3, 0], [0, 0, 0]], float))
    np.testing.assert_allclose(px, [[50.5, 50.5], [60.5, 50.5], [50.5, 40.5], [40.5, 70.5]])
    assert px.shape == (4, 2)


def tri(normal_z_positive=True):
    """A large triangle in the plane z = 0 around the origin, facing +z (or -z when reversed)."""
    v = np.array([[-1, -1, 0], [1, -1, 0], [0, 1, 0]], float)
    f = np.array([[0, 1, 2]] if normal_z_positive else [[0, 2, 1]])
    return v, f


CAM = Camera(center=np.zeros(2), scale=40.0, size=101)


def test_a_front_facing_triangle_is_filled_with_its_shade_on_the_background():
    v, f = tri()
    img = draw_mesh(v, f, CAM)
    assert img.shape == (101, 101, 3) and img.dtype == np.uint8
    assert (img[50, 50] == FRONT).all()
    assert (img[0, 0] == BG).all() and (img[100, 100] == BG).all()
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()   # grey
    # the filled area: the triangle spans x in [10.5, 90.5] at its base (y = 90.5) and tips at y = 10.5
    rows = np.flatnonzero((img[..., 0] == FRONT).any(axis=1))
    cols = np.flatnonzero((img[..., 0] == FRONT).any(axis=0))
    assert 10 <= rows.min() <= 13 and 89 <= rows.max() <= 91
    assert 10 <= cols.min() <= 13 and 88 <= cols.max() <= 91
    # anti-aliased edges: some pixels lie strictly between the background and the fill
    vals = set(np.unique(img[..., 0]).tolist())
    assert any(BG < x < FRONT for x in vals)


def test_the_sub_pixel_corner_is_placed_to_a_quarter_pixel():
    """A corner at x = 50.25 (not a whole pixel) shifts the fill by a quarter pixel: the drawn
    coverage of the left edge column differs from the one at x = 50."""
    cam = Camera(center=np.zeros(2), scale=1.0, size=101)
    sq = lambda x0: (np.array([[x0, -20, 0], [x0 + 30, -20, 0], [x0 + 30, 20, 0], [x0, 20, 0]], float),
                     np.array([[0, 1, 2], [0, 2, 3]]))
    a = draw_mesh(*sq(0.0), cam)[..., 0].astype(int)
    b = draw_mesh(*sq(0.25), cam)[..., 0].astype(int)
    # both squares cover the same whole columns in their middle ...
    assert a[50, 60] == b[50, 60] == FRONT
    # ... but the moved one covers less of its left border column and more of its right one
    assert b[50, 50] < a[50, 50] and b[50, 81] > a[50, 81]


def test_a_back_facing_triangle_is_not_drawn():
    v, f = tri(normal_z_positive=False)
    assert (draw_mesh(v, f, CAM) == BG).all()


def test_an_edge_on_triangle_is_culled():
    v = np.array([[-1, 0, -1], [1, 0, -1], [0, 0, 1]], float)        # in the plane y = 0: normal z = 0
    for f in ([0, 1, 2], [0, 2, 1]):
        assert (draw_mesh(v, np.array([f]), CAM) == BG).all()


def test_a_degenerate_face_is_skipped_without_a_division_warning():
    v = np.array([[-1, -1, 0], [1, -1, 0], [0, 1, 0], [0.5, 0.5, 0.0]], float)
    faces = np.array([[3, 3, 3], [0, 1, 2]])                        # a zero-area face, then a real one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = draw_mesh(v, faces, CAM)
    assert (img[50, 50] == FRONT).all()


def shaded(normal):
    """The grey a large face with this (unnormalised, z > 0) normal is filled with."""
    n = np.asarray(normal, float)
    n = n / np.linalg.norm(n)
    # two in-plane vectors a, b with a x b = n
    a = np.cross(n, [0, 1, 0] if abs(n[1]) < 0.9 else [1, 0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    v = np.stack([-a - b, a - b, b + 0 * a]) * 1.0
    if np.cross(v[1] - v[0], v[2] - v[0]) @ n < 0:
        v = v[[0, 2, 1]]
    # scaled up, not normalised: the renderer must normalise the normal itself
    img = draw_mesh(v * 3.0, np.array([[0, 1, 2]]), Camera(center=np.zeros(2), scale=12.0, size=101))
    return int(img[50, 50, 0])


def test_the_shade_follows_the_light_and_is_clipped_at_zero():
    assert shaded([0, 0, 1]) == FRONT
    assert shaded(LIGHT) in (LIT - 1, LIT)            # facing the light: full shade (1 - 1e-16 rounds down)
    assert shaded([-0.3, -0.4, 0.05]) == DARK         # facing the viewer, lit from behind: n . L < 0 -> 0
    assert shaded([1, 0, 1]) == int(60 + 180 * (1.3 / np.sqrt(2) / np.sqrt(1.25)))   # 0.822 -> 207
    assert shaded([0, 1, 1]) == int(60 + 180 * (1.4 / np.sqrt(2) / np.sqrt(1.25)))   # 0.885 -> 219


def test_faces_are_painted_far_to_near():
    """Two overlapping faces: the nearer (larger z) one is seen where they overlap, whichever comes
    first in the face list; a back-facing face before them in depth order does not stop the painting."""
    v = np.array([[-1, -1, 0], [1, -1, 0], [0, 1, 0],            # z = 0, normal +z: FRONT
                  [-1, -1, 1], [1, -1, 1.5], [0, 1, 0.5],         # tilted, nearer (mean z 1.0)
                  [-1, -1, -2], [0, 1, -2], [1, -1, -2]], float)  # back-facing, farthest
    near = np.cross(v[4] - v[3], v[5] - v[3])
    near_grey = int(60 + 180 * np.clip(near / np.linalg.norm(near) @ LIGHT, 0, 1))
    assert near_grey != FRONT
    for faces in ([[0, 1, 2], [3, 4, 5], [6, 7, 8]], [[3, 4, 5], [0, 1, 2], [6, 7, 8]],
                  [[6, 7, 8], [3, 4, 5], [0, 1, 2]]):
        img = draw_mesh(v, np.array(faces), CAM)
        assert img[50, 50, 0] == near_grey, faces
    # the depth is the mean z of the three corners: a face with one corner far in front of the other's
    # plane but a smaller mean stays behind
    w = v.copy()
    w[3:6, 2] = [-0.5, -0.5, 0.8]                                 # mean -0.067 < 0: behind the z = 0 face
    img = draw_mesh(w, np.array([[3, 4, 5], [0, 1, 2]]), CAM)
    assert img[50, 50, 0] == FRONT
    img = draw_mesh(w, np.array([[0, 1, 2], [3, 4, 5]]), CAM)
    assert img[50, 50, 0] == FRONT


def test_a_small_face_is_shaded_like_a_large_one():
    """The normal is normalised whatever the face's area: a face whose cross product is shorter than 1
    (here 0.25) is as bright as a large one."""
    v, f = tri()
    img = draw_mesh(v * 0.25, f, Camera(center=np.zeros(2), scale=160.0, size=101))
    assert (img[50, 50] == FRONT).all()
