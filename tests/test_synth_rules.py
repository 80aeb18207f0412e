"""pachorus synth: each motion rule checked on the generated data (anticipation lead, silent singer,
talking corpus), and old LMDBs' configs regenerate the data they hold."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pachorus.synth import (SynthConfig, _bump, _frame_features, _listener_expression, listener_profile,
                            synthesize_song, write_synth_lmdb)

FPS = 30


def _songs(cfg: SynthConfig, n: int = 6):
    return [synthesize_song(cfg, np.random.default_rng([0, v]), cfg.singers_of(v)) for v in range(n)]


def _in_phrases(t: np.ndarray, phrases) -> np.ndarray:
    m = np.zeros(len(t), bool)
    for o, d in phrases:
        m |= (t >= o - 1.5 / FPS) & (t <= o + d + 1.5 / FPS)
    return m


def test_mouth_opens_at_least_250ms_before_each_phrase_onset():
    """The lead (0.3 s) is beyond the log-mel encoder's ~60 ms look-ahead: the host is silent there."""
    cfg = SynthConfig(seconds=12.0)
    assert cfg.anticipation >= 0.25
    checked = 0
    for song in _songs(cfg, 4):
        t = np.arange(song.coeffs.shape[1]) / FPS
        for h in range(song.coeffs.shape[0]):
            for o in song.onsets[h]:
                if o < 0.5:
                    continue
                lead = (t >= o - 0.25) & (t < o)             # ≥ 250 ms before the onset: already open
                assert (song.coeffs[h, lead, 50] > 0.05).all(), (h, o)
                a, b = int((o - 0.25) * cfg.sr), int(o * cfg.sr) - 1024
                assert not song.vocals[h, a:b].any()          # ...while the host makes no sound yet
                before = (t >= o - 0.45) & (t < o - 0.31)     # and closed before the lead
                assert (np.abs(song.coeffs[h, before, 50]) < 0.03).all(), (h, o)
                checked += 1
    assert checked > 10


def test_anticipation_only_moves_the_frames_around_the_hosts_own_onsets():
    on = synthesize_song(SynthConfig(seconds=8.0), np.random.default_rng(3))
    off = synthesize_song(SynthConfig(seconds=8.0, anticipation=0.0), np.random.default_rng(3))
    np.testing.assert_array_equal(on.vocals, off.vocals)   # same song: the rule changes motion only
    t = np.arange(on.coeffs.shape[1]) / FPS
    for h in range(2):
        diff = np.abs(on.coeffs[h, :, 50] - off.coeffs[h, :, 50]) > 1e-6
        near = np.zeros_like(diff)
        for o in on.onsets[h]:
            near |= (t >= o - 0.3 - 1e-6) & (t <= o + 0.15 + 1e-6)
            assert diff[(t > o - 0.29) & (t < o + 0.14)].all()
        assert not (diff & ~near).any()


