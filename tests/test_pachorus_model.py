"""Model branches, variants, masks, loss, and the wav2vec2 loading path (tiny random-weight model)."""
import numpy as np
import pytest
import torch

from pachorus.losses import LossConfig, PaChorusLoss, coeff_weights, kl_divergence
from pachorus.model import AudioEncoderUnavailable, ModelConfig, build_model
from chorushead.core.windows import EXP, EXP_JAW, JAW, POSE

T, N = 30, 16000  # 1 s windows


def tiny(variant="full", **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(variant=variant, d_model=16, n_layers=1, n_heads=2, latent=4, dropout=0.0, **kw))


def _inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    host, partner, bgm = (torch.randn(b, N, generator=g) * 0.1 for _ in range(3))
    pose0 = torch.randn(b, 3, generator=g) * 0.1
    target = torch.randn(b, T, 56, generator=g) * 0.1
    return host, partner, bgm, pose0, target


def _randomise_heads(m):
    # output layers start at zero (predict "no motion"); give them weights so dependencies show
    torch.manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear) and mod.weight.abs().sum() == 0:
            torch.nn.init.normal_(mod.weight, std=0.5)


@pytest.mark.parametrize("variant", ["full", "no_bgm", "no_kl", "no_prior", "mono", "mono_causal"])
def test_variants_shapes_and_pose_anchor(variant):
    m = tiny(variant)
    _randomise_heads(m)
    host, partner, bgm, pose0, target = _inputs()
    out = m(host, partner, bgm, pose0, T, target=target)
    assert out.coeffs.shape == (2, T, 56)
    # paper Eq. 6: pose = pose0 + Δ with Δ anchored at frame 0
    torch.testing.assert_close(out.coeffs[:, 0, POSE], pose0)
    assert (out.mu is not None) == (variant in ("full", "no_bgm", "no_kl"))
    out.coeffs.sum().backward()


def test_prior_uses_partner_and_bgm_but_no_prior_does_not():
    host, partner, bgm, pose0, _ = _inputs()
    other = torch.randn_like(partner) * 0.3
    for variant, partner_matters, bgm_matters in [("full", True, True), ("no_bgm", True, False),
                                                  ("no_prior", False, False), ("mono", False, False),
                                                  ("mono_causal", False, False)]:
        m = tiny(variant).eval()
        _randomise_heads(m)
        with torch.no_grad():
            a = m(host, partner, bgm, pose0, T, z_mode="mean").coeffs
            b = m(host, other, bgm, pose0, T, z_mode="mean").coeffs
            c = m(host, partner, other, pose0, T, z_mode="mean").coeffs
        assert (not torch.allclose(a, b)) == partner_matters, variant
        assert (not torch.allclose(a, c)) == bgm_matters, variant
        # the partner/BGM move the pose and (prior_expression) the expression, never the jaw
        torch.testing.assert_close(a[..., JAW], b[..., JAW])
        torch.testing.assert_close(a[..., JAW], c[..., JAW])
        assert (not torch.allclose(a[..., EXP], b[..., EXP])) == partner_matters, variant
        assert (not torch.allclose(a[..., POSE], b[..., POSE])) == partner_matters, variant


def test_prior_expression_off_is_eq4_pose_only_and_legacy_checkpoints_load_as_it():
    """With ``prior_expression=False`` the partner moves only the pose (the paper's Eq. 4 to the
    letter): expression and jaw are the host's; a config saved before the setting existed reads as it."""
    host, partner, bgm, pose0, _ = _inputs()
    other = torch.randn_like(partner) * 0.3
    m = tiny("full", prior_expression=False).eval()
    _randomise_heads(m)
    assert m.prior.out_exp is None
    with torch.no_grad():
        a = m(host, partner, bgm, pose0, T, z_mode="mean").coeffs
        b = m(host, other, bgm, pose0, T, z_mode="mean").coeffs
    torch.testing.assert_close(a[..., EXP_JAW], b[..., EXP_JAW])
    assert not torch.allclose(a[..., POSE], b[..., POSE])
    old = ModelConfig().to_dict()
    del old["prior_expression"]
    assert ModelConfig.from_dict(old).prior_expression is False
    assert ModelConfig().prior_expression is True


