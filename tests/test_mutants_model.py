"""pachorus.model (pachorus.py, audio.py, faceformer.py): exact values, masks and messages, written to
kill the mutants that survived ``scripts/mutation.sh model`` (see docs/mutation-survivors.md).
Tiny random-weight models only (d_model 8-16, one layer); no training loop, no transformers import
(a stand-in module replaces it)."""
from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch

from chorushead.core.windows import EXP, JAW, POSE
from pachorus.checkpoint import save_checkpoint
from pachorus.model import audio as A
from pachorus.model import faceformer as F
from pachorus.model import pachorus as P
from pachorus.model.pachorus import ModelConfig, build_model, load_model

T, N = 6, 3200  # 0.2 s of audio, 6 frames


def tiny(variant="full", **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(variant=variant, d_model=8, n_layers=1, n_heads=2, latent=3, dropout=0.0, **kw))


def _inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    host, partner, bgm = (torch.randn(b, N, generator=g) * 0.1 for _ in range(3))
    pose0 = torch.randn(b, 3, generator=g) * 0.1
    target = torch.randn(b, T, 56, generator=g) * 0.1
    return host, partner, bgm, pose0, target


def _randomise(m, std=0.5):
    torch.manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear) and mod.weight.abs().sum() == 0:
            torch.nn.init.normal_(mod.weight, std=std)
            torch.nn.init.normal_(mod.bias, std=std)


# ---------------------------------------------------------------- ModelConfig

def test_config_refusals_say_why_and_boundaries_pass():
    with pytest.raises(ValueError) as e:
        ModelConfig(variant="nope")
    assert str(e.value) == f"variant must be one of {P.VARIANTS}, got 'nope'"
    with pytest.raises(ValueError) as e:
        ModelConfig(attn_band=-1)
    assert str(e.value) == "attn_band must be >= 0 (0 = no band), got -1"
    with pytest.raises(ValueError) as e:
        ModelConfig(faceformer_layers=0)
    assert str(e.value) == "faceformer_layers must be >= 1 (or None = n_layers), got 0"
    for bad in (1.0, -0.01):
        with pytest.raises(ValueError) as e:
            ModelConfig(faceformer_dropout=bad)
        assert str(e.value) == f"faceformer_dropout must be in [0, 1) (or None = dropout), got {bad}"
    # exactly at the limits is allowed
    ModelConfig(attn_band=0)
    ModelConfig(faceformer_layers=1)
    ModelConfig(faceformer_layers=None)
    ModelConfig(faceformer_dropout=0.0)
    ModelConfig(faceformer_dropout=0.99)
    ModelConfig(faceformer_dropout=None)


def test_config_defaults():
    c = ModelConfig()
    assert (c.variant, c.audio_encoder, c.d_model, c.n_layers, c.n_heads, c.ff_mult, c.latent, c.dropout, c.period,
            c.attn_band, c.memory_pe, c.prior_expression) == ("full", "logmel", 64, 2, 4, 2, 16, 0.1, 30, 3, True, True)
    assert (c.faceformer_teacher_forcing, c.faceformer_layers, c.faceformer_dropout, c.faceformer_post_norm,
            c.faceformer_style_every_token) == (False, 1, 0.1, True, True)


def test_from_dict_fills_legacy_values_and_renames_old_mono():
    old = ModelConfig.from_dict({"variant": "full", "d_model": 8, "unknown": 1})
    assert old.d_model == 8
    for k, v in ModelConfig.LEGACY.items():
        assert getattr(old, k) == v, k
    assert ModelConfig.LEGACY == {"attn_band": 0, "memory_pe": False, "prior_expression": False,
                                  "faceformer_teacher_forcing": True, "faceformer_layers": None,
                                  "faceformer_dropout": None, "faceformer_post_norm": False,
                                  "faceformer_style_every_token": False}
    assert ModelConfig.from_dict({"variant": "mono"}).variant == "mono_causal"
    assert ModelConfig.from_dict({"variant": "mono", "attn_band": 3}).variant == "mono"
    assert ModelConfig.from_dict({"variant": "no_prior"}).variant == "no_prior"
    assert ModelConfig.from_dict({}).variant == "full"
    new = ModelConfig(variant="no_bgm", d_model=8, attn_band=2)
    assert ModelConfig.from_dict(new.to_dict()) == new
    assert new.to_dict()["attn_band"] == 2


# ---------------------------------------------------------------- small functions

def test_anchor_subtracts_frame_zero():
    x = torch.tensor([[[1.0, 2.0], [4.0, 8.0], [0.0, -1.0]]])
    torch.testing.assert_close(P._anchor(x), torch.tensor([[[0.0, 0.0], [3.0, 6.0], [-1.0, -3.0]]]))


