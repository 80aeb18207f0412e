"""fit: EMOCA v2 on every crop of every segment -> per frame and singer 50 expression, 3 jaw and
3 global pose coefficients (paper §3: "53 expression (face + jaw) coefficients and 3 pose").

Inputs: crop's ``strips`` (folders of ``{frame:06d}.jpg`` 224x224 crops, EMOCA's crop convention,
frame = index in the trimmed video) and contiguity's ``segments`` ([start, end) where every strip
has a face). Output per segment ``seg{i:03d}.npz``: ``coeffs`` (S, T, 56) = [exp 50, jaw 3,
pose 3], plus ``shape`` (S, T, 100) and ``cam`` (S, T, 3) kept aside, and ``frames`` = [start, end).

EMOCA runs in its own Python 3.8 environment through ``emoca_worker.py`` (see backends/emoca.py),
started once per runner worker; images are batched across strips and segments, on the GPU when
that environment sees one.

``backend = "landmarks"`` (backends/landmarks.py) needs no licensed asset: MediaPipe's face mesh in
its own venv gives jaw opening, head pose and the open head's 50 expression coefficients
(chorushead.core.openhead) in the same layout (no ``shape``/``cam``; a ``found`` (S, T) array marks
frames interpolated because no face was found).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chorushead.backends.emoca import EmocaBackend
from chorushead.backends.landmarks import LandmarksBackend
from chorushead.core.errors import BadInput, StageError
from chorushead.core.payloads import FitSegment
from chorushead.core.shapes import Metrics as MetricsShape, Outputs as OutputsShape
from chorushead.stages import contiguity, crop
from chorushead.stages.base import EXEC, Context, Result, Stage
from chorushead.core.windows import JAW_OPEN

COEFF_GROUPS = ["exp", "jaw", "pose"]   # the [exp 50, jaw 3, pose 3] blocks of ``coeffs``


@dataclass
class Params:
    model_name: str = "EMOCA_v2_lr_mse_20"
    model_stage: str = "detail"      # EMOCA's load_model mode ("coarse" gives the same codes here)
    # Execution only (left out of the fingerprint, see base.EXEC): where the model and interpreters are
    # found changes nothing by itself; the identity below hashes the model files that will run.
    # models_dir: default $CHORUSHEAD_EMOCA_MODELS, else $CHORUSHEAD_HOME/models/EMOCA, else the checkout's
    # assets/EMOCA/models (core/assets.py).
    models_dir: str = field(default="", metadata=EXEC)
    python: str = field(default="", metadata=EXEC)       # EMOCA env python; default $CHORUSHEAD_EMOCA_PYTHON, else in-process
    emoca_path: str = field(default="", metadata=EXEC)   # clone of the emoca repo for PYTHONPATH; default $CHORUSHEAD_EMOCA_PATH
    # auto | cpu | cuda | cuda:1: the same network on the same crops (float rounding aside); moving a build
    # to a GPU must not redo it.
    device: str = field(default="auto", metadata=EXEC)
    # images per forward pass: EMOCA runs in eval mode (batch norm uses its stored statistics), so every
    # image is encoded on its own (float rounding aside); MediaPipe sees one image at a time whatever the batch.
    batch_size: int = field(default=32, metadata=EXEC)
    backend: str = "emoca"           # emoca (the paper's) | landmarks (MediaPipe face mesh: open-head exp + jaw + pose)
    # landmark env python; default $CHORUSHEAD_LANDMARKS_PYTHON, else $CHORUSHEAD_HOME/envs/landmarks, else the
    # checkout's envs/landmarks; the identity records its mediapipe version and model files.
    landmarks_python: str = field(default="", metadata=EXEC)


def identity(params: Params) -> dict:
    """What will fit (Stage.identity): EMOCA's model files, or MediaPipe's version + model files + our
    canonical face for the landmarks backend."""
    if params.backend == "landmarks":
        from chorushead.backends.landmarks import identity as landmarks_identity
        return {"backend": "landmarks", **landmarks_identity(params.landmarks_python)}
    from chorushead.backends.emoca import identity as emoca_identity
    return {"backend": params.backend, **emoca_identity(params.models_dir, params.model_name, params.model_stage)}


@dataclass
class Outputs(OutputsShape):
    segments: list[str]              # seg{i:03d}.npz per contiguity segment
    n_strips: int
    # Which fitter made the coefficients and which groups it estimated (the rest are zeros); records
    # written before these existed are EMOCA fits of all three.
    backend: str = "emoca"
    coeff_groups: list[str] = field(default_factory=lambda: list(COEFF_GROUPS))

    def load_segment(self, out: Path, i: int, span: tuple[int, int] | None = None) -> FitSegment:
        """Segment ``i``'s fit, checked against its contiguity ``span`` [start, end) when given."""
        if not 0 <= i < len(self.segments):
            raise StageError(f"fit has {len(self.segments)} segment(s), not a segment {i}; rerun fit")
        return FitSegment.load(Path(out) / self.segments[i], span)


