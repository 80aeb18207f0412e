"""FLAME 2020 loading and linear blend skinning for 56-coefficient sequences.

The licensed ``generic_model.pkl`` is a Python-2 pickle full of chumpy objects. We never install
chumpy and never unpickle arbitrary globals: :class:`_RestrictedUnpickler` maps chumpy classes to
:class:`_ChumpyStub` (which only keeps the array), maps old and new ``scipy.sparse`` paths to a
stand-in that rebuilds a CSC/CSR matrix from its raw arrays, allows the handful of numpy/copyreg
globals that plain arrays need, and refuses everything else with a clear error.

Coefficients: ``f = [exp(50), jaw(3), pose(3)]`` (``pose`` = global head rotation, axis-angle).
Neck and eye rotations are zero; identity shape is zeros unless given.

``make_synthetic_flame`` writes a tiny FLAME-format model (same keys, far fewer vertices, a
chumpy-like object inside) for tests and the learnability benchmark. It is not a face model.
"""
from __future__ import annotations

import io
import pickle
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MODEL_FILE = "generic_model.pkl"
MASKS_FILE = "FLAME_masks.pkl"
N_EXP = 50
HOW_TO_GET = ("FLAME 2020 is licensed: register at https://flame.is.tue.mpg.de, download 'FLAME 2020' "
              f"and put {MODEL_FILE} and {MASKS_FILE} (from 'FLAME Vertex Masks') in one folder, "
              "then pass that folder with --flame DIR.")


class FlameAssetsMissing(FileNotFoundError):
    """Raised when FLAME files are not where the user said they are."""


class _ChumpyStub:
    """Stand-in for any chumpy class: keeps the wrapped array (chumpy stores it as ``x``)."""

    def __init__(self, *args, **kwargs):
        self._state = {}

    def __setstate__(self, state):
        self._state = state if isinstance(state, dict) else {"state": state}

    @property
    def array(self) -> np.ndarray:
        x = self._state.get("x")
        if isinstance(x, np.ndarray):
            return x
        for v in self._state.values():  # derived chumpy terms: first array found
            if isinstance(v, np.ndarray):
                return v
        raise ValueError("chumpy object without an array payload (derived term?) in the FLAME pickle")

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype)


class _SparseStub:
    """Stand-in for pickled scipy CSC/CSR matrices, whatever their module path or scipy version."""
    fmt = "csc"

    def __init__(self, *args, **kwargs):
        self._state = {}

    def __setstate__(self, state):
        self._state = state

    def toarray(self) -> np.ndarray:
        import scipy.sparse as sp
        s = self._state
        shape = tuple(s.get("_shape", s.get("shape")))
        cls = sp.csc_matrix if self.fmt == "csc" else sp.csr_matrix
        return cls((s["data"], s["indices"], s["indptr"]), shape=shape).toarray()


class _CscStub(_SparseStub):
    fmt = "csc"


class _CsrStub(_SparseStub):
    fmt = "csr"