def test_encoder_layer_settings():
    enc = P._encoder(ModelConfig(d_model=8, n_heads=2, n_layers=3, ff_mult=3, dropout=0.25))
    assert len(enc.layers) == 3
    layer = enc.layers[0]
    assert layer.norm_first is True
    assert layer.self_attn.batch_first is True
    assert layer.self_attn.num_heads == 2
    assert layer.linear1.out_features == 24
    assert layer.dropout.p == 0.25
    assert enc.use_nested_tensor is False


def test_host_animator_masks_by_hand():
    cfg = ModelConfig(d_model=8, n_heads=2, n_layers=1, attn_band=1)
    band = P.HostAnimator(cfg, 8)
    tgt, mem = band.masks(4, "cpu")
    assert mem is None
    assert tgt.tolist() == [[False, False, True, True], [False, False, False, True],
                            [True, False, False, False], [True, True, False, False]]
    full = P.HostAnimator(ModelConfig(d_model=8, n_heads=2, n_layers=1, attn_band=0), 8)
    assert full.masks(3, "cpu") == (None, None)
    causal = P.HostAnimator(cfg, 8, causal=True)
    tgt, mem = causal.masks(3, "cpu")
    assert tgt.tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    assert mem.tolist() == [[False, True, True], [True, False, True], [True, True, False]]


def test_host_animator_layers_and_zero_output():
    cfg = ModelConfig(d_model=8, n_heads=2, n_layers=2, ff_mult=3, dropout=0.0, attn_band=2, memory_pe=False)
    a = P.HostAnimator(cfg, 5)
    assert (a.band, a.memory_pe, a.causal) == (2, False, False)
    assert a.proj.in_features == 5 and a.proj.out_features == 8
    assert len(a.decoder.layers) == 2
    layer = a.decoder.layers[0]
    assert layer.norm_first is True and layer.linear1.out_features == 24 and layer.self_attn.batch_first
    assert a.out.out_features == 56
    assert a.out.weight.abs().sum() == 0 and a.out.bias.abs().sum() == 0
    feat = torch.randn(1, 7, 5)
    assert a(feat, torch.zeros(1, 3), 4).abs().sum() == 0


def test_host_animator_inputs_memory_pe():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=8, n_heads=2, n_layers=1, dropout=0.0)
    a = P.HostAnimator(cfg, 5)
    feat, pose0 = torch.randn(2, 7, 5), torch.randn(2, 3)
    mem = A.to_frames(a.proj(feat), 4)
    q, m = a.inputs(feat, pose0, 4)
    torch.testing.assert_close(q, mem + a.pe.pe[:4] + a.pose0(pose0)[:, None])
    torch.testing.assert_close(m, mem + a.pe.pe[:4])
    a.memory_pe = False
    torch.testing.assert_close(a.inputs(feat, pose0, 4)[1], mem)


def test_self_attention_weights_respect_the_band_and_pre_norm():
    torch.manual_seed(0)
    a = P.HostAnimator(ModelConfig(d_model=8, n_heads=2, n_layers=1, dropout=0.0, attn_band=1), 5).eval()
    feat, pose0 = torch.randn(1, 7, 5), torch.randn(1, 3)
    w = a.self_attention(feat, pose0, 5)
    assert w.shape == (1, 5, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 5))
    assert (w[0, 0, 2:] == 0).all() and w[0, 0, 1] > 0
    q, _ = a.inputs(feat, pose0, 5)
    layer = a.decoder.layers[0]
    x = layer.norm1(q)
    _, ref = layer.self_attn(x, x, x, attn_mask=a.masks(5, "cpu")[0], need_weights=True, average_attn_weights=True)
    torch.testing.assert_close(w, ref)
    assert not w.requires_grad


def test_attention_diagnostic_by_hand():
    uniform = torch.full((1, 2, 2), 0.5)
    d = P.attention_diagnostic(uniform)
    assert d["frames"] == 2 and type(d["frames"]) is int
    assert d["entropy"] == pytest.approx(math.log(2))
    assert d["entropy_uniform"] == pytest.approx(math.log(2))
    assert d["own_frame_weight"] == pytest.approx(0.5)
    assert d["attended_distance"] == pytest.approx(0.5)
    one_hot = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    d = P.attention_diagnostic(one_hot)       # zeros are clamped to 1e-12: no nan from 0 · log 0
    assert d["entropy"] == pytest.approx(0.0, abs=1e-9)
    assert d["entropy_uniform"] == pytest.approx(math.log(3))
    assert d["own_frame_weight"] == pytest.approx(2 / 3)
    assert d["attended_distance"] == pytest.approx(1 / 3)
    d = P.attention_diagnostic(torch.tensor([[[0.25, 0.75], [1.0, 0.0]]], dtype=torch.float64))
    assert d["attended_distance"] == pytest.approx((0.75 + 1.0) / 2)
    assert d["own_frame_weight"] == pytest.approx((0.25 + 0.0) / 2)
    h0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert d["entropy"] == pytest.approx(h0 / 2, abs=1e-6)


