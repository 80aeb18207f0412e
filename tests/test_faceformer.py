"""FaceFormer baseline: its masks, causality in generation, teacher forcing = generation on GT, and the
released code's training and network (autoregressive training on its own predictions, style on every
input token, one post-norm layer, dropout 0.1), with older checkpoints loading as they were trained."""
from __future__ import annotations

import math

import pytest
import torch

from pachorus.model.faceformer import alibi_slopes, alignment_mask, biased_causal_mask
from pachorus.model.pachorus import ModelConfig, build_model

SR, FPS, T = 16000, 30, 24


def _model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    m = build_model(ModelConfig(variant="faceformer", d_model=32, n_layers=2, n_heads=4, dropout=0.0, period=6, **kw))
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
        s = ff.style(pose0)
        for t in range(T):   # step t sees the style token and the GT of frames < t (+ style), nothing else
            inputs = torch.cat([s, ff.motion_enc(motion[:, :t]) + s], dim=1)
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


def _motion(coeffs, pose0):
    """Coefficients -> what FaceFormer feeds back: [exp, jaw, pose - pose0]."""
    return torch.cat([coeffs[..., :53], coeffs[..., 53:] - pose0[:, None]], dim=-1)


def test_training_is_autoregressive_on_its_own_predictions():
    """Training mode (the trainer passes ``target``): the decoder's inputs are the model's own previous
    outputs, not the target; teacher forcing is the option."""
    model = _model(faceformer_dropout=0.0).train()     # no dropout: deterministic
    host, partner, bgm, pose0 = _inputs()
    gt = torch.randn(2, T, 56) * 0.2
    gt[:, :, 53:] += pose0[:, None]
    fed = []
    hook = model.animator.motion_enc.register_forward_hook(lambda mod, args, out: fed.append(args[0].detach()))
    out = model(host, partner, bgm, pose0, T, target=gt).coeffs
    hook.remove()
    fed = torch.cat(fed, dim=1)                                       # every motion fed back, in order
    assert fed.shape[1] == T - 1
    assert torch.allclose(fed, _motion(out, pose0)[:, :-1].detach(), atol=1e-5)   # its own predictions...
    assert not torch.allclose(fed, _motion(gt, pose0)[:, :-1], atol=1e-2)          # ...not the target
    with torch.no_grad():
        other = model(host, partner, bgm, pose0, T, target=torch.randn_like(gt)).coeffs
        gen = model.eval()(host, partner, bgm, pose0, T, z_mode="mean").coeffs
    assert torch.allclose(out, other, atol=1e-6)      # the target is no input
    assert torch.allclose(out, gen, atol=1e-5)        # training computes what generation computes
    # The option: teacher forcing on the target.
    tf = _model(faceformer_dropout=0.0, faceformer_teacher_forcing=True).train()
    with torch.no_grad():
        a = tf(host, partner, bgm, pose0, T, target=gt).coeffs
        b = tf(host, partner, bgm, pose0, T, target=gt + 0.3).coeffs
    assert not torch.allclose(a[:, 1:], b[:, 1:], atol=1e-3)


def test_autoregressive_gradient_flows_through_the_fed_back_predictions():
    """The last frame's expression and jaw see only its own audio frame (alignment mask), so a gradient
    from them to the first audio frame can only come through the chain of fed-back predictions (its
    pose is anchored at frame 0, hence left out)."""
    ff = _model(faceformer_dropout=0.0).train().animator
    feat = torch.randn(2, T, ff.audio_proj.in_features, requires_grad=True)   # T audio frames: to_frames = identity
    pose0 = torch.randn(2, 3) * 0.1
    ff.generate(feat, pose0, T)[:, -1, :53].sum().backward()
    assert feat.grad[:, 0].abs().sum() > 0
    feat.grad = None
    ff.teacher_forced(feat, pose0, torch.randn(2, T, 56))[:, -1, :53].sum().backward()
    assert torch.count_nonzero(feat.grad[:, :-1]) == 0                       # teacher forcing: no chain


@pytest.mark.parametrize("post_norm", [True, False])
def test_one_row_step_equals_the_full_pass(post_norm):
    """Each fed-back frame is computed as one row; it equals that row of a full pass over the prefix
    (what the released code computes and keeps), and generation = the full-prefix loop."""
    ff = _model(faceformer_post_norm=post_norm).animator
    torch.nn.init.normal_(ff.out.weight, std=0.05)    # a feedback loop that stays bounded over T frames
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(2, T, ff.audio_proj.in_features, generator=g)
    pose0 = torch.randn(2, 3, generator=g) * 0.1
    with torch.no_grad():
        mem = ff.memory(feat, T)
        inputs = torch.randn(2, 9, 32, generator=g)
        assert torch.allclose(ff._last_row(inputs, mem[:, 8:9]), ff._decode(inputs, mem)[:, -1:], atol=1e-5)
        gen = ff.generate(feat, pose0, T)
        s, x = ff.style(pose0), ff.style(pose0)
        for t in range(T):
            full = ff._finish(ff._decode(x, mem))
            x = torch.cat([x, ff.embed_motion(full[:, -1:], s)], dim=1)
    assert torch.allclose(gen, full, atol=1e-5)


def _decoder_inputs(ff, feat, pose0, motion):
    got = []
    hook = ff.decoder.register_forward_pre_hook(lambda mod, args: got.append(args[0].detach()))
    with torch.no_grad():
        ff.teacher_forced(feat, pose0, motion)
    hook.remove()
    return got[0]


