"""The open head: FLAME's interface on MediaPipe's face mesh, so metrics, renders and exports need no licensed asset.

:func:`open_head` returns a :class:`~chorushead.core.flame.FlameModel` (the same class, the same
``[exp(50), jaw(3), pose(3)]`` coefficients, the same ``vertices``/``masks``/``upper_face``), built from
two files that ship with the package:

- **Vertices**: the 468 face-mesh points of our canonical face (``data/face_mesh_canonical.npy``: the
  mean of MediaPipe's 3D landmarks on two frontal photos, made left-right symmetric; unit = the
  outer-eye-corner distance, IOD) times ``IOD_M`` = 0.09 m, so vertex metrics are in millimetres of
  an average adult face. Axes as FLAME's: x = subject's left, y up, z towards the camera.
- **Triangles**: the 852 faces of MediaPipe's tessellation (``data/open_head_topology.npz``, derived
  by ``scripts/make_open_head_topology.py`` from MediaPipe's Apache-2.0 edge lists) with its region
  sets; the mouth and eyes are openings, so an open mouth shows as a hole.
- **Jaw**: FLAME's joint order (global, neck, jaw, eyes). The jaw pivot is on the midline,
  ``JAW_RADIUS`` IOD from the inner lower lip (landmark 14), ``JAW_ELEVATION`` (27°) above the
  horizontal behind the lips, near where the jaw joint is; the landmark fit's jaw angle
  (``2·asin(gap / 2r)``) is the angle this pivot turns the lower lip by, so fit and head agree.
  Skinning: weight 1 on the lower lip, chin and jawline, 0 on the upper lip and above, a short blend
  between (see :func:`jaw_weights`). The head and neck joints sit at a head centre behind the face.
- **Expression**: 50 directions (:data:`EXP_NAMES`), orthonormal in vertex space and scaled so
  one unit moves the face by ``EXP_SCALE`` IOD in total (a few millimetres per vertex where it acts).
  The first :data:`N_NAMED` are designed actions (smile, lip rounding, brow raise, blinks, ...) kept in
  that order by Gram-Schmidt, so coefficient k means the same action in every dataset and checkpoint;
  the rest are smooth local fields over the mobile face that complete the span. A basis shipped with
  the package, rather than a PCA of each build's tracks: a PCA would give coefficients that mean
  something else in every dataset (and on the demo, whose faces only open their mouths, would be
  mostly noise), so checkpoints, synthetic rules and exports could not be compared across builds.
  Joint anchors (eye corners, nose bridge) never move with expression, so the joints stay put.

No identity directions (``n_shape`` = 0): the open head is one face; expression is measured
relative to each singer's own neutral (see chorushead.backends.landmarks).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import StageError

if TYPE_CHECKING:   # torch is imported only where a head is built
    from .flame import FlameModel

DATA = Path(__file__).resolve().parents[1] / "data"
CANONICAL = DATA / "face_mesh_canonical.npy"
TOPOLOGY = DATA / "open_head_topology.npz"
NAME = "open"                    # what --head / --flame take to mean this head
# fits whose coefficients this head means: the landmark fit (its expression basis) and pachorus synth's
FIT_BACKENDS = ("landmarks", "synthetic")

N_VERTS = 468                    # the mesh points (MediaPipe's 10 iris points are left out)
IOD_M = 0.09                     # metres per canonical unit (outer-eye-corner distance of an adult)
UPPER_LIP, LOWER_LIP = 13, 14    # inner-lip midpoints
RIGHT_EYE, LEFT_EYE = 33, 263    # outer eye corners (subject's right / left)
NOSE_BASE = 2                    # subnasale
RIGHT_CORNER, LEFT_CORNER = 61, 291   # mouth corners
ANCHORS = (33, 263, 168, 6)      # eye corners and nose bridge: the joints are regressed from them
JAW_RADIUS = 1.0                 # pivot -> inner lower lip, in IOD
JAW_ELEVATION = np.deg2rad(27.0)
EXP_SCALE = 0.25                 # IOD of total displacement per unit of an expression coefficient
N_EXP = 50

EXP_NAMES = ("smile", "smile_asym", "lip_round", "mouth_frown", "upper_lip_raise", "lower_lip_depress",
             "lip_stretch", "lip_press", "brow_raise", "brow_furrow", "brow_asym", "blink_right",
             "blink_left", "cheek_puff", "nose_wrinkle", "chin_raise")
N_NAMED = len(EXP_NAMES)
EXP_NAMES = EXP_NAMES + tuple(f"local_{k:02d}" for k in range(N_EXP - N_NAMED))


def load_canonical(path: Path = CANONICAL) -> np.ndarray:
    """(478, 3) canonical face in IOD units, FLAME axes."""
    from .errors import MissingAsset, StageError
    if not path.exists():
        raise MissingAsset("canonical face of the open head", [str(path)],
                           "it ships with chorushead (chorushead/data); reinstall the package or restore the file")
    c = np.load(path)
    if c.shape != (N_VERTS + 10, 3):
        raise StageError(f"{path} holds {c.shape}, expected ({N_VERTS + 10}, 3); restore it from the repository")
    return c.astype(np.float64)


def load_topology(path: Path = TOPOLOGY) -> dict[str, np.ndarray]:
    from .errors import MissingAsset
    if not path.exists():
        raise MissingAsset("open head topology", [str(path)],
                           "it ships with chorushead (chorushead/data); restore it or run "
                           "scripts/make_open_head_topology.py")
    with np.load(path) as z:
        return {k: z[k].astype(np.int64) for k in z.files}


def jaw_pivot(c: np.ndarray) -> np.ndarray:
    """Midline point JAW_RADIUS behind and JAW_ELEVATION above the inner lower lip."""
    return c[LOWER_LIP] + JAW_RADIUS * np.array([0.0, np.sin(JAW_ELEVATION), -np.cos(JAW_ELEVATION)])


def head_centre(c: np.ndarray) -> np.ndarray:
    """Where the global and neck joints are: midline, nose-base height, 1.1 IOD behind the eye corners."""
    return np.array([0.0, c[NOSE_BASE, 1], c[RIGHT_EYE, 2] - 1.1])


def jaw_weights(c: np.ndarray) -> np.ndarray:
    """(468,) skinning weight of the jaw: 0/1 either side of a curve between the lips (through the
    inner-lip midpoint and the mouth corners, level beyond them), blended over 0.04 IOD at the mouth
    and more gradually towards the cheeks."""
    x, y = c[:N_VERTS, 0], c[:N_VERTS, 1]
    corner_x = abs(c[LEFT_CORNER, 0])
    corner_y = (c[LEFT_CORNER, 1] + c[RIGHT_CORNER, 1]) / 2
    mid_y = (c[UPPER_LIP, 1] + c[LOWER_LIP, 1]) / 2
    u = np.minimum(np.abs(x) / corner_x, 1.0)
    line = mid_y + (corner_y - mid_y) * u ** 2
    width = 0.04 + 0.3 * np.maximum(np.abs(x) - corner_x, 0.0)
    return np.clip(0.5 + (line - y) / width, 0.0, 1.0)


def _affine_weights(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Weights w (sum 1) with w @ points = target: joints as fixed combinations of anchor vertices."""
    a = np.vstack([points.T, np.ones(len(points))])
    return np.linalg.solve(a, np.append(target, 1.0))


