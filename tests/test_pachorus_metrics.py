"""Metric functions against values computed by hand on tiny arrays."""
import numpy as np
import pytest

from pachorus import metrics as M
from chorushead.core.windows import JAW, POSE


def _pair():
    # 2 frames, 3 vertices. Offsets per vertex (frame 0): (3,4,0)->5, (0,0,1)->1, 0; frame 1: 0, (2,0,0)->2, (0,0,0)
    gt = np.zeros((2, 3, 3))
    pred = gt.copy()
    pred[0, 0] = [3, 4, 0]
    pred[0, 1] = [0, 0, 1]
    pred[1, 1] = [2, 0, 0]
    return pred, gt


def test_lve_both_conventions():
    pred, gt = _pair()
    lips = np.array([0, 1])
    # squared (CodeTalker): frame maxima 25 and 4 -> 14.5 ; L2 (SingingHead): 5 and 2 -> 3.5
    assert M.lve_squared(pred, gt, lips) == pytest.approx(14.5)
    assert M.lve_l2(pred, gt, lips) == pytest.approx(3.5)
    assert M.lve_l2(pred, gt, np.array([2])) == 0.0


def test_fve_max_and_mean():
    pred, gt = _pair()
    face = np.array([0, 1, 2])
    assert M.fve_max_l2(pred, gt, face) == pytest.approx((5 + 2) / 2)
    assert M.fve_mean_l2(pred, gt, face) == pytest.approx((5 + 1 + 0 + 0 + 2 + 0) / 6)


def test_fdd_hand_computed():
    template = np.zeros((2, 3))
    upper = np.array([0, 1])
    gt = np.zeros((3, 2, 3))
    gt[:, 0, 0] = [0, 1, 2]      # squared norms 0,1,4 -> std = sqrt(26/9 - ...) computed below
    pred = np.zeros((3, 2, 3))   # no motion: std 0
    std0 = np.std([0.0, 1.0, 4.0])
    assert M.fdd(pred, gt, template, upper) == pytest.approx((std0 + 0.0) / 2)
    assert M.fdd(gt, gt, template, upper) == 0.0
    assert M.fdd(gt, pred, template, upper) == pytest.approx(-std0 / 2)   # signed


def test_ppe_and_coeff_mse():
    gt = np.zeros((2, 56))
    pred = np.zeros((2, 56))
    pred[0, POSE] = [0.3, 0.4, 0.0]   # 0.5
    pred[1, POSE] = [0.0, 0.0, 0.1]   # 0.1
    assert M.ppe(pred[:, POSE], gt[:, POSE]) == pytest.approx(0.3)
    pred[:, :50] = 2.0
    pred[:, JAW] = 1.0
    e = M.coeff_mse(pred, gt)
    assert e["exp_mse"] == pytest.approx(4.0) and e["jaw_mse"] == pytest.approx(1.0)
    assert e["pose_mse"] == pytest.approx((0.09 + 0.16 + 0.01) / 6)
