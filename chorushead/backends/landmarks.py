"""Open fit backend: FLAME-layout coefficients from MediaPipe's 478-point face mesh (fit.backend = landmarks).

EMOCA needs licensed assets; this backend needs only a registry package. Per crop it gives the same
56 numbers as EMOCA, ``[exp(50), jaw(3), pose(3)]``, of which it estimates two groups:

- ``exp``: the open head's 50 expression coefficients (chorushead.core.openhead). Per frame the
  landmarks are put in the canonical frame (the pose fit below removed), the jaw's turn is undone
  with the open head's own skinning, and that singer's neutral (the per-point median over the
  segment's frames with a face) is subtracted; the rest is projected on the open head's orthonormal
  expression basis (least squares = a dot product). A face held through a whole segment therefore
  reads as that singer's neutral: expression is motion relative to the singer's usual face.
- ``pose``: global head rotation, axis-angle in FLAME's frame (x = subject's left = image right,
  y up, z out of the face towards the camera), from a least-squares similarity fit (Umeyama) of the
  upper-face landmarks (above the nose base: they do not move with the jaw or lips) to a canonical
  face. MediaPipe's wheel does not ship its canonical face model, so ours
  (``chorushead/data/face_mesh_canonical.npy``, made by :func:`make_canonical`) is the mean of the
  model's own 3D landmarks on the two frontal photos that ship with our dependencies
  (chorushead.sample.face_photos), made exactly left-right symmetric with the mesh's mirror pairing:
  so zero yaw and roll = the face's own symmetry plane faces the camera; zero pitch = those photos'.
- ``jaw``: only the pitch (x) component: opening angle ``2·asin(gap / 2r)`` where gap = 3D distance
  between the inner-lip midpoints (landmarks 13, 14) and r = jaw joint to lower lip, taken as
  JAW_RADIUS × the outer-eye-corner distance (the lower lip moves on a circle about the jaw joint,
  and the chord is the gap). Positive about +x opens the mouth, as in FLAME.

Frames without a detected face are linearly interpolated from the nearest found frames of the same
strip and segment (held constant at the ends) and flagged in the npz's ``found`` (S, T) array.

``coeff_groups`` of such a fit: exp, jaw, pose (all three are estimated).

MediaPipe runs in its own venv (scripts/setup_landmarks_env.sh) through ``landmarks_worker.py``,
or in-process when this interpreter can import mediapipe.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from chorushead.backends.worker import JsonLinesWorker
from chorushead.core import assets
from chorushead.core import openhead
from chorushead.core.errors import MissingAsset, StageError
from chorushead.core.openhead import JAW_RADIUS, LEFT_EYE, LOWER_LIP, NOSE_BASE, RIGHT_EYE, UPPER_LIP
from chorushead.core.windows import EXP, JAW, N_COEFFS, POSE

WORKER = Path(__file__).with_name("landmarks_worker.py")
CANONICAL = openhead.CANONICAL
load_canonical = openhead.load_canonical   # the open head's canonical face is the fit's
SETUP_HINT = ("run `bash scripts/setup.sh` (it builds the venv with mediapipe 0.10.21 via "
              "scripts/setup_landmarks_env.sh, ~425 MB, ~30 s, in $CHORUSHEAD_HOME/envs/landmarks when "
              "CHORUSHEAD_HOME is set, else in the checkout's envs/landmarks), or point CHORUSHEAD_LANDMARKS_PYTHON / "
              "fit.landmarks_python at a python that can `import mediapipe` (0.10.21)")

N_POINTS = 478                    # 468 mesh points + 2 × 5 iris points
# Landmark numbers and the jaw radius (jaw joint -> lower lip ≈ outer-eye-corner distance, both ~9-10 cm)
# live with the open head (core/openhead.py), whose jaw turns the lower lip by the angle measured here.


# ----------------------------------------------------------------------------------------------
# Geometry (plain numpy; MediaPipe is not needed here).

def to_flame_frame(lm: np.ndarray) -> np.ndarray:
    """MediaPipe pixels (x right, y down, z away) -> FLAME/OpenGL camera axes (x right, y up, z towards camera)."""
    return lm * np.array([1.0, -1.0, -1.0], dtype=lm.dtype)


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: s, R, t minimising ||s R src + t - dst||² over points (n, 3); R a proper rotation."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.array([1.0, 1.0, d])
    r = (u * fix) @ vt
    s = float((sig * fix).sum() / (a ** 2).sum())
    return s, r, mu_d - s * r @ mu_s


def rotvec(r: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return Rotation.from_matrix(r).as_rotvec()


def mirror_pairs(shape: np.ndarray) -> np.ndarray:
    """Index of each point's left-right mirror partner (itself on the midline), for a roughly frontal
    shape: optimal assignment between the points and their reflection across x = mean x."""
    from scipy.optimize import linear_sum_assignment
    m = shape.copy()
    m[:, 0] = 2 * shape[:, 0].mean() - m[:, 0]
    cost = ((shape[:, None, :] - m[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    pairs = np.empty(len(shape), np.int64)
    pairs[cols] = rows              # point `cols[k]` reflected lands on point `rows[k]`
    return pairs


def make_canonical(shapes: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Symmetric canonical face from (K, 478, 3) FLAME-frame detections of near-frontal faces: scale
    and align every shape to the first, average, then remove the mean's yaw and roll: if M = R0·C with
    C mirror-symmetric, the fit of M onto its permuted reflection is ≈ R0⁻², so rotating by half of
    it frontalizes M (pitch is invisible to mirror symmetry and stays the photos')."""
    from scipy.spatial.transform import Rotation
    ref = shapes[0] - shapes[0].mean(0)
    ref = ref / np.linalg.norm(ref)
    aligned = []
    for x in shapes:
        s, r, t = similarity(x, ref)
        aligned.append(s * x @ r.T + t)
    m = np.mean(aligned, axis=0)
    m -= m.mean(0)
    flip = np.array([-1.0, 1.0, 1.0])
    for _ in range(iterations):
        pairs = mirror_pairs(m)
        _, r, _ = similarity(m, m[pairs] * flip)
        m = m @ Rotation.from_rotvec(rotvec(r) / 2).as_matrix().T
        m -= m.mean(0)
    pairs = mirror_pairs(m)
    c = (m + m[pairs] * flip) / 2
    iod = np.linalg.norm(c[RIGHT_EYE] - c[LEFT_EYE])
    return (c / iod).astype(np.float32)           # unit: outer-eye-corner distance


