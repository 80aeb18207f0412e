"""FaceFormer baseline: its masks, causality in generation, and teacher forcing = generation on GT."""
from __future__ import annotations

import math

import pytest
import torch

from pachorus.model.faceformer import alibi_slopes, alignment_mask, biased_causal_mask
from pachorus.model.pachorus import ModelConfig, build_model

SR, FPS, T = 16000, 30, 24


def _model(seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(ModelConfig(variant="faceformer", d_model=32, n_layers=2, n_heads=4, dropout=0.0, period=6))
    # The output layer starts at zero (predict "no motion"); randomise it so outputs depend on inputs.
    torch.nn.init.normal_(m.animator.out.weight, std=0.3)
    torch.nn.init.normal_(m.animator.out.bias, std=0.3)
    return m.eval()


def _inputs(b: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    n = T * SR // FPS
    host = torch.randn(b, n, generator=g) * 0.1
    pose0 = torch.randn(b, 3, generator=g) * 0.1
    return host, torch.zeros_like(host), torch.zeros_like(host), pose0


def test_biased_mask_shape_and_values():
    m = biased_causal_mask(n_heads=4, n_frames=10, period=3)
    assert m.shape == (4, 10, 10)
    above = torch.triu(torch.ones(10, 10, dtype=torch.bool), diagonal=1)
    assert torch.isinf(m[:, above]).all() and (m[:, above] < 0).all()
    assert torch.isfinite(m[:, ~above]).all()
    slopes = alibi_slopes(4)
    assert torch.allclose(slopes, torch.tensor([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]))
    for h in range(4):
        for i in range(10):
            for j in range(i + 1):
                assert math.isclose(float(m[h, i, j]), -float(slopes[h]) * ((i - j) // 3), abs_tol=1e-7)
    # Constant within a period, one slope step per period: row 9 = 0,0,0 | -s,-s,-s | -2s,...
    assert torch.equal(m[0, 9, 7:10], torch.zeros(3))
    assert torch.allclose(m[0, 9, 4:7], torch.full((3,), -0.25))
    assert len(alibi_slopes(6)) == 6 and (alibi_slopes(6) > 0).all()


def test_alignment_mask_is_diagonal():
    a = alignment_mask(5)
    assert a.dtype == torch.bool and torch.equal(~a, torch.eye(5, dtype=torch.bool))


def test_generation_is_causal_in_the_audio():
    model = _model()
    host, partner, bgm, pose0 = _inputs()
    with torch.no_grad():
        ref = model(host, partner, bgm, pose0, T, z_mode="mean").coeffs
        changed = host.clone()
        cut = 16 * SR // FPS          # everything from frame 16 on is new audio
        changed[:, cut:] = torch.randn(changed[:, cut:].shape) * 0.3
        out = model(changed, partner, bgm, pose0, T, z_mode="mean").coeffs
    # The log-mel STFT window and the two size-3 convolutions look ~60 ms (2 frames) ahead.
    assert torch.allclose(out[:, :13], ref[:, :13], atol=1e-6)
    assert not torch.allclose(out[:, 18:], ref[:, 18:], atol=1e-4)   # the future did change
    assert torch.allclose(out[:, 0, 53:], pose0, atol=1e-6)          # frame 0 = the given pose
    # Partner and BGM are not FaceFormer inputs.
    with torch.no_grad():
        other = model(host, torch.randn_like(partner), torch.randn_like(bgm), pose0, T, z_mode="mean").coeffs
    assert torch.allclose(other, ref)


def test_teacher_forcing_equals_stepwise_generation_on_ground_truth():
    model = _model()
    host, partner, bgm, pose0 = _inputs()
    gt = torch.randn(2, T, 56) * 0.2
    gt[:, :, 53:] += pose0[:, None]
    ff = model.animator
    with torch.no_grad():
        tf = model(host, partner, bgm, pose0, T, target=gt).coeffs      # one parallel pass
        feat = model.audio(host)
        mem = ff.memory(feat, T)
        motion = torch.cat([gt[..., :53], gt[..., 53:] - pose0[:, None]], dim=-1)
        for t in range(T):   # step t sees the start token and the GT of frames < t, nothing else
            inputs = torch.cat([ff.start(pose0)[:, None], ff.motion_enc(motion[:, :t])], dim=1)
            step = ff._finish(ff._decode(inputs, mem))[:, -1]
            assert torch.allclose(tf[:, t, :53], step[:, :53], atol=1e-5), t
            assert torch.allclose(tf[:, t, 53:], pose0 + step[:, 53:], atol=1e-5), t


def test_generation_feeds_back_its_own_outputs():
    """Generation = teacher forcing on the generated sequence (it is its own ground truth)."""
    model = _model()
    host, partner, bgm, pose0 = _inputs()
    with torch.no_grad():
        gen = model(host, partner, bgm, pose0, T, z_mode="mean").coeffs
        tf = model(host, partner, bgm, pose0, T, target=gen).coeffs
    assert torch.allclose(gen, tf, atol=1e-5)


@pytest.mark.slow
def test_trains_through_the_trainer_and_loads(tmp_path):
    from pachorus.model.pachorus import load_model
    from pachorus.synth import SynthConfig, write_synth_lmdb
    from pachorus.train import TrainConfig, train
    data = tmp_path / "d.lmdb"
    write_synth_lmdb(data, SynthConfig(videos=3, seconds=3.0, window=30, stride=15, seed=0))
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=2, lr=1e-3, device="cpu",
                      max_steps=3, model=ModelConfig(variant="faceformer", d_model=16, n_layers=1, n_heads=2))
    summary = train(cfg, progress=False)
    assert summary["step"] == 3
    model, ck = load_model(tmp_path / "run" / "model.pt")
    assert model.cfg.variant == "faceformer" and ck["model_config"]["period"] == 30