def test_style_is_on_every_input_token():
    ff = _model().animator
    feat, motion = torch.randn(2, T, ff.audio_proj.in_features), torch.randn(2, T, 56) * 0.2
    p0, p1 = torch.randn(2, 3), torch.randn(2, 3)
    d = _decoder_inputs(ff, feat, p0, motion) - _decoder_inputs(ff, feat, p1, motion)   # (B, T, d)
    with torch.no_grad():
        ds = ff.start(p0) - ff.start(p1)
    assert (d.abs().amax(-1) > 1e-3).all()                            # every frame's input changed...
    assert torch.allclose(d, ds[:, None].expand_as(d), atol=1e-6)     # ...by the style difference


def test_one_post_norm_layer_with_its_own_dropout_whatever_the_other_variants_use():
    m = build_model(ModelConfig(variant="faceformer", d_model=32, n_layers=3, n_heads=4, dropout=0.0))
    ff = m.animator
    assert len(ff.decoder.layers) == 1
    layer = ff.decoder.layers[0]
    assert layer.norm_first is False
    assert layer.dropout.p == layer.dropout1.p == layer.self_attn.dropout == ff.in_drop.p == 0.1
    # Post-norm: every decoder output row is layer-normalised (norm3 at its initial scale 1, shift 0).
    got = []
    hook = ff.decoder.register_forward_hook(lambda mod, args, out: got.append(out.detach()))
    with torch.no_grad():
        ff.eval().teacher_forced(torch.randn(2, T, ff.audio_proj.in_features), torch.randn(2, 3),
                                 torch.randn(2, T, 56))
    hook.remove()
    h = got[0]
    assert torch.allclose(h.mean(-1), torch.zeros(h.shape[:2]), atol=1e-5)
    assert torch.allclose(h.var(-1, unbiased=False), torch.ones(h.shape[:2]), atol=1e-3)
    # The other variants keep n_layers, pre-norm and the shared dropout.
    mono = build_model(ModelConfig(variant="mono", d_model=32, n_layers=3, n_heads=4, dropout=0.0)).animator
    assert len(mono.decoder.layers) == 3
    assert all(lay.norm_first and lay.dropout.p == 0.0 for lay in mono.decoder.layers)


def test_old_checkpoint_configs_load_with_the_old_behaviour():
    """A config saved before these settings existed: teacher-forced, style on the start token only,
    pre-norm, n_layers layers, the shared dropout, no PPE dropout."""
    old = ModelConfig.from_dict({"variant": "faceformer", "d_model": 32, "n_layers": 2, "n_heads": 4,
                                 "dropout": 0.0, "period": 6})
    assert (old.faceformer_teacher_forcing, old.faceformer_layers, old.faceformer_dropout,
            old.faceformer_post_norm, old.faceformer_style_every_token) == (True, None, None, False, False)
    torch.manual_seed(0)
    m = build_model(old.to_dict())
    ff = m.animator
    assert len(ff.decoder.layers) == 2 and all(lay.norm_first for lay in ff.decoder.layers)
    assert ff.decoder.layers[0].dropout.p == 0.0 and isinstance(ff.in_drop, torch.nn.Identity)
    assert ModelConfig.from_dict(old.to_dict()) == old                   # and stays old once re-saved
    assert ModelConfig.from_dict(ModelConfig(variant="faceformer").to_dict()) == ModelConfig(variant="faceformer")
    # Style on the start token only: changing pose0 changes frame 0's input alone.
    feat, motion = torch.randn(2, T, ff.audio_proj.in_features), torch.randn(2, T, 56) * 0.2
    d = _decoder_inputs(ff, feat, torch.randn(2, 3), motion) - _decoder_inputs(ff, feat, torch.randn(2, 3), motion)
    assert (d[:, 0].abs().amax(-1) > 1e-3).all() and torch.count_nonzero(d[:, 1:]) == 0
    # Teacher-forced in training: the target is the input.
    torch.nn.init.normal_(ff.out.weight, std=0.3)
    host, partner, bgm, pose0 = _inputs()
    gt = torch.randn(2, T, 56) * 0.2
    m.train()
    with torch.no_grad():
        a = m(host, partner, bgm, pose0, T, target=gt).coeffs
        b = m(host, partner, bgm, pose0, T, target=gt + 0.3).coeffs
        ref = m.eval()(host, partner, bgm, pose0, T, target=gt).coeffs
    assert torch.allclose(a, ref, atol=1e-6) and not torch.allclose(a[:, 1:], b[:, 1:], atol=1e-3)


def test_autoregressive_training_stays_finite():
    from pachorus.losses import LossConfig, PaChorusLoss
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="faceformer", d_model=16, n_heads=2)).train()   # dropout 0.1, AR
    host, partner, bgm, pose0 = _inputs(b=4)
    gt = torch.randn(4, T, 56) * 0.2
    gt[:, :, 53:] += pose0[:, None]
    loss_fn, opt = PaChorusLoss(LossConfig()), torch.optim.Adam(model.parameters(), 1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(8):
        loss = loss_fn(model(host, partner, bgm, pose0, T, target=gt), gt)["loss"]
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    with torch.no_grad():
        assert torch.isfinite(model.eval()(host, partner, bgm, pose0, T, z_mode="mean").coeffs).all()


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
