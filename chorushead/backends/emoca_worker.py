"""EMOCA worker: runs INSIDE EMOCA's own environment (Python 3.8, pytorch3d 0.6.2, the `gdl` and
`gdl_apps` packages from radekd91/emoca). Written for Python 3.8: no project imports, no 3.9+ syntax.

The fit stage starts it once per runner worker and sends one JSON line per video:

    -> {"strips": ["/abs/strip0", "/abs/strip1"], "segments": [[0, 180], [300, 620]],
        "output_dir": "/abs/dir", "batch_size": 32}
    <- {"ok": true, "outputs": ["/abs/dir/seg000.npz", ...], "images": 1000, "seconds": 12.3}
    <- {"ok": false, "error": "..."}

Crops are ``<strip>/<frame:06d>.jpg``, already in EMOCA's convention (crop stage), so no detector
runs here: EMOCA's own test dataset crops only ONE face per image, which is wrong for duets.
Each ``seg{i:03d}.npz`` holds, for S strips and T = end - start frames:
    coeffs (S, T, 56) float32 = [expcode 50, jaw 3 (posecode[3:6]), global pose 3 (posecode[0:3])]
    shape (S, T, 100), cam (S, T, 3), frames (2,) = [start, end)
"""
from __future__ import print_function

import argparse
import os
import sys

IMAGE_SIZE = 224


class EmocaRunner(object):
    def __init__(self, models_dir, model_name="EMOCA_v2_lr_mse_20", stage="detail", device="auto"):
        from gdl_apps.EMOCA.utils.load import load_model   # first: a missing gdl fails fast
        import torch
        if device == "auto":   # chorushead.core.device's rule; this interpreter cannot import ours
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.torch = torch
        loaded = load_model(models_dir, model_name, stage)
        # the real load_model returns (model, config)
        self.model = loaded[0] if isinstance(loaded, tuple) else loaded
        self.model.to(device)
        self.model.eval()

    def load_image(self, path):
        import numpy as np
        from PIL import Image
        img = Image.open(path).convert("RGB")
        if img.size != (IMAGE_SIZE, IMAGE_SIZE):  # crops should already be 224; never fail on it
            img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0   # 3xHxW in [0, 1]

    def encode(self, images):
        """(B, 3, 224, 224) float in [0, 1] -> dict of (B, k) numpy arrays."""
        torch = self.torch
        batch = {"image": torch.from_numpy(images).to(self.device)}
        with torch.no_grad():
            vals = self.model.encode(batch, training=False)
        return {k: vals[k].detach().float().cpu().numpy() for k in ("expcode", "posecode", "shapecode", "cam")}

    def fit(self, strips, segments, output_dir, batch_size=32):
        """Runs every (strip, frame) image through EMOCA in batches that cross strip and segment
        boundaries (so a GPU batch is always full), then scatters results back by index."""
        import numpy as np
        jobs = []   # (segment index, strip index, frame offset, path)
        for i, (start, end) in enumerate(segments):
            for s, folder in enumerate(strips):
                for t in range(start, end):
                    jobs.append((i, s, t - start, os.path.join(folder, "%06d.jpg" % t)))
        missing = [p for (_, _, _, p) in jobs if not os.path.exists(p)]
        if missing:
            raise IOError("%d crop(s) missing, e.g. %s" % (len(missing), missing[0]))
        results = [{"coeffs": np.zeros((len(strips), end - start, 56), np.float32),
                    "shape": np.zeros((len(strips), end - start, 100), np.float32),
                    "cam": np.zeros((len(strips), end - start, 3), np.float32)}
                   for (start, end) in segments]
        for b in range(0, len(jobs), batch_size):
            chunk = jobs[b:b + batch_size]
            vals = self.encode(np.stack([self.load_image(p) for (_, _, _, p) in chunk]))
            pose = vals["posecode"]
            coeffs = np.concatenate([vals["expcode"], pose[:, 3:6], pose[:, 0:3]], axis=1)
            for j, (i, s, t, _) in enumerate(chunk):
                results[i]["coeffs"][s, t] = coeffs[j]
                results[i]["shape"][s, t] = vals["shapecode"][j]
                results[i]["cam"][s, t] = vals["cam"][j]
        outputs = []
        for i, ((start, end), res) in enumerate(zip(segments, results)):
            path = os.path.join(output_dir, "seg%03d.npz" % i)
            np.savez(path, frames=np.array([start, end], np.int64), **res)
            outputs.append(path)
        return outputs, len(jobs)


def handle(runner, job):
    """One video: strip folders + segments -> seg{i:03d}.npz files in ``output_dir``."""
    outputs, n = runner.fit(job["strips"], [tuple(s) for s in job["segments"]], job["output_dir"],
                            int(job.get("batch_size", 32)))
    return {"outputs": outputs, "images": n}


def main():
    import worker_protocol as wp   # this file's folder is still sys.path[0]; isolate() drops it
    proto = wp.isolate(__file__)
    ap = argparse.ArgumentParser(description="EMOCA worker (JSON lines on stdin/stdout)")
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--model-name", default="EMOCA_v2_lr_mse_20")
    ap.add_argument("--stage", default="detail")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    runner = wp.start(proto, lambda: EmocaRunner(args.models_dir, args.model_name, args.stage, args.device),
                      lambda r: {"device": r.device},
                      missing=lambda e: "gdl" if isinstance(e, ImportError) else None)
    wp.serve(lambda job: handle(runner, job), sys.stdin, proto)


if __name__ == "__main__":
    main()
