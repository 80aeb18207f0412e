"""crop stage on a generated duet video with real faces at known positions (real MTCNN, CPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from synth_video import box_iou, make_duet_frames  # noqa: E402

pytest.importorskip("facenet_pytorch")

from chorushead.core.manifest import Record  # noqa: E402
from chorushead.core.media import encode_video  # noqa: E402
from chorushead.core.errors import BadInput
from chorushead.stages.base import Context, Item  # noqa: E402
from chorushead.stages.crop import STAGE, Params, emoca_crop_box, warp_crop  # noqa: E402

N_FRAMES, START, END = 60, 5, 55          # source frames; vad keeps [5, 55)
ABSENT = (20, 35)                         # source frames without strip 1's face
SIZE = (256, 512)                         # (H, W): two 256×256 strips


def make_ctx(tmp_path: Path, video: Path, start: int, end: int) -> Context:
    out = tmp_path / "out"
    item = Item(id="duet", source=str(video))
    final = item.dir(out) / "crop"
    tmp = item.dir(out) / "crop.tmp"
    tmp.mkdir(parents=True)
    rec = lambda stage, outputs: Record(item=item.id, stage=stage, status="done", fingerprint="x", outputs=outputs)
    upstream = {"ingest": rec("ingest", {"source": str(video), "width": SIZE[1], "height": SIZE[0], "fps": 30,
                                         "n_frames": N_FRAMES, "duration": N_FRAMES / 30, "source_fps": 30.0}),
                "vad": rec("vad", {"start_frame": start, "end_frame": end, "start_s": start / 30, "end_s": end / 30,
                                   "sr": 16000, "vocals_16k": "v.wav", "bgm_16k": "b.wav", "singers_16k": []})}
    return Context(item=item, out=out, tmp=tmp, final=final, upstream=upstream, fps=30)


@pytest.fixture(scope="module")
def duet(tmp_path_factory):
    frames, boxes = make_duet_frames(N_FRAMES, size=SIZE, absent=ABSENT, seed=3)
    video = tmp_path_factory.mktemp("video") / "duet.mp4"
    encode_video(video, frames, fps=30)
    return video, boxes


@pytest.fixture(scope="module")
def detector():
    params = Params(min_face=48)                     # 256×256 strips: faces of 65-90 px
    return params, STAGE.setup(params)


def test_crop_stage_on_real_faces(tmp_path, duet, detector):
    video, true_boxes = duet
    params, model = detector
    ctx = make_ctx(tmp_path, video, START, END)
    res = STAGE.process(ctx, params, model)
    T = END - START
    truth = true_boxes[:, START:END]                        # crop index t = source frame START + t
    has_face = ~np.isnan(truth[..., 0])
    assert has_face[1].sum() == T - (ABSENT[1] - ABSENT[0])

    # One JPEG per strip and frame with a face, named by the frame index in the trimmed video.
    for k in range(2):
        names = sorted(p.name for p in (ctx.tmp / f"strip{k}").iterdir())
        assert names == [f"{t:06d}.jpg" for t in range(T) if has_face[k, t]], f"strip {k}"
    img = cv2.imread(str(ctx.tmp / "strip0" / "000000.jpg"))
    assert img.shape == (224, 224, 3)

    det = np.load(ctx.tmp / "detections.npz")
    assert det["boxes"].shape == (2, T, 4) and det["crop_boxes"].shape == (2, T, 4)
    assert det["probs"].shape == (2, T) and det["n_faces"].shape == (2, T)
    assert det["landmarks"].shape == (2, T, 5, 2)
    assert int(det["fps"]) == 30 and int(det["start_frame"]) == START
    assert list(det["strip_x0"]) == [0, 256]

    found = det["probs"] > 0
    assert np.array_equal(found, has_face)                  # nothing missed, nothing invented
    assert (det["probs"][found] >= params.prob_threshold).all()
    assert np.isnan(det["boxes"][~found]).all()
    iou = box_iou(det["boxes"], truth)[has_face]
    assert iou.mean() >= 0.8 and iou.min() >= 0.6, (iou.mean(), iou.min())
    assert (det["n_faces"][found] == 1).all()
    # Keyframes skip most frames, but strip 1's appearance/disappearance forced re-detection there.
    assert det["detected"].mean() < 0.7
    assert det["detected"][1, ABSENT[0] - START - 1:ABSENT[0] - START + 1].all()

    assert res.outputs["detections"] == "detections.npz" and res.outputs["frames"] == T
    assert res.metrics["faces_per_strip"] == [T, int(has_face[1].sum())]
    STAGE.check(res)


def test_empty_range_is_bad_input(tmp_path, duet, detector):
    video, _ = duet
    params, model = detector
    with pytest.raises(BadInput):
        STAGE.process(make_ctx(tmp_path, video, 10, 10), params, model)
    with pytest.raises(BadInput, match="no frames"):                # past the end of the video
        STAGE.process(make_ctx(tmp_path / "b", video, 500, 520), params, model)


def test_emoca_crop_geometry():
    box = np.array([10.0, 20.0, 50.0, 60.0])                    # 40×40 face
    cb = emoca_crop_box(box)                                    # side 40 -> 50, centre (30, 44.8)
    np.testing.assert_allclose(cb, [5.0, 19.8, 55.0, 69.8])
    img = np.zeros((100, 100, 3), np.uint8)
    img[40:50, 25:35] = 255                                     # a white patch around (30, 45)
    crop = warp_crop(img, cb, 224)
    assert crop.shape == (224, 224, 3)
    assert crop[112, 112].min() > 200 and crop[5, 5].max() == 0
    edge = warp_crop(img, np.array([-50.0, -50.0, 50.0, 50.0]), 64)    # outside the image -> black
    assert edge[:20, :20].max() == 0


class _FakeDetector:
    """Reads the face from pixel (0, 0): channel 0 = present, channel 1 = box x1 (100×100 box)."""

    def __init__(self):
        self.calls: list[int] = []

    def detect(self, images):
        from chorushead.backends.mtcnn import Faces
        out = Faces.empty((len(images),))
        out.detected[:] = True
        for i, im in enumerate(images):
            if im[0, 0, 0]:
                x = float(im[0, 0, 1])
                out.boxes[i] = [x, 0, x + 100, 100]
                out.landmarks[i] = x
                out.probs[i], out.n_faces[i] = 0.99, 1
        self.calls.append(len(images))
        return out


@pytest.mark.parametrize("k,chunk", [(1, 5), (3, 7), (4, 4), (5, 32)])
def test_keyframe_schedule(k, chunk):
    """Interpolation only between agreeing keyframes, re-detection elsewhere, across chunk edges."""
    from chorushead.backends.mtcnn import track_strips
    T = 40
    frames = np.zeros((T, 1, 2, 3), np.uint8)                  # 2 strips of 1 pixel
    x0 = np.arange(T) + np.where(np.arange(T) >= 21, 120, 0)   # strip 0 moves, then jumps at t=21
    frames[:, 0, 0, 0], frames[:, 0, 0, 1] = 1, x0
    absent = (np.arange(T) >= 10) & (np.arange(T) < 17)         # strip 1 gone for t in [10, 17)
    frames[:, 0, 1, 0], frames[:, 0, 1, 1] = ~absent, 50
    det = _FakeDetector()
    out = list(track_strips((frames[i:i + chunk] for i in range(0, T, chunk)), det, strips=2, keyframe_every=k))
    assert [t for t, _, _ in out] == list(range(T))
    boxes = np.stack([f.boxes for _, _, f in out], axis=1)       # (2, T, 4)
    detected = np.stack([f.detected for _, _, f in out], axis=1)
    np.testing.assert_allclose(boxes[0, :, 0], x0, atol=1e-4)   # linear motion: interpolation is exact
    assert np.isnan(boxes[1, absent, 0]).all() and (boxes[1, ~absent, 0] == 50).all()
    # Expected: detector on keyframes, and between two keyframes that disagree (jump, face gone).
    keys = np.flatnonzero((np.arange(T) % k == 0) | (np.arange(T) == T - 1))
    expect = np.zeros((2, T), bool)
    expect[:, keys] = True
    for a, b in zip(keys[:-1], keys[1:]):
        expect[0, a + 1:b] = a < 21 <= b
        expect[1, a + 1:b] = absent[a] != absent[b]
    np.testing.assert_array_equal(detected, expect)
    if k > 1:
        assert detected.sum() < 2 * T                            # something was interpolated
    assert sum(det.calls) == detected.sum()


def test_synth_video_writer_with_audio(tmp_path):
    from chorushead.core.media import probe, write_wav
    from synth_video import write_duet_video
    write_wav(tmp_path / "a.wav", 0.1 * np.sin(np.arange(48000) / 10).astype(np.float32), 16000)
    boxes = write_duet_video(tmp_path / "v.mp4", 45, size=(128, 256), absent=(10, 20), audio=tmp_path / "a.wav")
    assert boxes.shape == (2, 45, 4) and np.isnan(boxes[1, 10:20]).all() and not np.isnan(boxes[0]).any()
    pr = probe(tmp_path / "v.mp4")
    assert (pr.width, pr.height) == (256, 128) and pr.has_audio and abs(pr.duration - 1.5) < 0.1
