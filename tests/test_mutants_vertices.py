"""Tests that kill the mutants of pachorus/vertices.py that survived the existing tests
(docs/mutation-survivors.md): every branch of resolve_head with its messages, describe_head's lines in
full, and head_vertices checked against the linear part of the model written out
(template + identity directions · code + expression directions · exp), which is the whole model when the
jaw and global rotations are zero."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from chorushead.core import openhead
from chorushead.core.flame import FlameModel, make_synthetic_flame
from pachorus import vertices as V


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_synthetic_flame(tmp_path_factory.mktemp("toy") / "flame")


@pytest.fixture(scope="module")
def flame(toy) -> FlameModel:
    return FlameModel.load(toy)


def _msg(text: str) -> str:
    return "^" + re.escape(text) + "$"


def test_resolve_head_every_name_and_its_answer(toy):
    assert V.HEADS == ("auto", "flame", "open", "none") and V.openhead.FIT_BACKENDS == ("landmarks", "synthetic")
    for fit in ("landmarks", "synthetic", "emoca", None):
        assert V.resolve_head(toy, "auto", fit) == str(toy)            # a FLAME folder wins under auto
        assert V.resolve_head(toy, "flame", fit) == str(toy)
        assert V.resolve_head(toy, "open", fit) == "open"               # open asked for: open, FLAME or not
        assert V.resolve_head(None, "open", fit) == "open"
        assert V.resolve_head(toy, "none", fit) is None
        assert V.resolve_head(None, "none", fit) is None
    assert V.resolve_head(str(toy), "auto", "emoca", shapes=True) == str(toy)
    assert V.resolve_head(toy, "flame", "emoca", shapes=True) == str(toy)
    assert V.resolve_head(toy, "none", "landmarks", shapes=True) is None


def test_resolve_head_auto_without_flame():
    assert V.resolve_head(None, "auto", "landmarks") == "open"
    assert V.resolve_head(None, "auto", "synthetic") == "open"
    assert V.resolve_head(None, "auto", "emoca") is None
    assert V.resolve_head(None, "auto", None) is None
    assert V.resolve_head(None, "auto", "synthetic", shapes=True) is None
    assert V.resolve_head(None, "auto", "landmarks", False) == "open"
    # the defaults: head "auto", no fit backend, no shape codes
    assert V.resolve_head(None) is None
    assert V.resolve_head(None, fit_backend="landmarks") == "open"
    assert V.resolve_head("") is None and V.resolve_head("", "auto", "landmarks") == "open"


def test_resolve_head_refusals_with_their_messages(toy):
    with pytest.raises(ValueError, match=_msg("--head 'mesh': use one of auto, flame, open, none")):
        V.resolve_head(toy, "mesh", "landmarks")
    with pytest.raises(ValueError, match=_msg(
            "--head flame needs --flame DIR (FLAME 2020: https://flame.is.tue.mpg.de, registration)")):
        V.resolve_head(None, "flame", "landmarks")
    with pytest.raises(ValueError, match=_msg(
            "--head flame needs --flame DIR (FLAME 2020: https://flame.is.tue.mpg.de, registration)")):
        V.resolve_head("", "flame")
    shapes_msg = ("the singers have FLAME identity codes (--shape/--shapes-from) and the open head has no "
                  "identity directions: pass --flame DIR, or drop the shape codes")
    with pytest.raises(ValueError, match=_msg(shapes_msg)):
        V.resolve_head(None, "open", "landmarks", shapes=True)
    with pytest.raises(ValueError, match=_msg(shapes_msg)):
        V.resolve_head(toy, "open", "emoca", True)


def test_load_head_and_describe_head(toy, flame):
    assert V.load_head(None) is None and V.load_head("") is None
    assert V.load_head("open").n_vertices == 468 == V.load_head(Path("open")).n_vertices
    assert V.load_head(toy).n_vertices == flame.n_vertices != 468
    assert V.describe_head(None) == V.describe_head("") == "no head (coefficients only)"
    assert V.describe_head("open") == V.describe_head(Path("open")) == (
        "the open head (chorushead.core.openhead: MediaPipe's face mesh, 468 vertices, "
        "eye corners 90 mm apart; mm of an average face, not FLAME's)")
    assert V.describe_head("/x/flame2020") == "FLAME 2020 (/x/flame2020)"
    assert openhead.IOD_M == 0.09


def _linear(flame, coeffs, betas):
    """template + identity · betas + expression · exp: the model when jaw and global pose are zero."""
    sd = flame.shapedirs.numpy().astype(np.float64)
    n = sd.shape[-1]
    exp_dirs = sd[..., n - 100:n - 100 + 50]
    full = np.zeros(flame.n_shape)
    full[:len(betas)] = betas
    base = flame.v_template.numpy() + np.einsum("vcs,s->vc", sd[..., :flame.n_shape], full)
    return base[None] + np.einsum("vce,te->tvc", exp_dirs, coeffs[:, :50])


def test_head_vertices_with_a_short_code_in_chunks(flame):
    """5 frames in chunks of 2 (2 + 2 + 1), as a (1, 5, 56) batch; a (1, 10) code is padded with zeros;
    the global rotation is dropped by zero_pose, so the result is the linear model exactly."""
    rng = np.random.default_rng(1)
    c = np.zeros((5, 56))
    c[:, :50] = rng.normal(0, 1, (5, 50))
    c[:, 53:] = rng.normal(0, 0.3, (5, 3))                  # global rotation: removed by zero_pose
    code = rng.normal(0, 1, (1, 10))
    v = V.head_vertices(flame, c[None], code, zero_pose=True, chunk=2)
    assert v.shape == (1, 5, flame.n_vertices, 3)
    np.testing.assert_allclose(v[0], _linear(flame, c, code[0]), atol=1e-6)
    posed = V.head_vertices(flame, c[None], code, chunk=2)
    assert np.abs(posed[0] - _linear(flame, c, code[0])).max() > 1e-3   # without zero_pose the head turns


def test_head_vertices_code_of_exactly_n_shape_and_one_too_many(flame):
    assert flame.n_shape == 300
    code = np.full(300, 0.5)
    c = np.zeros((1, 56), np.float32)
    np.testing.assert_allclose(V.head_vertices(flame, c, code), _linear(flame, c, code), atol=1e-6)
    with pytest.raises(ValueError, match=_msg("a shape code of 301 values, but this FLAME has 300 shape directions")):
        V.head_vertices(flame, c, np.zeros(301))


def test_head_vertices_without_a_code_is_the_mean_head(flame):
    rng = np.random.default_rng(2)
    c = np.zeros((3, 56))
    c[:, :50] = rng.normal(0, 1, (3, 50))
    c[:, 53:] = 0.4
    np.testing.assert_allclose(V.head_vertices(flame, c, zero_pose=True, chunk=2), _linear(flame, c, []), atol=1e-6)
    assert np.abs(V.head_vertices(flame, c, chunk=2) - _linear(flame, c, [])).max() > 1e-3


def test_head_vertices_honours_the_chunk_size(flame, monkeypatch):
    """Frames go to the model in chunks of ``chunk`` (memory stays bounded): 5 frames in chunks of 2 are
    2 + 2 + 1 with or without a code; 513 frames at the default 512 are 512 + 1."""
    sizes = []
    real = flame.vertices

    def spy(c, *a, **k):
        sizes.append(len(c))
        return real(c, *a, **k)

    monkeypatch.setattr(flame, "vertices", spy)
    V.head_vertices(flame, np.zeros((5, 56), np.float32), chunk=2)
    V.head_vertices(flame, np.zeros((5, 56), np.float32), np.zeros(3), chunk=2)
    assert sizes == [2, 2, 1, 2, 2, 1]
    sizes.clear()
    V.head_vertices(flame, np.zeros((513, 56), np.float32))
    V.head_vertices(flame, np.zeros((513, 56), np.float32), np.zeros(3))
    assert sizes == [512, 1, 512, 1]