def _bump(c: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-((c - centre) ** 2).sum(1) / (2 * sigma ** 2))


def _designed_fields(c: np.ndarray, topo: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The named actions, in EXP_NAMES order, as (468, 3) displacement fields (IOD)."""
    v = c[:N_VERTS]
    L, R = v[LEFT_CORNER], v[RIGHT_CORNER]

    def at(centre, d, sigma):
        return _bump(v, centre, sigma)[:, None] * np.asarray(d, float)[None]

    mouth = (L + R) / 2
    brows = {s: v[topo[f"{s}_brow"]].mean(0) for s in ("left", "right")}
    brow_inner = {s: v[topo[f"{s}_brow"]][np.argmin(np.abs(v[topo[f"{s}_brow"], 0]))] for s in ("left", "right")}
    lids = {"right": v[159], "left": v[386]}
    cheeks = {s: np.array([0.45 * sg, mouth[1] + 0.1, v[LEFT_CORNER, 2] - 0.05]) for s, sg in (("left", 1), ("right", -1))}
    smile_l, smile_r = at(L, (0.08, 0.06, -0.02), 0.12), at(R, (-0.08, 0.06, -0.02), 0.12)
    brow_l, brow_r = at(brows["left"], (0, 0.06, 0), 0.15), at(brows["right"], (0, 0.06, 0), 0.15)
    round_w = _bump(v, mouth, 0.22)[:, None]
    return [
        smile_l + smile_r,                                                           # smile
        smile_l - smile_r,                                                           # smile_asym
        round_w * np.stack([-0.3 * (v[:, 0] - mouth[0]), np.zeros(len(v)), np.full(len(v), 0.05)], 1),
        at(L, (0, -0.06, 0), 0.12) + at(R, (0, -0.06, 0), 0.12),                     # mouth_frown
        at(v[0], (0, 0.05, 0.01), 0.12),                                             # upper_lip_raise
        at(v[17], (0, -0.05, 0.01), 0.12),                                           # lower_lip_depress
        at(L, (0.08, 0, 0), 0.1) + at(R, (-0.08, 0, 0), 0.1),                        # lip_stretch
        at(v[UPPER_LIP], (0, -0.03, 0), 0.06) + at(v[LOWER_LIP], (0, 0.03, 0), 0.06),  # lip_press
        brow_l + brow_r,                                                             # brow_raise
        at(brow_inner["left"], (-0.04, -0.03, 0), 0.1) + at(brow_inner["right"], (0.04, -0.03, 0), 0.1),
        brow_l - brow_r,                                                             # brow_asym
        at(lids["right"], (0, -0.07, 0), 0.05),                                      # blink_right
        at(lids["left"], (0, -0.07, 0), 0.05),                                       # blink_left
        at(cheeks["left"], (0.05, 0, 0.03), 0.15) + at(cheeks["right"], (-0.05, 0, 0.03), 0.15),
        (at(v[358], (0, 0.03, 0), 0.08) + at(v[129], (0, 0.03, 0), 0.08)),           # nose_wrinkle
        at(v[17], (0, 0.04, 0.02), 0.1),                                             # chin_raise
    ]


def _local_fields(c: np.ndarray, count: int) -> list[np.ndarray]:
    """Smooth single-axis bumps at farthest-point centres over the mobile face (below the eyes, the
    brows), to complete the span with motion the designed actions miss."""
    v = c[:N_VERTS]
    mobile = np.flatnonzero((v[:, 1] < v[NOSE_BASE, 1] + 0.05) | (v[:, 1] > v[RIGHT_EYE, 1] + 0.12))
    centres = [mobile[np.argmin(np.abs(v[mobile, 0]) + np.abs(v[mobile, 1] - v[LOWER_LIP, 1]))]]
    dist = ((v[mobile] - v[centres[0]]) ** 2).sum(1)
    while len(centres) * 3 < count + 6:
        k = mobile[np.argmax(dist)]
        centres.append(k)
        dist = np.minimum(dist, ((v[mobile] - v[k]) ** 2).sum(1))
    fields = []
    for k in centres:
        w = _bump(v, v[k], 0.18)
        for axis in range(3):
            f = np.zeros((len(v), 3))
            f[:, axis] = w
            fields.append(f)
    return fields


def expression_basis(c: np.ndarray | None = None, topo: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """(468, 3, 50) expression directions in IOD per unit coefficient: Gram-Schmidt over the designed
    fields then the local ones (a field that adds < 1 % new norm is skipped), anchors held at zero,
    each direction of total norm EXP_SCALE."""
    c = load_canonical() if c is None else c
    topo = load_topology() if topo is None else topo
    cols: list[np.ndarray] = []
    for f in _designed_fields(c, topo) + _local_fields(c, 3 * N_EXP):
        f = f.copy()
        f[list(ANCHORS)] = 0.0
        x = f.reshape(-1)
        n0 = np.linalg.norm(x)
        for q in cols:                       # twice: numerically orthogonal
            x = x - (q @ x) * q
        for q in cols:
            x = x - (q @ x) * q
        if n0 == 0 or np.linalg.norm(x) < 0.01 * n0:
            continue
        cols.append(x / np.linalg.norm(x))
        if len(cols) == N_EXP:
            break
    if len(cols) < N_EXP:
        raise ValueError(f"the open head's expression basis has only {len(cols)} independent directions")
    return (EXP_SCALE * np.stack(cols, 1)).reshape(N_VERTS, 3, N_EXP)


def basis_identity() -> str:
    """A hash of the expression basis as built now (for the landmark fit's fingerprint: a changed
    basis, from code or data, redoes the fit), or "missing:<file>" when a shipped file is gone."""
    import hashlib
    try:
        b = expression_basis()
    except (OSError, ValueError, StageError) as e:   # the fit itself then fails with the clear error
        return f"missing: {e}"
    return "sha1:" + hashlib.sha1(np.ascontiguousarray(b, np.float64).round(12).tobytes()).hexdigest()[:16]


def regions(c: np.ndarray, topo: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The vertex sets metrics use, named as FLAME's masks: lips (MediaPipe's lip contours), face
    (every mesh point), forehead (above the brows), eye_region (eyes and brows), nose."""
    v = c[:N_VERTS]
    brows = np.union1d(topo["left_brow"], topo["right_brow"])
    eye_region = np.union1d(np.union1d(topo["left_eye"], topo["right_eye"]), brows)
    forehead = np.flatnonzero(v[:, 1] > v[brows, 1].max())
    return {"lips": topo["lips"], "face": np.arange(N_VERTS), "forehead": forehead, "eye_region": eye_region,
            "nose": topo["nose"], "left_eye": topo["left_eye"], "right_eye": topo["right_eye"],
            "boundary": topo["face_oval"]}


def open_head() -> "FlameModel":
    """The open head as a FlameModel (metres; see the module doc). torch is imported here, not with the
    module: the landmark fit and its fingerprint use the geometry alone."""
    import torch

    from .flame import FlameModel
    c = load_canonical()
    topo = load_topology()
    v = c[:N_VERTS]
    joints = np.stack([head_centre(c), head_centre(c), jaw_pivot(c), v[LEFT_EYE] * [1, 1, 0.5], v[RIGHT_EYE] * [1, 1, 0.5]])
    anchors = v[list(ANCHORS)]
    j_reg = np.zeros((5, N_VERTS))
    for j, p in enumerate(joints):
        j_reg[j, list(ANCHORS)] = _affine_weights(anchors, p)
    w_jaw = jaw_weights(c)
    weights = np.zeros((N_VERTS, 5))
    weights[:, 0], weights[:, 2] = 1.0 - w_jaw, w_jaw
    basis = expression_basis(c, topo) * IOD_M
    shapedirs = np.concatenate([basis, np.zeros((N_VERTS, 3, 100 - N_EXP))], axis=2)   # exp = the last 100
    f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return FlameModel(v_template=f32(v * IOD_M), shapedirs=f32(shapedirs), posedirs=torch.zeros(N_VERTS, 3, 36),
                      j_regressor=f32(j_reg), weights=f32(weights), parents=[-1, 0, 1, 1, 1],
                      faces=topo["faces"], masks=regions(c, topo), n_shape=0)


def load_head(where: str | Path) -> "FlameModel":
    """A head by name: ``open`` for the open head, else a FLAME folder (generic_model.pkl + FLAME_masks.pkl)."""
    from .flame import FlameModel
    return open_head() if str(where) == NAME else FlameModel.load(where)


def unpose_jaw(points: np.ndarray, jaw: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
    """Undo the open head's jaw skinning: (T, 468, 3) canonical-frame points (IOD) posed by jaw angles
    (T,) (about +x) -> the points before the jaw turned. Each vertex moved by (1 - w)·I + w·R about
    the pivot, so it is solved back with that blend's inverse."""
    c = load_canonical() if c is None else c
    p, w = jaw_pivot(c), jaw_weights(c)
    ct, st = np.cos(jaw), np.sin(jaw)
    rot = np.zeros((len(jaw), 3, 3))
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = ct, -st, st, ct
    blend = np.eye(3)[None, None] + w[None, :, None, None] * (rot[:, None] - np.eye(3)[None, None])
    return p + np.linalg.solve(blend, (points - p)[..., None])[..., 0]
