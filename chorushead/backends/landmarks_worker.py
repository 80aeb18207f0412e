"""Face-landmark worker: runs INSIDE the landmark environment (scripts/setup_landmarks_env.sh).

MediaPipe 0.10.21 ships its face-mesh models in the wheel (face detector + 478-point landmark model
with attention, i.e. refined lips and irises) but pins numpy<2 / protobuf<5, so it cannot be
imported next to the project's numpy 2. The fit stage starts this file with that environment's
python and talks to it over stdin/stdout, one JSON object per line:

    -> {"images": ["/abs/000012.jpg", ...], "output": "/abs/lm.npy"}
    <- {"ok": true, "output": "/abs/lm.npy", "found": 118, "seconds": 0.7}
    <- {"ok": false, "error": "..."}

``lm.npy`` is float32 (N, 478, 3) in image pixels: x right, y down, z away from the camera on the
x scale (MediaPipe's convention, multiplied by the image width); NaN rows where no face was found.
The first line it writes is {"ready": true, ...} once the model is loaded.

Only numpy, cv2 and mediapipe are imported here (no chorushead): this file runs in a venv that has
nothing of the project. The same ``LandmarkRunner`` is used in-process when the current interpreter
can import mediapipe.
"""
from __future__ import annotations

import argparse
import os
import sys

N_POINTS = 478
MODEL_FILES = ("modules/face_landmark/face_landmark_with_attention.tflite",
               "modules/face_detection/face_detection_short_range.tflite")


def model_paths() -> list:
    """The model files inside the installed mediapipe package (the legacy face-mesh graph loads them)."""
    import mediapipe
    root = os.path.dirname(mediapipe.__file__)
    return [os.path.join(root, f) for f in MODEL_FILES]


class LandmarkRunner:
    """Loads MediaPipe's face mesh once; ``detect`` maps image paths to (N, 478, 3) landmarks."""

    def __init__(self, min_confidence: float = 0.5):
        import mediapipe as mp
        missing = [p for p in model_paths() if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f"mediapipe {mp.__version__} has no {missing[0]} (use mediapipe 0.10.21)")
        self.version = mp.__version__
        # static_image_mode: detect on every image, so a frame's result never depends on which frames
        # were sent before it (batching and resuming give identical numbers).
        self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                    refine_landmarks=True, min_detection_confidence=min_confidence)

    def detect(self, paths):
        import cv2
        import numpy as np
        out = np.full((len(paths), N_POINTS, 3), np.nan, np.float32)
        for i, p in enumerate(paths):
            bgr = cv2.imread(p, cv2.IMREAD_COLOR)
            if bgr is None:
                raise IOError(f"cannot read image {p}")
            h, w = bgr.shape[:2]
            res = self.mesh.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if not res.multi_face_landmarks:
                continue
            lm = res.multi_face_landmarks[0].landmark
            out[i] = np.array([(q.x * w, q.y * h, q.z * w) for q in lm], np.float32)
        return out


def handle(runner: LandmarkRunner, job: dict) -> dict:
    """One batch: ``images`` -> (N, 478, 3) landmarks saved to ``output`` (NaN where no face)."""
    import numpy as np
    lm = runner.detect(job["images"])
    np.save(job["output"], lm)
    return {"output": job["output"], "found": int((~np.isnan(lm[:, 0, 0])).sum())}


def main() -> None:
    import worker_protocol as wp   # this file's folder is still sys.path[0]; isolate() drops it
    proto = wp.isolate(__file__)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-confidence", type=float, default=0.5)
    args = ap.parse_args()

    def missing(e: Exception):
        return True if isinstance(e, (ImportError, FileNotFoundError)) else None
    runner = wp.start(proto, lambda: LandmarkRunner(args.min_confidence),
                      lambda r: {"mediapipe": r.version, "models": model_paths()}, missing=missing)
    wp.serve(lambda job: handle(runner, job), sys.stdin, proto)


if __name__ == "__main__":
    main()