def rigid_points(canonical: np.ndarray) -> np.ndarray:
    """Mesh points above the nose base (forehead, brows, eyes, nose, upper cheeks): they stay put
    when the jaw or lips move. Irises (468+) are left out: eyes turn independently of the head."""
    idx = np.arange(468)
    return idx[canonical[:468, 1] > canonical[NOSE_BASE, 1]]


def coefficients(lm: np.ndarray, canonical: np.ndarray, rigid: Optional[np.ndarray] = None,
                 aligned: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 478, 3) MediaPipe pixel landmarks (NaN = no face) -> (N, 56) jaw and pose coefficients (NaN
    rows where no face; ``exp`` 0 here: it needs the segment's neutral, see :func:`expression`) and (N,)
    found flags. ``aligned`` (N, 468, 3), when given, receives the mesh points in the canonical frame
    (pose, scale and position removed; NaN where no face)."""
    rigid = rigid_points(canonical) if rigid is None else rigid
    out = np.full((len(lm), N_COEFFS), np.nan, np.float32)
    found = ~np.isnan(lm).any(axis=(1, 2))
    if aligned is not None:
        aligned[~found] = np.nan
    for i in np.flatnonzero(found):
        x = to_flame_frame(lm[i].astype(np.float64))
        s, r, t = similarity(canonical[rigid], x[rigid])
        iod = np.linalg.norm(x[RIGHT_EYE] - x[LEFT_EYE])
        gap = np.linalg.norm(x[UPPER_LIP] - x[LOWER_LIP])
        jaw = 2 * np.arcsin(min(1.0, gap / (2 * JAW_RADIUS * iod)))
        out[i, EXP] = 0.0
        out[i, JAW] = (jaw, 0.0, 0.0)
        out[i, POSE] = rotvec(r)
        if aligned is not None:
            aligned[i] = (x[:openhead.N_VERTS] - t) @ r / s      # x ≈ s·R·c + t  ->  c = Rᵀ(x - t)/s
    return out, found


def expression(aligned: np.ndarray, jaw: np.ndarray, found: np.ndarray, canonical: np.ndarray,
               basis: np.ndarray) -> np.ndarray:
    """(T, 50) expression coefficients of one singer's segment: canonical-frame points (T, 468, 3) with
    the jaw's turn undone, minus their median over found frames, projected on ``basis`` (468, 3, 50;
    orthogonal columns of norm openhead.EXP_SCALE, so the projection is a dot product). Rows where
    no face was found are NaN (filled by :func:`fill_missing` like the rest)."""
    out = np.full((len(aligned), openhead.N_EXP), np.nan, np.float32)
    if not found.any():
        return out
    unposed = openhead.unpose_jaw(aligned[found], jaw[found], canonical)
    residual = (unposed - np.median(unposed, axis=0)).reshape(len(unposed), -1)
    q = basis.reshape(-1, openhead.N_EXP)
    out[found] = residual @ q / openhead.EXP_SCALE ** 2
    return out


def fill_missing(coeffs: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Linear interpolation over frames without a face (nearest value at the ends; zeros if none found)."""
    if found.all():
        return coeffs
    if not found.any():
        return np.zeros_like(coeffs)
    t = np.arange(len(coeffs))
    out = coeffs.copy()
    for k in range(coeffs.shape[1]):
        out[~found, k] = np.interp(t[~found], t[found], coeffs[found, k])
    return out