@dataclass
class Metrics(MetricsShape):
    images: int
    segments: int
    device: str
    jaw_mean: list[float]            # mean jaw opening per strip: a cheap sanity number
    no_face: int = 0                 # landmarks backend: frames with no face found, interpolated from neighbours


def setup(params: Params) -> EmocaBackend | LandmarksBackend:
    if params.backend == "landmarks":
        return LandmarksBackend.open(python=params.landmarks_python)
    if params.backend != "emoca":
        raise BadInput(f"fit.backend = {params.backend!r}: use 'emoca' or 'landmarks'")
    return EmocaBackend.open(python=params.python, emoca_path=params.emoca_path, models=params.models_dir,
                             model_name=params.model_name, stage=params.model_stage, device=params.device)


def process(ctx: Context, params: Params, model: EmocaBackend | LandmarksBackend) -> Result:
    segments = [(a, b) for a, b in contiguity.Outputs.of(ctx.upstream["contiguity"]).segments]
    strips = [ctx.path(p) for p in crop.Outputs.of(ctx.upstream["crop"]).strips]
    if not segments:
        return Result(status="skipped", reason="no segment with every singer's face",
                      outputs=Outputs(segments=[], n_strips=len(strips)))
    for s in strips:
        if not s.is_dir():
            raise BadInput(f"crop folder {s} is missing; rerun the crop stage")
    paths, n_images = model.fit([str(s) for s in strips], segments, Path(ctx.tmp), params.batch_size)
    outputs = [Path(p).name for p in paths]
    jaw_open, no_face = [], 0
    for p, span in zip(paths, segments):   # a cheap sanity number for `chorushead status`: mean jaw opening per strip
        seg = FitSegment.load(p, span)
        jaw_open.append(seg.coeffs[:, :, JAW_OPEN].mean(axis=1))
        no_face += int((~seg.found).sum()) if seg.found is not None else 0
    landmarks = params.backend == "landmarks"     # (the runner hands `model` over behind a lazy proxy)
    # Both backends estimate all three groups; the LMDB meta keeps the field for fits made before the
    # landmark fit had expression (coeff_groups jaw, pose: pachorus masks exp for those).
    return Result(outputs=Outputs(segments=outputs, n_strips=len(strips), backend="landmarks" if landmarks else "emoca",
                                  coeff_groups=list(COEFF_GROUPS)),
                  metrics=Metrics(images=int(n_images), segments=len(outputs), device=str(model.device),
                                  jaw_mean=np.mean(jaw_open, axis=0, dtype=np.float64).round(4).tolist(), no_face=no_face))


STAGE = Stage(name="fit", version="1", params=Params, outputs=Outputs, metrics=Metrics, process=process,
              setup=setup, needs=("crop", "contiguity"), preload=("torch",), identity=identity,
              gpu=True, description="EMOCA v2: 50 exp + 3 jaw + 3 global pose per frame and singer")