def test_silent_singer_keeps_the_mouth_closed_and_nods_to_the_music():
    """While only the partner sings: jaw ≈ 0 and expression ≈ noise, pitch still nods on the beats;
    and such stretches make up a good share of every song (solos: call and response)."""
    cfg = SynthConfig(seconds=20.0)
    shares, long_stretches, jaw, exp, pitch, nods, sung_jaw = [], 0, [], [], [], [], []
    for song in _songs(cfg):
        n = song.coeffs.shape[1]
        t = np.arange(n) / FPS
        nod = cfg.nod * _bump(t, song.beats, 0.0, 0.35)
        for h in range(2):
            host, partner = _in_phrases(t, song.phrases[h]), _in_phrases(t, song.phrases[1 - h])
            for o in song.onsets[h]:           # the opening before the host's own next phrase
                host |= (t >= o - cfg.anticipation - 1e-6) & (t < o)
            listen = ~host & partner
            shares.append(listen.mean())
            d = np.diff(np.r_[0, listen.astype(int), 0])
            long_stretches += int(((np.where(d == -1)[0] - np.where(d == 1)[0]) >= FPS).sum())
            jaw.append(song.coeffs[h, listen, 50])
            answer = cfg.listener * listener_profile(t, song.onsets[1 - h])[:, None] * _listener_expression()
            exp.append(song.coeffs[h, listen, :50] - answer[listen])   # all but the listener's answer
            pitch.append(song.coeffs[h, listen, 53])
            nods.append(nod[listen])
            sung_jaw.append(song.coeffs[h, _in_phrases(t, song.phrases[h]), 50])
            rms, _ = _frame_features(song.vocals[1 - h], cfg.sr, FPS, n)
            assert np.median(rms[listen]) > 0.01          # the partner really sings there
    jaw, exp, pitch, nods = map(np.concatenate, (jaw, exp, pitch, nods))
    assert min(shares) > 0.1 and np.mean(shares) > 0.18 and long_stretches >= 6
    assert np.abs(jaw).mean() < 0.006 and np.abs(jaw).max() < 0.03        # closed (0.005 rad noise)
    assert np.concatenate(sung_jaw).mean() > 0.05                          # vs open when singing
    assert np.abs(exp).mean() < 0.05                                       # no audio-driven expression
    assert np.corrcoef(pitch, nods)[0, 1] > 0.7                            # nods on the BGM beats


def test_listener_answers_the_partner_with_expression_only():
    """Rules 3: while a partner sings, the host's expression moves along the listener direction (it
    starts 0.3 s after each partner onset); audio, jaw and pose are exactly those of rules 2."""
    cfg3, cfg2 = SynthConfig(seconds=12.0), SynthConfig(seconds=12.0, rules=2)
    assert cfg3.rules == 3 and cfg3.listener == 0.6 and cfg2.listener == 0.0
    smile = _listener_expression()
    for v in range(3):
        a, b = (synthesize_song(c, np.random.default_rng([0, v])) for c in (cfg3, cfg2))
        np.testing.assert_array_equal(a.vocals, b.vocals)
        np.testing.assert_array_equal(a.coeffs[..., 50:], b.coeffs[..., 50:])   # jaw and pose untouched
        t = np.arange(a.coeffs.shape[1]) / FPS
        for h in range(2):
            d = a.coeffs[h, :, :50] - b.coeffs[h, :, :50]
            amount = d @ smile / (smile @ smile)                 # along the listener direction only
            np.testing.assert_allclose(d, amount[:, None] * smile[None], atol=1e-5)
            partner = a.onsets[1 - h]
            for o in partner:                                    # rises after each partner onset...
                assert np.all(np.abs(amount[(t >= o - 0.5) & (t < o + 0.3)]) < 1e-6) or \
                    any(abs(o - p) < 1.9 and p < o for p in partner), (h, o)
                peak = amount[(t > o + 0.9) & (t < o + 1.2)]
                assert len(peak) == 0 or peak.max() > 0.4, (h, o)
            far = np.ones(len(t), bool)                          # ...and is 0 far from any of them
            for o in partner:
                far &= ~((t >= o + 0.3 - 1e-6) & (t <= o + 1.8 + 1e-6))
            assert np.abs(amount[far]).max() < 1e-6
            assert amount.max() <= 0.6 + 1e-6                     # tanh-squashed: never beyond the amplitude
    with pytest.raises(ValueError, match="listener"):
        SynthConfig(rules=2, listener=0.5)
    assert SynthConfig.from_dict({"rules": 2, "videos": 1}).listener == 0.0     # a rules-2 LMDB regenerates
    assert SynthConfig(seconds=12.0, listener=0.0).listener == 0.0


def test_solo_share_makes_more_listening_stretches():
    def share(solo):
        out = []
        for song in _songs(SynthConfig(seconds=20.0, solo=solo), 4):
            t = np.arange(song.coeffs.shape[1]) / FPS
            for h in range(2):
                out.append((~_in_phrases(t, song.phrases[h]) & _in_phrases(t, song.phrases[1 - h])).mean())
        return np.mean(out)
    assert share(0.6) > share(0.0)