# ---------------------------------------------------------------- MotionPrior

def test_motion_prior_encode_clamps_logvar_and_reads_the_two_tokens():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=8, n_heads=2, n_layers=1, latent=3, dropout=0.0)
    p = P.MotionPrior(cfg, 5, use_bgm=True).eval()
    assert p.dist_tokens.shape == (2, 8) and p.dist_tokens.abs().max() < 0.2
    assert p.latent == 3 and p.use_bgm is True
    assert p.out_exp is None and p.out.out_features == 3
    dpose = torch.randn(2, 4, 3)
    x = p.pe(p.pose_in(dpose))
    h = p.enc(torch.cat([p.dist_tokens.expand(2, -1, -1), x], dim=1))
    mu, logvar = p.encode(dpose)
    torch.testing.assert_close(mu, p.to_mu(h[:, 0]))
    torch.testing.assert_close(logvar, p.to_logvar(h[:, 1]).clamp(-10, 10))
    with torch.no_grad():
        p.to_logvar.bias.fill_(50.0)
    assert (p.encode(dpose)[1] == 10).all()
    with torch.no_grad():
        p.to_logvar.bias.fill_(-50.0)
    assert (p.encode(dpose)[1] == -10).all()


def test_motion_prior_decode_adds_bgm_and_anchors():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=8, n_heads=2, n_layers=1, latent=3, dropout=0.0)
    p = P.MotionPrior(cfg, 5, use_bgm=True, expression=True).eval()
    assert p.out_exp.out_features == 50
    assert p.out_exp.weight.abs().sum() == 0 and p.out.weight.abs().sum() == 0 and p.out.bias.abs().sum() == 0
    _randomise(p)
    z, pf, bf, pose0 = torch.randn(2, 3), torch.randn(2, 7, 5), torch.randn(2, 7, 5), torch.randn(2, 3)
    d, e = p.decode(z, pf, bf, pose0, 4)
    c = A.to_frames(p.partner_proj(pf), 4) + A.to_frames(p.bgm_proj(bf), 4)
    h = p.dec(p.pe(c) + p.pose0(pose0)[:, None] + p.z_proj(z)[:, None])
    torch.testing.assert_close(d, p.out(h) - p.out(h)[:, :1])
    torch.testing.assert_close(e, p.out_exp(h))
    assert (d[:, 0] == 0).all()
    nb = P.MotionPrior(cfg, 5, use_bgm=False)
    assert nb.bgm_proj is None


# ---------------------------------------------------------------- PaChorus

def test_branches_built_per_variant():
    assert isinstance(tiny("full").prior, P.MotionPrior)
    assert tiny("full").prior.use_bgm is True and tiny("no_bgm").prior.use_bgm is False
    assert tiny("no_kl").prior is not None
    assert tiny("full").prior.out_exp is not None
    assert tiny("full", prior_expression=False).prior.out_exp is None
    for v in ("no_prior", "mono", "mono_causal", "faceformer"):
        assert tiny(v).prior is None, v
    assert tiny("mono_causal").animator.causal is True
    assert tiny("mono").animator.causal is False and tiny("full").animator.causal is False
    assert tiny("full").audio.out_dim == 8


def test_faceformer_settings_reach_the_network():
    ff = tiny("faceformer").animator
    assert isinstance(ff, F.FaceFormer)
    assert len(ff.decoder.layers) == 1
    layer = ff.decoder.layers[0]
    assert layer.norm_first is False and layer.dropout.p == 0.1
    assert isinstance(ff.in_drop, torch.nn.Dropout) and ff.in_drop.p == 0.1
    assert ff.style_every_token is True and ff.period == 30 and ff.n_heads == 2
    assert layer.linear1.out_features == 16
    legacy = tiny("faceformer", faceformer_layers=None, faceformer_dropout=None, faceformer_post_norm=False,
                  faceformer_style_every_token=False, period=7).animator
    assert len(legacy.decoder.layers) == 1     # n_layers = 1 in tiny
    assert legacy.decoder.layers[0].norm_first is True
    assert legacy.decoder.layers[0].dropout.p == 0.0
    assert isinstance(legacy.in_drop, torch.nn.Identity)
    assert legacy.style_every_token is False and legacy.period == 7
    two = build_model(ModelConfig(variant="faceformer", d_model=8, n_layers=2, n_heads=2, faceformer_layers=None,
                                  dropout=0.2, faceformer_dropout=None)).animator
    assert len(two.decoder.layers) == 2 and two.decoder.layers[0].dropout.p == 0.2
    three = build_model(ModelConfig(variant="faceformer", d_model=8, n_layers=1, n_heads=2, faceformer_layers=3,
                                    faceformer_dropout=0.3)).animator
    assert len(three.decoder.layers) == 3 and three.decoder.layers[0].dropout.p == 0.3 and three.in_drop.p == 0.3


