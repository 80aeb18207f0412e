"""The stand-in EMOCA model: codes are a fixed function of image content.

expcode[k] = mean of horizontal band k (of 50) of the red channel, posecode = per-channel means
(global 3) and the means of the left / middle / right thirds of green (jaw 3), shapecode[k] =
blue channel band means repeated, cam = (mean, std, max). A test that encodes (strip, frame) in
a crop's colours can then tell which image produced which row.
"""
import numpy as np
import torch


def codes_for_images(img):
    """img: (B, 3, 224, 224) float tensor or array in [0, 1] -> dict of (B, k) float32 tensors."""
    x = torch.as_tensor(np.asarray(img, dtype=np.float32) if not torch.is_tensor(img) else img).float()
    b, c, h, w = x.shape
    bands_r = x[:, 0, : (h // 50) * 50].reshape(b, 50, -1).mean(-1)
    bands_b = x[:, 2, : (h // 50) * 50].reshape(b, 50, -1).mean(-1)
    glob = x.mean(dim=(2, 3))
    g = x[:, 1]
    jaw = torch.stack([g[:, :, : w // 3].mean((1, 2)), g[:, :, w // 3: 2 * w // 3].mean((1, 2)),
                       g[:, :, 2 * w // 3:].mean((1, 2))], 1)
    return {
        "expcode": bands_r,
        "posecode": torch.cat([glob, jaw], 1),
        "shapecode": torch.cat([bands_b, bands_b], 1),
        "cam": torch.stack([x.mean((1, 2, 3)), x.std(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))], 1),
        "texcode": torch.zeros(b, 50), "lightcode": torch.zeros(b, 9, 3), "detailcode": torch.zeros(b, 128),
    }


class StandInEmoca(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))   # so .to(device) / .eval() behave like a model

    def encode(self, batch, training=False):
        import os
        img = batch["image"]
        assert img.ndim == 4 and tuple(img.shape[1:]) == (3, 224, 224), img.shape
        assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0, "EMOCA expects images in [0, 1]"
        assert not training
        log = os.environ.get("STANDIN_EMOCA_LOG")
        if log:
            with open(log, "a") as f:
                f.write("%d\n" % img.shape[0])
        return {k: v.to(img.device) for k, v in codes_for_images(img.cpu()).items()}