def test_prior_expression_residual_is_added_to_the_hosts_expression():
    """The expression the model writes is the animator's plus the prior decoder's residual, by value."""
    host, partner, bgm, pose0, _ = _inputs()
    m = tiny("full").eval()
    _randomise_heads(m)
    with torch.no_grad():
        out = m(host, partner, bgm, pose0, T, z_mode="mean").coeffs
        anim = m.animator(m.audio(host), pose0, T)
        feats = m.audio(torch.cat([partner, bgm]))
        _, e = m.prior.decode(torch.zeros(2, m.cfg.latent), feats[:2], feats[2:], pose0, T)
    torch.testing.assert_close(out[..., EXP], anim[..., EXP] + e)
    torch.testing.assert_close(out[..., JAW], anim[..., JAW])


def test_mono_causal_is_causal_mono_and_full_are_not():
    host, partner, bgm, pose0, _ = _inputs(b=1)
    late = host.clone()
    late[:, N // 2:] += torch.randn(1, N // 2) * 0.5
    for variant, causal in [("mono_causal", True), ("mono", False), ("no_prior", False)]:
        m = tiny(variant).eval()
        _randomise_heads(m)
        with torch.no_grad():
            a = m(host, partner, bgm, pose0, T, z_mode="mean").coeffs
            b = m(late, partner, bgm, pose0, T, z_mode="mean").coeffs
        early_same = torch.allclose(a[:, : T // 2 - 3], b[:, : T // 2 - 3], atol=1e-6)
        assert early_same == causal, variant


@pytest.mark.parametrize("band", [1, 3])
def test_host_self_attention_stays_in_its_band_and_the_diagnostic_reads_it(band):
    from pachorus.model.pachorus import attention_diagnostic
    m = tiny("full", attn_band=band).eval()
    host, _, _, pose0, _ = _inputs(b=2)
    w = m.animator.self_attention(m.audio(host), pose0, T)                 # (B, T, T)
    i = torch.arange(T)
    outside = (i[None, :] - i[:, None]).abs() > band
    assert w.shape == (2, T, T) and float(w[:, outside].abs().max()) == 0.0
    torch.testing.assert_close(w.sum(-1), torch.ones(2, T))
    d = attention_diagnostic(w)
    assert d["attended_distance"] <= band and d["entropy"] <= np.log(2 * band + 1) + 1e-5
    # the diagnostic's scale: uniform attention and attention on the own frame
    u = attention_diagnostic(torch.full((1, T, T), 1.0 / T))
    assert abs(u["entropy"] - np.log(T)) < 1e-5 and abs(u["attended_distance"] - (T * T - 1) / (3 * T)) < 1e-4
    e = attention_diagnostic(torch.eye(T)[None])
    assert e["entropy"] < 1e-6 and e["own_frame_weight"] == 1.0 and e["attended_distance"] < 1e-6
    # no band: the whole window
    w0 = tiny("full", attn_band=0).eval().animator.self_attention(m.audio(host), pose0, T)
    assert float(w0[:, outside].min()) > 0


def test_checkpoints_from_before_the_band_load_as_they_were_trained():
    """A saved config without attn_band / memory_pe was trained with neither, and its "mono" was the
    causal baseline; today's defaults must not change what an old checkpoint computes."""
    old = ModelConfig.from_dict({"variant": "mono", "d_model": 16})
    assert (old.variant, old.attn_band, old.memory_pe) == ("mono_causal", 0, False)
    new = ModelConfig.from_dict(ModelConfig(variant="mono").to_dict())
    assert (new.variant, new.attn_band, new.memory_pe) == ("mono", 3, True)


def test_samples_differ_mean_is_deterministic():
    m = tiny("full").eval()
    _randomise_heads(m)
    host, partner, bgm, pose0, _ = _inputs()
    with torch.no_grad():
        s1 = m(host, partner, bgm, pose0, T, z_mode="sample", generator=torch.Generator().manual_seed(1)).coeffs
        s2 = m(host, partner, bgm, pose0, T, z_mode="sample", generator=torch.Generator().manual_seed(2)).coeffs
        m1 = m(host, partner, bgm, pose0, T, z_mode="mean").coeffs
        m2 = m(host, partner, bgm, pose0, T, z_mode="mean").coeffs
    assert not torch.allclose(s1[..., POSE], s2[..., POSE])
    torch.testing.assert_close(s1[..., JAW], s2[..., JAW])          # z never reaches the jaw
    torch.testing.assert_close(m1, m2)


def test_loss_terms_by_hand():
    cfg = LossConfig(w_mse=1.0, w_kl=0.5, w_vel=2.0, jaw_weight=5.0, pose_weight=5.0)
    w = coeff_weights(cfg)
    assert w.mean().item() == pytest.approx(1.0) and w[50].item() == pytest.approx(5 * w[0].item())
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, np.log(2.0)]])
    # paper Eq. 7: sum(σ² + μ² − log σ² − 1) = (1 + 1 − 0 − 1) + (2 + 0 − log 2 − 1)
    assert kl_divergence(mu, logvar).item() == pytest.approx(1 + 1 - np.log(2))
    from pachorus.model.pachorus import ModelOutput
    target = torch.zeros(1, 3, 56)
    pred = torch.zeros(1, 3, 56)
    pred[0, 1, 0] = 1.0   # one expression coefficient off by 1 in the middle frame
    parts = PaChorusLoss(cfg)(ModelOutput(pred, mu, logvar), target)
    assert parts["mse"].item() == pytest.approx(w[0].item() / (3 * 56))
    assert parts["vel"].item() == pytest.approx(2 * w[0].item() / (2 * 56))   # +1 then −1
    total = parts["mse"] + 0.5 * parts["kl"] + 2.0 * parts["vel"]
    assert parts["loss"].item() == pytest.approx(total.item())