def _capture_decode(m):
    seen = {}
    orig = m.prior.decode

    def decode(z, p_feat, b_feat, pose0, n_frames):
        seen.update(z=z, p=p_feat, b=b_feat, pose0=pose0, n=n_frames)
        out = orig(z, p_feat, b_feat, pose0, n_frames)
        seen["out"] = out
        return out
    m.prior.decode = decode
    return seen


def test_latent_per_z_mode_and_the_streams_given_to_the_prior():
    m = tiny("full").eval()
    _randomise(m)
    host, partner, bgm, pose0, target = _inputs()
    seen = _capture_decode(m)
    with torch.no_grad():
        m(host, partner, bgm, pose0, T, z_mode="mean")
        assert torch.equal(seen["z"], torch.zeros(2, 3))
        torch.testing.assert_close(seen["p"], m.audio(partner))
        torch.testing.assert_close(seen["b"], m.audio(bgm))
        assert seen["n"] == T and torch.equal(seen["pose0"], pose0)
        m(host, partner, bgm, pose0, T, z_mode="sample", generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(seen["z"], torch.randn(2, 3, generator=torch.Generator().manual_seed(5)))
        out = m(host, partner, bgm, pose0, T, target=target, generator=torch.Generator().manual_seed(7))
        mu, logvar = m.prior.encode(target[..., POSE] - pose0[:, None])
        torch.testing.assert_close(out.mu, mu)
        torch.testing.assert_close(out.logvar, logvar)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(seen["z"], mu + torch.exp(0.5 * logvar) * eps)


def test_no_bgm_gives_the_partner_alone():
    m = tiny("no_bgm").eval()
    host, partner, bgm, pose0, _ = _inputs()
    seen = _capture_decode(m)
    with torch.no_grad():
        m(host, partner, bgm, pose0, T, z_mode="mean")
    assert seen["b"] is None
    torch.testing.assert_close(seen["p"], m.audio(partner))


def test_forward_refusals_say_why():
    m = tiny("full")
    host, partner, bgm, pose0, _ = _inputs()
    with pytest.raises(ValueError) as e:
        m(host, partner, bgm, pose0, T)
    assert str(e.value) == "z_mode='posterior' needs the target coefficients"
    with pytest.raises(ValueError) as e:
        m(host, partner, bgm, pose0, T, z_mode="median")
    assert str(e.value) == "unknown z_mode 'median'"


def test_output_is_the_sum_of_the_branches():
    m = tiny("full").eval()
    _randomise(m)
    host, partner, bgm, pose0, _ = _inputs()
    seen = _capture_decode(m)
    with torch.no_grad():
        out = m(host, partner, bgm, pose0, T, z_mode="mean")
        a = m.animator(m.audio(host), pose0, T)
    d_prior, e_prior = seen["out"]
    assert out.mu is None and out.logvar is None
    torch.testing.assert_close(out.coeffs[..., EXP], a[..., EXP] + e_prior)
    torch.testing.assert_close(out.coeffs[..., JAW], a[..., JAW])
    d_host = a[..., POSE] - a[:, :1, POSE]
    torch.testing.assert_close(out.coeffs[..., POSE], pose0[:, None] + d_prior + d_host)
    m2 = tiny("no_prior").eval()
    _randomise(m2)
    with torch.no_grad():
        out2 = m2(host, partner, bgm, pose0, T, z_mode="mean")
        a2 = m2.animator(m2.audio(host), pose0, T)
    torch.testing.assert_close(out2.coeffs[..., :53], a2[..., :53])
    torch.testing.assert_close(out2.coeffs[..., POSE], pose0[:, None] + a2[..., POSE] - a2[:, :1, POSE])


def test_faceformer_forward_paths():
    m = tiny("faceformer")
    _randomise(m, std=0.2)
    host, partner, bgm, pose0, target = _inputs()
    calls = []
    tf, gen = m.animator.teacher_forced, m.animator.generate
    m.animator.teacher_forced = lambda f, p, motion: calls.append(("tf", motion)) or tf(f, p, motion)
    m.animator.generate = lambda f, p, n: calls.append(("gen", n)) or gen(f, p, n)
    m.eval()
    with torch.no_grad():
        out = m(host, partner, bgm, pose0, T, target=target)
        assert calls[-1][0] == "tf"
        motion = calls[-1][1]
        torch.testing.assert_close(motion[..., :53], target[..., :53])
        torch.testing.assert_close(motion[..., POSE], target[..., POSE] - pose0[:, None])
        raw = tf(m.audio(host), pose0, motion)
        torch.testing.assert_close(out.coeffs[..., :53], raw[..., :53])
        torch.testing.assert_close(out.coeffs[..., POSE], pose0[:, None] + raw[..., POSE])
        assert out.mu is None
        m(host, partner, bgm, pose0, T)
        assert calls[-1] == ("gen", T)
    m.train()
    m(host, partner, bgm, pose0, T, target=target)
    assert calls[-1] == ("gen", T)                    # autoregressive training
    m.cfg.faceformer_teacher_forcing = True
    m(host, partner, bgm, pose0, T, target=target)
    assert calls[-1][0] == "tf"


def test_load_model_returns_an_eval_model_with_the_saved_weights(tmp_path):
    m = tiny("no_prior")
    _randomise(m)
    save_checkpoint({"model": m.state_dict(), "model_config": m.cfg.to_dict(), "step": 3}, tmp_path / "m.pt")
    loaded, ck = load_model(tmp_path / "m.pt")
    assert ck["step"] == 3
    assert loaded.training is False
    assert loaded.cfg == m.cfg
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert build_model(m.cfg.to_dict()).cfg == m.cfg


# ---------------------------------------------------------------- audio.py

def test_mel_filters_by_hand():
    # mel(f) = 2595 log10(1 + f/700): 1000 Hz is 1000 mel, and 2000 mel is 700 (10^(2000/2595) - 1) Hz
    top = 700 * (10 ** (2000 / 2595) - 1)
    fb = A._mel_filters(16000, 32, 1, fmin=0.0, fmax=top)     # 17 bins, 500 Hz apart; centre at 1000 Hz
    assert fb.shape == (1, 17) and fb.dtype == np.float32
    assert fb[0, 0] == 0.0
    assert fb[0, 1] == pytest.approx(0.5, abs=1e-4)
    assert fb[0, 2] == pytest.approx(1.0, abs=1e-4)
    assert fb[0, 3] == pytest.approx((top - 1500) / (top - 1000), abs=1e-4)
    assert (fb[0, 8:] == 0).all()
    # default fmin = 50 Hz, fmax = sr / 2: two filters meeting at the mel midpoint
    fb = A._mel_filters(1000, 8, 2)
    pts = [50, 700 * (10 ** ((2 * 2595 * math.log10(1 + 50 / 700) + 2595 * math.log10(1 + 500 / 700)) / 3 / 2595) - 1)]
    freqs = np.linspace(0, 500, 5)
    assert fb[0, 1] == pytest.approx((freqs[1] - pts[0]) / (pts[1] - pts[0]), abs=1e-5)
    assert fb[1, 4] == pytest.approx(0.0, abs=1e-6) and fb[0, 0] == 0.0


def test_logmel_encoder_shapes_and_buffers():
    enc = A.LogMelEncoder(out_dim=6)
    assert (enc.n_fft, enc.hop, enc.out_dim) == (512, 320, 6)
    assert enc.fb.shape == (40, 257)
    torch.testing.assert_close(enc.fb, torch.from_numpy(A._mel_filters(16000, 512, 40)))
    torch.testing.assert_close(enc.window, torch.hann_window(512))
    assert "fb" not in enc.state_dict() and "window" not in enc.state_dict()
    assert enc.norm.normalized_shape == (40,)
    out = enc(torch.zeros(2, 3200))
    assert out.shape == (2, 11, 6)                   # 3200 / 320 + 1 frames (centred STFT)
    assert torch.isfinite(out).all()                # log(0 + 1e-6), not log 0
    small = A.LogMelEncoder(out_dim=4, sr=8000, n_mels=10, n_fft=64, hop=16)
    assert small.fb.shape == (10, 33) and small(torch.randn(1, 160)).shape == (1, 11, 4)
    assert A.ENCODER_SR == 16000


def test_logmel_features_by_hand():
    torch.manual_seed(0)
    enc = A.LogMelEncoder(out_dim=4, sr=8000, n_mels=6, n_fft=32, hop=8)
    wave = torch.randn(1, 64, dtype=torch.float64)
    spec = torch.stft(wave.float(), 32, 8, window=torch.hann_window(32), center=True, return_complex=True).abs() ** 2
    logmel = torch.log(torch.einsum("mf,bft->btm", enc.fb, spec) + 1e-6)
    ref = enc.conv(enc.norm(logmel).transpose(1, 2)).transpose(1, 2)
    out = enc(wave)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    quiet = torch.zeros(1, 64)
    quiet[0, 10] = 1e-4      # power ~1e-8: the 1e-6 floor dominates, 2e-6 would not give the same features
    lm = torch.log(torch.einsum("mf,bft->btm", enc.fb, torch.stft(quiet, 32, 8, window=torch.hann_window(32),
                                                                   center=True, return_complex=True).abs() ** 2) + 1e-6)
    torch.testing.assert_close(enc(quiet), enc.conv(enc.norm(lm).transpose(1, 2)).transpose(1, 2), rtol=1e-4, atol=1e-5)


class _FakeW2V:
    loaded = []

    class config:
        hidden_size = 5

    def __init__(self):
        self.frozen = False

    @classmethod
    def from_pretrained(cls, name):
        if name == "missing":
            raise OSError("no such model")
        cls.loaded.append(name)
        return cls()

    def freeze_feature_encoder(self):
        self.frozen = True

    def __call__(self, wave):
        return types.SimpleNamespace(last_hidden_state=wave)


@pytest.fixture
def fake_transformers(monkeypatch):
    mod = types.ModuleType("transformers")
    mod.Wav2Vec2Model = _FakeW2V
    monkeypatch.setitem(sys.modules, "transformers", mod)
    _FakeW2V.loaded = []
    return mod


def test_wav2vec2_encoder_with_a_stand_in(fake_transformers):
    enc = A.build_audio_encoder("wav2vec2:some/dir:with:colons", 8)
    assert isinstance(enc, A.Wav2Vec2Encoder)
    assert _FakeW2V.loaded == ["some/dir:with:colons"]
    assert enc.name_or_path == "some/dir:with:colons"
    assert enc.out_dim == 5 and type(enc.out_dim) is int
    assert enc.model.frozen is True
    wave = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    std = wave.std(-1, keepdim=True)
    torch.testing.assert_close(enc(wave), (wave - 3.0) / (std + 1e-5))
    const = torch.full((1, 4), 2.0)
    assert torch.equal(enc(const), torch.zeros(1, 4))   # std 0: the 1e-5 keeps it finite


def test_wav2vec2_encoder_failure_message(fake_transformers):
    with pytest.raises(A.AudioEncoderUnavailable) as e:
        A.Wav2Vec2Encoder("missing")
    assert str(e.value) == ("could not load wav2vec2 weights from 'missing' (OSError: no such model). "
                            "Without internet, download the model elsewhere (e.g. `huggingface-cli download "
                            "facebook/wav2vec2-base-960h --local-dir w2v`) and pass the local folder, "
                            "or use --audio-encoder logmel.")
    assert isinstance(e.value.__cause__, OSError)


def test_build_audio_encoder_choices():
    enc = A.build_audio_encoder("logmel", 7)
    assert isinstance(enc, A.LogMelEncoder) and enc.out_dim == 7
    with pytest.raises(ValueError) as e:
        A.build_audio_encoder("mfcc", 7)
    assert str(e.value) == "unknown audio encoder 'mfcc': use 'logmel' or 'wav2vec2:<hub id or folder>'"


def test_sinusoidal_pe_by_hand():
    pe = A.SinusoidalPE(4)
    assert pe.pe.shape == (4096, 4)
    assert "pe" not in pe.state_dict()
    torch.testing.assert_close(pe.pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(pe.pe[1], torch.tensor([math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]))
    odd = A.SinusoidalPE(3, max_len=5)
    assert odd.pe.shape == (5, 3)
    torch.testing.assert_close(odd.pe[2], torch.tensor([math.sin(2), math.cos(2), math.sin(2 * 10000 ** (-2 / 3))]))
    per = A.SinusoidalPE(4, max_len=10, period=3)
    torch.testing.assert_close(per.pe[3], per.pe[0])
    torch.testing.assert_close(per.pe[5], A.SinusoidalPE(4, max_len=10).pe[2])
    x = torch.ones(2, 3, 4)
    torch.testing.assert_close(pe(x), 1 + pe.pe[:3].expand(2, 3, 4))


def test_to_frames_is_linear_without_aligned_corners():
    feat = torch.tensor([[[0.0], [1.0]]])
    torch.testing.assert_close(A.to_frames(feat, 4), torch.tensor([[[0.0], [0.25], [0.75], [1.0]]]))
    assert A.to_frames(torch.zeros(2, 5, 3), 7).shape == (2, 7, 3)


# ---------------------------------------------------------------- faceformer.py

def test_alibi_slopes_by_hand():
    assert F.alibi_slopes(1).tolist() == [2 ** -8]
    assert F.alibi_slopes(4).tolist() == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]
    assert F.alibi_slopes(2).tolist() == [2 ** -4, 2 ** -8]
    assert F.alibi_slopes(3).tolist() == [2 ** -4, 2 ** -8, 2 ** -2]
    assert F.alibi_slopes(6).tolist() == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]