# Plain globals a numpy/scipy pickle legitimately needs. Everything else is refused.
_ALLOWED = {
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("__builtin__", "object"), ("builtins", "object"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # Python 3 writes bytes in protocol-2 pickles through it
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyStub
        if module.startswith("scipy.sparse"):
            if name == "csc_matrix":
                return _CscStub
            if name == "csr_matrix":
                return _CsrStub
        if (module, name) in _ALLOWED:
            module = {"copy_reg": "copyreg", "__builtin__": "builtins"}.get(module, module)
            if module.startswith("numpy.core") and np.__version__ >= "2":
                module = module.replace("numpy.core", "numpy._core")
            mod = __import__(module, fromlist=[name])
            return getattr(mod, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle global {module}.{name}: only numpy arrays, scipy sparse matrices and "
            "chumpy arrays are expected in FLAME files")


def safe_load_pickle(path: str | Path) -> object:
    """Load a FLAME-style pickle with the restricted unpickler (latin1: they are Python-2 pickles)."""
    with open(path, "rb") as fh:
        return _RestrictedUnpickler(fh, encoding="latin1").load()


def _as_array(v) -> np.ndarray:
    if isinstance(v, _SparseStub):
        return v.toarray()
    if hasattr(v, "toarray"):
        return v.toarray()
    return np.asarray(v)


def _rodrigues(rvec: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) -> rotation matrices (..., 3, 3). Stable at zero angle."""
    # Clamped, not shifted: norm(rvec + eps) is 0 (and the axis NaN) for rvec = (-eps, -eps, -eps).
    angle = torch.linalg.norm(rvec, dim=-1, keepdim=True).clamp_min(1e-8)
    axis = rvec / angle
    c, s = torch.cos(angle)[..., None], torch.sin(angle)[..., None]
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*rvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rvec.dtype, device=rvec.device).expand_as(k)
    return eye + s * k + (1 - c) * (k @ k)


@dataclass
class FlameModel:
    """FLAME as plain tensors; ``vertices(coeffs)`` does shape/expression blend, pose correctives, LBS."""
    v_template: torch.Tensor   # (V, 3)
    shapedirs: torch.Tensor    # (V, 3, n_shape + n_exp_total)
    posedirs: torch.Tensor     # (V, 3, 9 * (J - 1))
    j_regressor: torch.Tensor  # (J, V)
    weights: torch.Tensor      # (V, J)
    parents: list[int]         # parent joint of each joint, -1 for the root
    faces: np.ndarray          # (F, 3) int
    masks: dict[str, np.ndarray]
    n_shape: int

    @classmethod
    def load(cls, folder: str | Path, n_shape: int = 300) -> "FlameModel":
        folder = Path(folder).expanduser()
        missing = [f for f in (MODEL_FILE, MASKS_FILE) if not (folder / f).is_file()]
        if missing:
            raise FlameAssetsMissing(
                f"FLAME files missing: {', '.join(missing)} (looked in {folder.resolve()}). {HOW_TO_GET}")
        raw = safe_load_pickle(folder / MODEL_FILE)
        masks_raw = safe_load_pickle(folder / MASKS_FILE)
        f32 = lambda k: torch.as_tensor(_as_array(raw[k]), dtype=torch.float32)  # noqa: E731
        kintree = _as_array(raw["kintree_table"]).astype(np.int64)
        parents = [-1 if i == 0 else int(p) for i, p in enumerate(kintree[0])]
        shapedirs = f32("shapedirs")
        n_shape = min(n_shape, shapedirs.shape[-1] - N_EXP)
        return cls(v_template=f32("v_template"), shapedirs=shapedirs, posedirs=f32("posedirs"),
                   j_regressor=f32("J_regressor"), weights=f32("weights"), parents=parents,
                   faces=_as_array(raw["f"]).astype(np.int64),
                   masks={k: _as_array(v).astype(np.int64) for k, v in dict(masks_raw).items()},
                   n_shape=n_shape)

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    def to(self, device) -> "FlameModel":
        for k in ("v_template", "shapedirs", "posedirs", "j_regressor", "weights"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    def upper_face(self) -> np.ndarray:
        """Forehead ∪ eye region (CodeTalker's FDD region)."""
        return np.union1d(self.masks["forehead"], self.masks["eye_region"])

    def vertices(self, coeffs: torch.Tensor | np.ndarray, shape: torch.Tensor | None = None,
                 zero_pose: bool = False) -> torch.Tensor:
        """Coefficients (..., 56) -> vertices (..., V, 3). ``zero_pose`` fixes the head (lip metrics)."""
        c = torch.as_tensor(coeffs, dtype=torch.float32, device=self.v_template.device)
        lead = c.shape[:-1]
        c = c.reshape(-1, c.shape[-1])
        b = c.shape[0]
        exp, jaw, glob = c[:, :N_EXP], c[:, N_EXP:N_EXP + 3], c[:, N_EXP + 3:N_EXP + 6]
        if zero_pose:
            glob = torch.zeros_like(glob)
        betas = torch.zeros(b, self.n_shape, device=c.device) if shape is None else \
            torch.as_tensor(shape, dtype=torch.float32, device=c.device).reshape(-1, self.n_shape).expand(b, -1)
        # Identity coefficients use the first n_shape directions, expression the last 100 (first 50 used).
        n_total = self.shapedirs.shape[-1]
        exp_dirs = self.shapedirs[..., n_total - 100:n_total - 100 + N_EXP]
        v = self.v_template + torch.einsum("vcs,bs->bvc", self.shapedirs[..., :self.n_shape], betas) \
            + torch.einsum("vce,be->bvc", exp_dirs, exp)
        joints = torch.einsum("jv,bvc->bjc", self.j_regressor, v)
        n_j = joints.shape[1]
        # Joint order: global, neck, jaw, left eye, right eye.
        rvec = torch.zeros(b, n_j, 3, device=c.device)
        rvec[:, 0], rvec[:, 2] = glob, jaw
        rot = _rodrigues(rvec)                                               # (B, J, 3, 3)
        eye = torch.eye(3, device=c.device)
        pose_feat = (rot[:, 1:] - eye).reshape(b, -1)                        # (B, 9(J-1))
        v = v + torch.einsum("vcp,bp->bvc", self.posedirs, pose_feat)
        # Kinematic chain: world transform of each joint.
        rel = joints.clone()
        for j in range(1, n_j):
            rel[:, j] = joints[:, j] - joints[:, self.parents[j]]
        local = torch.zeros(b, n_j, 4, 4, device=c.device)
        local[:, :, :3, :3], local[:, :, :3, 3], local[:, :, 3, 3] = rot, rel, 1.0
        world = [local[:, 0]]
        for j in range(1, n_j):
            world.append(world[self.parents[j]] @ local[:, j])
        world = torch.stack(world, dim=1)                                    # (B, J, 4, 4)
        # Remove the rest-pose joint location so transforms act on rest-pose vertices.
        offset = torch.einsum("bjrc,bjc->bjr", world[:, :, :3, :3], joints)
        world = world.clone()
        world[:, :, :3, 3] = world[:, :, :3, 3] - offset
        t = torch.einsum("vj,bjrc->bvrc", self.weights, world)               # (B, V, 4, 4)
        out = torch.einsum("bvrc,bvc->bvr", t[..., :3, :3], v) + t[..., :3, 3]
        return out.reshape(*lead, self.n_vertices, 3)

    def vertices_np(self, coeffs: np.ndarray, zero_pose: bool = False, chunk: int = 512) -> np.ndarray:
        """Numpy convenience for metrics/rendering; processes frames in chunks to bound memory."""
        flat = np.asarray(coeffs, dtype=np.float32).reshape(-1, coeffs.shape[-1])
        with torch.no_grad():
            parts = [self.vertices(flat[i:i + chunk], zero_pose=zero_pose).cpu().numpy()
                     for i in range(0, len(flat), chunk)]
        return np.concatenate(parts).reshape(*coeffs.shape[:-1], self.n_vertices, 3)


# ---------------------------------------------------------------- synthetic FLAME-format model
def _uv_sphere(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    verts = [[0.0, 1.0, 0.0]]
    for i in range(1, n_lat):
        th = np.pi * i / n_lat
        for j in range(n_lon):
            ph = 2 * np.pi * j / n_lon
            verts.append([np.sin(th) * np.sin(ph), np.cos(th), np.sin(th) * np.cos(ph)])
    verts.append([0.0, -1.0, 0.0])
    faces = []
    ring = lambda i, j: 1 + (i - 1) * n_lon + (j % n_lon)  # noqa: E731
    for j in range(n_lon):
        faces.append([0, ring(1, j), ring(1, j + 1)])
        for i in range(1, n_lat - 1):
            a, b2, c, d = ring(i, j), ring(i + 1, j), ring(i + 1, j + 1), ring(i, j + 1)
            faces += [[a, b2, c], [a, c, d]]
        faces.append([len(verts) - 1, ring(n_lat - 1, j + 1), ring(n_lat - 1, j)])
    return np.asarray(verts) * 0.1, np.asarray(faces, dtype=np.int64)  # a 10 cm "head", in metres


def make_synthetic_flame(folder: str | Path, n_lat: int = 12, n_lon: int = 16, seed: int = 0) -> Path:
    """Write a small FLAME-format ``generic_model.pkl`` + ``FLAME_masks.pkl`` into ``folder``.

    Same keys and shape contract as FLAME 2020 (shapedirs with 300 + 100 directions, 5 joints,
    sparse J_regressor, a chumpy-like object for ``shapedirs``), on a UV sphere. The jaw joint moves
    the lower front vertices (the "lips"), so jaw and expression errors show in LVE.
    """
    import scipy.sparse as sp
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    v, faces = _uv_sphere(n_lat, n_lon)
    n_v = len(v)
    front = v[:, 2] > 0.02
    lips = np.where(front & (v[:, 1] < -0.02) & (v[:, 1] > -0.07))[0]
    face = np.where(front)[0]
    forehead = np.where(front & (v[:, 1] > 0.05))[0]
    eye_region = np.where(front & (v[:, 1] > 0.0) & (v[:, 1] <= 0.05))[0]
    # Expression directions: smooth random fields, strongest around the mouth (like real FLAME).
    mouth_w = np.exp(-((v[:, 1] + 0.045) ** 2 + (v[:, 0]) ** 2) / 0.002) * front
    shapedirs = rng.normal(0, 1e-3, (n_v, 3, 400))
    shapedirs[:, :, 300:] *= (0.5 + 4 * mouth_w)[:, None, None]
    joints_pos = np.array([[0, 0, 0], [0, -0.08, -0.02], [0, -0.03, -0.03], [0.035, 0.03, 0.08], [-0.035, 0.03, 0.08]])
    # Regress each joint from its nearest vertices (a sparse, row-normalised J_regressor).
    jreg = np.zeros((5, n_v))
    for j, p in enumerate(joints_pos):
        near = np.argsort(((v - p) ** 2).sum(1))[:4]
        jreg[j, near] = 0.25
    weights = np.zeros((n_v, 5))
    lower_front = front & (v[:, 1] < -0.02)
    weights[:, 0] = 1.0
    weights[lower_front, 0], weights[lower_front, 2] = 0.2, 0.8
    posedirs = rng.normal(0, 1e-4, (n_v, 3, 36))

    class Ch:  # chumpy-like: pickled under module "chumpy.ch", state keeps the array as "x"
        def __init__(self, x):
            self.x = x

    fake = types.ModuleType("chumpy.ch")
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    fake.Ch = Ch
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = types.ModuleType("chumpy"), fake
    try:
        model = {"v_template": v, "f": faces.astype(np.uint32), "shapedirs": Ch(shapedirs),
                 "posedirs": posedirs, "J_regressor": sp.csc_matrix(jreg), "weights": weights,
                 "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
                 "bs_style": "lbs", "bs_type": "lrotmin"}
        buf = io.BytesIO()
        pickle.dump(model, buf, protocol=2)
    finally:
        for k, mod in saved.items():
            if mod is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = mod
    (folder / MODEL_FILE).write_bytes(buf.getvalue())
    masks = {"lips": lips, "face": face, "forehead": forehead, "eye_region": eye_region,
             "nose": np.where(front & (np.abs(v[:, 1]) < 0.02))[0], "scalp": np.where(v[:, 1] > 0.07)[0],
             "neck": np.where(v[:, 1] < -0.08)[0]}
    with open(folder / MASKS_FILE, "wb") as fh:
        pickle.dump(masks, fh, protocol=2)
    return folder