def test_vertex_lip_loss_needs_flame():
    with pytest.raises(ValueError, match="FLAME"):
        PaChorusLoss(LossConfig(w_lip_vertex=1.0))


def test_vertex_lip_loss_with_flame(tmp_path):
    from chorushead.core.flame import FlameModel, make_synthetic_flame
    flame = FlameModel.load(make_synthetic_flame(tmp_path))
    from pachorus.model.pachorus import ModelOutput
    target = torch.zeros(1, 2, 56)
    pred = target.clone()
    pred[..., 50] = 0.2   # jaw open: lips move
    parts = PaChorusLoss(LossConfig(w_lip_vertex=1.0), flame)(ModelOutput(pred), target)
    assert parts["lip_vertex"].item() > 1.0   # mm² on a 10 cm toy head
    pred2 = target.clone()
    pred2[..., POSE] = 0.5  # head pose is zeroed in the lip loss
    assert PaChorusLoss(LossConfig(w_lip_vertex=1.0), flame)(ModelOutput(pred2), target)["lip_vertex"].item() < 1e-8


def _tiny_wav2vec2(folder):
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                         conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                         vocab_size=10)
    torch.manual_seed(0)
    Wav2Vec2Model(cfg).save_pretrained(folder)


@pytest.mark.slow  # importing transformers alone takes ~10 s of CPU
def test_wav2vec2_from_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _tiny_wav2vec2(tmp_path / "w2v")
    m = tiny("full", audio_encoder=f"wav2vec2:{tmp_path / 'w2v'}")
    enc = m.audio.model
    assert all(not p.requires_grad for p in enc.feature_extractor.parameters())   # frozen "TCN"
    assert any(p.requires_grad for p in enc.encoder.parameters())
    host, partner, bgm, pose0, target = _inputs()
    feats = m.audio(host)
    assert feats.shape[0] == 2 and feats.shape[2] == 32 and 45 <= feats.shape[1] <= 50   # ~50 Hz
    out = m(host, partner, bgm, pose0, T, target=target)
    assert out.coeffs.shape == (2, T, 56)
    out.coeffs.sum().backward()


def test_wav2vec2_missing_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AudioEncoderUnavailable, match="could not load wav2vec2"):
        tiny("full", audio_encoder=f"wav2vec2:{tmp_path / 'nothing-here'}")
    with pytest.raises(ValueError, match="unknown audio encoder"):
        tiny("full", audio_encoder="mfcc")