def test_biased_causal_mask_by_hand():
    m = F.biased_causal_mask(1, 4, 2)
    s = 2 ** -8
    inf = float("-inf")
    assert m.shape == (1, 4, 4) and m.dtype == torch.float32
    assert m[0].tolist() == [[0.0, inf, inf, inf], [0.0, 0.0, inf, inf], [-s, 0.0, 0.0, inf], [-s, -s, 0.0, 0.0]]
    m = F.biased_causal_mask(2, 4, 1)
    assert m[1, 3].tolist() == [-3 * 2 ** -8, -2 * 2 ** -8, -(2 ** -8), 0.0]


def test_alignment_mask_and_ppe():
    assert F.alignment_mask(3).tolist() == [[False, True, True], [True, False, True], [True, True, False]]
    assert F.alignment_mask(2).dtype == torch.bool
    ppe = F.PeriodicPE(4, 3)
    assert ppe.pe.shape == (4096, 4)
    torch.testing.assert_close(ppe.pe[4], ppe.pe[1])
    assert F.PeriodicPE(4, 3, max_len=9).pe.shape == (9, 4)


def _ff(post_norm=True, style=True, drop=0.0, layers=1, period=30):
    torch.manual_seed(0)
    f = F.FaceFormer(8, 2, layers, 2, 0.0, 5, period, post_norm=post_norm, style_every_token=style,
                     input_dropout=drop)
    _randomise(f, std=0.3)
    return f.eval()