# ----------------------------------------------------------------------------------------------
# Where things are.

def landmark_pythons(explicit: str = "") -> list[str]:
    """First found wins: the parameter alone, else $CHORUSHEAD_LANDMARKS_PYTHON alone, else
    $CHORUSHEAD_HOME/envs/landmarks, else the checkout's envs/landmarks (core/assets.py)."""
    return [str(c) for c in assets.candidates("landmarks_python", explicit)]


def find_landmark_python(explicit: str = "") -> Optional[str]:
    return next((c for c in landmark_pythons(explicit) if Path(c).exists()), None)


def in_process_available() -> bool:
    return importlib.util.find_spec("mediapipe") is not None


def uses_in_process(python: str = "") -> bool:
    """Whether MediaPipe runs in THIS interpreter (the same rule as LandmarksBackend.open)."""
    return not python and not os.environ.get("CHORUSHEAD_LANDMARKS_PYTHON") and in_process_available()


def identity(python: str = "") -> dict:
    """What will fit (for the stage's fingerprint): mediapipe's version and its face-mesh model files in
    the environment that runs it (found on disk: mediapipe is not imported), and our canonical face.
    Never raises."""
    def make() -> dict:
        from chorushead.backends.landmarks_worker import MODEL_FILES
        out: dict = {"canonical": assets.file_identity(CANONICAL) if CANONICAL.is_file() else f"missing:{CANONICAL}",
                     "expression": openhead.basis_identity()}
        if uses_in_process(python):
            from importlib import metadata
            spec = importlib.util.find_spec("mediapipe")
            root = Path(list(spec.submodule_search_locations)[0])
            version = metadata.version("mediapipe")
        else:
            exe = find_landmark_python(python)
            if exe is None:
                out["missing"] = landmark_pythons(python)
                return out
            sites = assets.venv_site_packages(exe)
            root = next((d / "mediapipe" for d in sites if (d / "mediapipe").is_dir()), None)
            version = assets.dist_version("mediapipe", sites)
            if root is None:
                out["missing"] = [str(d / "mediapipe") for d in sites] or [exe]
                return out
        out["mediapipe"] = version
        out["files"] = [[f, assets.file_identity(root / f) if (root / f).is_file() else "missing"] for f in MODEL_FILES]
        return out
    return assets.safe(make)