def test_talking_corpus_speech_without_music_or_partner(tmp_path):
    cfg = SynthConfig(seconds=10.0, talking=True)
    song = synthesize_song(cfg, np.random.default_rng(1))
    n = song.coeffs.shape[1]
    t = np.arange(n) / FPS
    assert not song.bgm.any() and len(song.beats) == 0             # BGM: silence, no beats
    assert not song.vocals[1].any() and len(song.onsets[1]) == 0   # partner track: silent
    assert np.abs(song.vocals[0]).max() > 0.05 and len(song.onsets[0]) >= 2
    # speech, not song: short syllables (a loudness peak every < 0.22 s inside utterances)
    rms, _ = _frame_features(song.vocals[0], cfg.sr, 100, int(cfg.seconds * 100))
    peaks = (rms[1:-1] > rms[:-2]) & (rms[1:-1] >= rms[2:]) & (rms[1:-1] > 0.02)
    talking_s = sum(d for _, d in song.phrases[0])
    assert peaks.sum() / talking_s > 4.5
    # the host rules hold (jaw follows loudness), the silent slot keeps its mouth closed
    rms30, _ = _frame_features(song.vocals[0], cfg.sr, FPS, n)
    assert np.corrcoef(song.coeffs[0, :, 50], rms30)[0, 1] > 0.6
    assert np.abs(song.coeffs[1, :, 50]).max() < 0.03
    # no nods and no turns: pitch and yaw are drift + noise only
    for h in range(2):
        assert song.coeffs[h, :, 53].std() < 0.08 and np.abs(np.diff(song.coeffs[h, :, 54])).max() < 0.05
    # as an LMDB: two singer slots per window, the config says talking
    counts = write_synth_lmdb(tmp_path / "talk.lmdb", SynthConfig(videos=3, seconds=3.0, window=30, stride=30,
                                                                   talking=True))
    assert sum(counts.values()) == 9
    stored = json.loads((tmp_path / "talk.lmdb" / "synth_config.json").read_text())["config"]
    assert stored["talking"] and SynthConfig.from_dict(stored).talking
    with pytest.raises(ValueError, match="silent partner"):
        write_synth_lmdb(tmp_path / "t3.lmdb", SynthConfig(videos=1, seconds=3.0, window=30, talking=True,
                                                            n_singers=3))


def test_old_configs_regenerate_the_old_data():
    """A config stored before the rules changed (no ``rules`` key) reads as rules 1 with its own lead,
    and regenerates what that version wrote (numbers taken from the code before the change)."""
    old = {"videos": 12, "seconds": 3.0, "n_singers": 3, "anticipation": 0.1, "coeff_groups": ["exp", "jaw", "pose"]}
    cfg = SynthConfig.from_dict(old)
    assert cfg.rules == 1 and cfg.anticipation == 0.1 and cfg.solo == 0.0 and cfg.coeff_groups == ("exp", "jaw", "pose")
    s = synthesize_song(cfg, np.random.default_rng(11))
    assert float(s.coeffs.astype(np.float64).sum()) == pytest.approx(345.57204239712155, rel=1e-5)
    assert float(np.abs(s.coeffs).astype(np.float64).sum()) == pytest.approx(1741.369718692763, rel=1e-5)
    assert s.coeffs[1, 40, 50] == pytest.approx(0.058870424, abs=1e-6)
    np.testing.assert_allclose(s.onsets[0], [0.1928553, 2.10800609], atol=1e-6)
    assert SynthConfig.from_dict({"no_such_key": 1}).rules == 1            # unknown keys are ignored
    assert SynthConfig.from_dict(json.loads(json.dumps(SynthConfig().__dict__))) == SynthConfig()