def test_faceformer_defaults_and_parts():
    torch.manual_seed(0)
    f = F.FaceFormer(8, 2, 1, 2, 0.0, 5)
    assert f.period == 30 and f.style_every_token is True and f.n_heads == 2
    assert isinstance(f.in_drop, torch.nn.Dropout) and f.in_drop.p == 0.1
    assert f.decoder.layers[0].norm_first is False
    assert f.decoder.layers[0].self_attn.batch_first is True
    assert f.ppe.pe.shape == (4096, 8)
    torch.testing.assert_close(f.ppe.pe[30], f.ppe.pe[0])
    assert f.out.weight.abs().sum() == 0 and f.out.bias.abs().sum() == 0
    assert f.motion_enc.in_features == 56 and f.start.in_features == 3 and f.audio_proj.in_features == 5
    assert isinstance(F.FaceFormer(8, 2, 1, 2, 0.0, 5, input_dropout=0.0).in_drop, torch.nn.Identity)


def test_faceformer_decode_and_finish_by_hand():
    f = _ff(period=2)
    feat, pose0 = torch.randn(2, 7, 5), torch.randn(2, 3)
    mem = f.memory(feat, 4)
    torch.testing.assert_close(mem, A.to_frames(f.audio_proj(feat), 4))
    s = f.style(pose0)
    assert s.shape == (2, 1, 8)
    inputs = torch.randn(2, 3, 8)
    mask = F.biased_causal_mask(2, 3, 2).repeat(2, 1, 1)
    ref = f.out(f.decoder(f.ppe(inputs), mem[:, :3], tgt_mask=mask, memory_mask=F.alignment_mask(3)))
    torch.testing.assert_close(f._decode(inputs, mem), ref)
    raw = torch.randn(2, 3, 56)
    fin = F.FaceFormer._finish(raw)
    torch.testing.assert_close(fin[..., :53], raw[..., :53])
    torch.testing.assert_close(fin[..., POSE], raw[..., POSE] - raw[:, :1, POSE])
    motion = torch.randn(2, 4, 56)
    torch.testing.assert_close(f.embed_motion(motion, s), f.motion_enc(motion) + s)
    f.style_every_token = False
    torch.testing.assert_close(f.embed_motion(motion, s), f.motion_enc(motion))