@dataclass
class LandmarksBackend:
    """Crops -> FLAME-layout coefficients through MediaPipe's face mesh (see the module doc)."""
    canonical: np.ndarray
    worker: Optional[JsonLinesWorker] = None
    runner: Any = None                 # in-process LandmarkRunner
    where: str = ""
    version: str = ""
    device: str = "cpu"

    @classmethod
    def open(cls, python: str = "", min_confidence: float = 0.5, start_timeout: float = 300.0) -> "LandmarksBackend":
        canonical = load_canonical()
        if uses_in_process(python):
            from chorushead.backends.landmarks_worker import LandmarkRunner
            r = LandmarkRunner(min_confidence)
            return cls(canonical, runner=r, where=sys.executable, version=r.version)
        exe = find_landmark_python(python)
        if exe is None:
            raise MissingAsset("face-landmark environment (mediapipe 0.10.21)", landmark_pythons(python), SETUP_HINT)
        env = dict(os.environ, GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("PYTHONPATH", None)      # the project's numpy 2 must not leak into that venv
        w = JsonLinesWorker([exe, str(WORKER), "--min-confidence", str(min_confidence)], env=env,
                            name="landmarks", start_timeout=start_timeout)
        if not w.ready.get("ready"):
            w.close(kill=True)
            raise MissingAsset("a working face-landmark environment (mediapipe 0.10.21 and its face-mesh models)",
                               [exe], f"{w.ready.get('error')}; {SETUP_HINT}")
        return cls(canonical, worker=w, where=exe, version=w.ready.get("mediapipe", "?"))

    def detect(self, paths: list[str], workdir: Path, timeout: float = 3600.0) -> np.ndarray:
        """(N, 478, 3) MediaPipe pixel landmarks, NaN rows where no face was found."""
        if self.runner is not None:
            return self.runner.detect(paths)
        out = Path(workdir) / "_landmarks.npy"
        reply = self.worker.request({"images": [str(p) for p in paths], "output": str(out)}, timeout=timeout)
        if not reply.get("ok"):
            raise StageError(f"face landmarks failed: {reply.get('error')}\n{reply.get('traceback', '')}")
        try:
            return np.load(out)
        finally:
            out.unlink(missing_ok=True)

    def fit(self, strips: list[str], segments: list[tuple[int, int]], output_dir: Path,
            batch_size: int = 32) -> tuple[list[str], int]:
        """Writes seg{i:03d}.npz (coeffs (S, T, 56), frames, found (S, T)) like the EMOCA path; images go
        to the model ``batch_size`` at a time, so memory is one batch of landmarks + one segment's coeffs."""
        output_dir = Path(output_dir)
        rigid = rigid_points(self.canonical)
        basis = openhead.expression_basis(self.canonical)
        paths, n_images = [], 0
        for i, (start, end) in enumerate(segments):
            coeffs = np.zeros((len(strips), end - start, N_COEFFS), np.float32)
            found = np.zeros((len(strips), end - start), bool)
            for s, folder in enumerate(strips):
                images = [os.path.join(folder, f"{t:06d}.jpg") for t in range(start, end)]
                missing = [p for p in images if not os.path.exists(p)]
                if missing:
                    raise StageError(f"{len(missing)} crop(s) missing, e.g. {missing[0]}; rerun the crop stage")
                aligned = np.zeros((len(images), openhead.N_VERTS, 3), np.float32)   # one singer's segment
                for b in range(0, len(images), max(1, batch_size)):
                    c, f = coefficients(self.detect(images[b:b + batch_size], output_dir), self.canonical, rigid,
                                        aligned=aligned[b:b + batch_size])
                    coeffs[s, b:b + len(c)], found[s, b:b + len(c)] = c, f
                coeffs[s, :, EXP] = expression(aligned, coeffs[s, :, JAW][:, 0], found[s], self.canonical, basis)
                coeffs[s] = fill_missing(coeffs[s], found[s])
                n_images += len(images)
            path = output_dir / f"seg{i:03d}.npz"
            np.savez(path, coeffs=coeffs, frames=np.array([start, end], np.int64), found=found)
            paths.append(str(path))
        return paths, n_images

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