@pytest.mark.parametrize("post_norm", [True, False])
def test_last_row_equals_the_full_pass_with_a_short_period(post_norm):
    f = _ff(post_norm=post_norm, period=2)
    inputs, mem = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    full = f._decode(inputs, mem)
    torch.testing.assert_close(f._last_row(inputs, mem[:, 4:5]), full[:, -1:], rtol=1e-5, atol=1e-5)


def test_generate_feeds_back_anchored_steps():
    f = _ff(period=2)
    feat, pose0 = torch.randn(1, 7, 5), torch.randn(1, 3)
    with torch.no_grad():
        out = f.generate(feat, pose0, 4)
        mem, s = f.memory(feat, 4), f.style(pose0)
        inputs, raw0 = s, None
        for t in range(3):
            raw = f._decode(inputs, mem)[:, -1:]
            raw0 = raw if raw0 is None else raw0
            step = torch.cat([raw[..., :53], raw[..., POSE] - raw0[..., POSE]], dim=-1)
            inputs = torch.cat([inputs, f.embed_motion(step, s)], dim=1)
        ref = F.FaceFormer._finish(f._decode(inputs, mem))
    assert out.shape == (1, 4, 56)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # with two layers (older checkpoints): full passes over the growing prefix
    g = _ff(layers=2, period=2)
    with torch.no_grad():
        out = g.generate(feat, pose0, 3)
        mem, s = g.memory(feat, 3), g.style(pose0)
        inputs = s
        for t in range(2):
            last = F.FaceFormer._finish(g._decode(inputs, mem))[:, -1:]
            inputs = torch.cat([inputs, g.embed_motion(last, s)], dim=1)
        ref = F.FaceFormer._finish(g._decode(inputs, mem))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert g.generate(feat, pose0, 1).shape == (1, 1, 56)


def test_teacher_forced_by_hand():
    f = _ff(period=2)
    feat, pose0, motion = torch.randn(2, 7, 5), torch.randn(2, 3), torch.randn(2, 4, 56)
    s = f.style(pose0)
    inputs = torch.cat([s, f.motion_enc(motion[:, :3]) + s], dim=1)
    ref = F.FaceFormer._finish(f._decode(inputs, f.memory(feat, 4)))
    torch.testing.assert_close(f.teacher_forced(feat, pose0, motion), ref)


# ---------------------------------------------------------------- second round (survivors of the first run)

def test_posterior_noise_is_drawn_in_the_models_dtype():
    m = tiny("full").double().eval()
    host, partner, bgm, pose0, target = (x.double() for x in _inputs())
    seen = _capture_decode(m)
    with torch.no_grad():
        out = m(host, partner, bgm, pose0, T, target=target, generator=torch.Generator().manual_seed(7))
    eps = torch.randn(out.mu.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    assert seen["z"].dtype == torch.float64
    torch.testing.assert_close(seen["z"], out.mu + torch.exp(0.5 * out.logvar) * eps, rtol=1e-12, atol=1e-12)


def test_logmel_default_width_and_layers():
    enc = A.LogMelEncoder()
    assert enc.out_dim == 64 and enc.conv[0].out_channels == 64
    assert [type(x) for x in enc.conv] == [torch.nn.Conv1d, torch.nn.GELU, torch.nn.Conv1d, torch.nn.GELU]
    assert enc.conv[0].padding == (1,) and enc.conv[2].kernel_size == (3,)


def test_wav2vec2_without_transformers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)     # `from transformers import ...` raises ImportError
    with pytest.raises(A.AudioEncoderUnavailable) as e:
        A.Wav2Vec2Encoder("x")
    assert str(e.value) == "wav2vec2 needs the `transformers` package: pip install 'chorushead[wav2vec]'"


def test_wav2vec2_normalises_each_waveform_on_its_own(fake_transformers):
    enc = A.Wav2Vec2Encoder("some")
    wave = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 10.0, 0.0, 10.0]])
    mean = torch.tensor([[3.0], [5.0]])
    std = torch.tensor([[wave[0].std().item()], [wave[1].std().item()]])
    torch.testing.assert_close(enc(wave), (wave - mean) / (std + 1e-5))


def test_sinusoidal_pe_far_position_pins_the_base():
    pe = A.SinusoidalPE(4)
    # frequency of the second pair: 10000^(-2/4) = 0.01; at t = 4000 the phase is 40 rad
    torch.testing.assert_close(pe.pe[4000, 2:], torch.tensor([math.sin(40.0), math.cos(40.0)]), rtol=0, atol=2e-4)


def test_alibi_slopes_twelve_heads():
    eight = [2 ** (-(i + 1)) for i in range(8)]
    sixteen = [2 ** (-0.5 * (i + 1)) for i in range(16)]
    torch.testing.assert_close(F.alibi_slopes(12), torch.tensor(eight + sixteen[0::2][:4]))


def test_faceformer_output_width_and_float64_passes():
    f = _ff(period=2)
    assert f.out.out_features == 56
    f = f.double()
    inputs, mem = torch.randn(2, 4, 8, dtype=torch.float64), torch.randn(2, 4, 8, dtype=torch.float64)
    full = f._decode(inputs, mem)
    assert full.dtype == torch.float64
    torch.testing.assert_close(f._last_row(inputs, mem[:, 3:4]), full[:, -1:], rtol=1e-10, atol=1e-10)
