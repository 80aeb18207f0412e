"""Synthetic chorus data with KNOWN motion rules, packed in the chorushead window format.

Each "video" is a song of ``seconds`` with ``n_singers`` singers and a BGM. Singers sing phrases
(0.5–2 s, separated by 0.5–2.5 s rests) of harmonic tones whose vowel (formant) changes every
syllable. The FLAME coefficients of each singer follow these rules (strong on purpose: a
throwaway prototype showed 0.05-rad nods drown in seed noise):

- jaw:  jaw[0] = 0.3 · (host RMS envelope per motion frame, centred 3-frame smoothing, ÷0.15, clipped at 1.5);
- anticipation (``anticipation`` s = 0.3 lead; 0 = off): the mouth opens BEFORE each of the host's
        phrase onsets, as singers breathe in and open before the note: jaw[0] += ``anticipation_amp``
        (0.15 rad) · a profile that rises (half raised cosine, 0.1 s) from ``lead`` s before the onset,
        stays open until the onset and closes over 0.15 s after it; the lips open along (exp += the
        profile · a fixed 50-vector). The lead is longer than what the audio encoder sees ahead of
        frame t (~60 ms: the log-mel window and convolutions), so a causal animator (``mono_causal``,
        ``faceformer``: frame t attends to audio frames ≤ t) cannot predict ~0.24 s of each opening,
        while a model attending to the host audio ahead can. At the old 0.1 s lead the encoder's own
        look-ahead already saw most of the rise, which barely separated causal from non-causal models;
- silent singer: while the host is silent (outside its phrases and their anticipation) the mouth is
        closed (jaw and the audio-driven expression gated to 0; only the small noise remains), whatever
        the partner sings, and the head still follows the music (the BGM nods below never stop). So
        such stretches are frequent, ``solo`` (0.3) of the phrases are solos: the other singers rest
        while one lasts (plus the anticipation lead around it) — call and response;
- exp:  exp = M · b, with M a fixed (50×8) matrix (same for every song) and b the host's 8 log-band
        energies (100 Hz–4 kHz) squashed to [0, 1];
- yaw:  0.3 rad turn TOWARD the partner(s), a 1.2 s raised-cosine bump starting 0.2 s after each
        partner phrase onset (direction from the singer's place: left singers turn right);
- listener (rules 3, ``listener`` = 0.6; 0 = off): the host's face answers its partners: while a
        partner sings, the host's expression moves along a fixed (50,) direction (a smile with raised
        brows: the paper's §4.4 "sharing a similar emotional expression"), a 1.5 s raised-cosine bump
        starting 0.3 s after each partner phrase onset, squashed by tanh like the turn; the mouth opening
        (jaw) is the host's alone. Only a model that hears the partner can predict it: in PaChorus the
        prior branch (``ModelConfig.prior_expression``), not mono, no_prior or FaceFormer;
- pitch: 0.12 rad nod, a 0.35 s raised-cosine bump on every BGM beat (tempo 80–130 bpm);
- a place-dependent yaw bias (±0.15), slow smoothed drift (~0.03), per-frame noise, and a random
  per-WINDOW pose offset (σ 0.08 per axis), so only motion relative to frame 0 is predictable.

No partner rule reaches the jaw: the mouth opening follows the host's own voice (and the model's jaw
comes from the host audio alone, tested).

Which singer's place a model is looking at is visible in ``pose0`` (the yaw bias sign), which every
model variant receives.

``talking=True`` writes a talking-style corpus for the paper's "pretrained on talking data, then
fine-tuned" protocol: speech-like host audio (0.08–0.22 s syllables with consonant noise, falling
intonation, no vibrato, 1–3.5 s utterances), silent BGM (zeros: no beats, no nods) and a silent
partner track (the second singer slot, which the windows format needs, never speaks: no turns; as
host it keeps its mouth closed). The host rules (jaw, expression, anticipation) are the singing ones.

``rules`` says which rule set wrote an LMDB: 3 (today's), 2 (before the listener rule) or 1 (before the
silent-singer rule: a raised-cosine anticipation bump of 2 × lead peaking at the onset, lead 0.1 s, no
gating, no solos). The listener rule draws nothing from the song's random stream, so rules 2 and 3
give the same audio and the same motion but for the listener term.
:meth:`SynthConfig.from_dict` reads the config stored in an LMDB's meta; one stored without
``rules`` is a rules-1 LMDB, and regenerating it with that config gives the same data.

``n_singers`` may be a list, cycled over videos (``[2, 3]``: duets and trios in one LMDB). With
``coeff_groups`` a subset of exp/jaw/pose, the other groups are written as zeros and the meta says
which groups exist, like a fit backend that does not estimate them (the landmarks fit has no exp).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from chorushead.core.windows import GROUPS as COEFF_GROUPS
from chorushead.core.windows import (EXP, JAW, JAW_OPEN, N_EXP, POSE, SPLITS, encode_arrays, open_env, rebuild_index,
                                     window_key, write_meta)

N_BANDS = 8
RULES = 3          # today's rule set (SynthConfig.rules)
RISE, RELEASE = 0.1, 0.15   # s: the anticipation opening's rise (from the lead on) and its close after the onset
GROUPS = COEFF_GROUPS


@dataclass
class SynthConfig:
    videos: int = 12
    seconds: float = 20.0
    n_singers: int | list[int] = 2   # a list is cycled over videos
    fps: int = 30
    sr: int = 16000
    window: int = 150          # frames per window (5 s, as packed)
    stride: int = 15           # frames between window starts (0.5 s)
    seed: int = 0
    noise: float = 1.0         # multiplies the per-frame noise levels
    turn: float = 0.3          # yaw turn amplitude (rad)
    nod: float = 0.12          # pitch nod amplitude (rad)
    window_offset: float = 0.08  # per-window pose offset std (rad)
    anticipation: float = 0.3    # s the mouth starts opening before a host phrase onset (0 = rule off)
    anticipation_amp: float = 0.15  # jaw opening (rad) of that rule at the onset
    coeff_groups: tuple[str, ...] = ("exp", "jaw", "pose")  # the groups "the fit estimated"; others are 0
    solo: float = 0.3            # share of phrases sung alone (the others rest): host-silent stretches
    talking: bool = False        # talking-style corpus: speech, silent BGM, silent partner (pretraining)
    listener: float | None = None  # the listener expression's amplitude: None = 0.6 with rules 3, else 0 (off)
    rules: int = RULES           # rule set (see the module doc): 1, 2 (no listener rule) or 3

    # What a config stored before a setting existed was written with (not today's default).
    LEGACY = {"rules": 1, "anticipation": 0.1, "solo": 0.0, "talking": False, "listener": 0.0}

    def __post_init__(self):
        if self.rules not in (1, 2, RULES):
            raise ValueError(f"rules must be 1, 2 or {RULES}, got {self.rules}")
        if self.listener is None:
            self.listener = 0.6 if self.rules >= 3 else 0.0
        if self.listener < 0 or (self.listener and self.rules < 3):
            raise ValueError(f"listener must be ≥ 0, and > 0 only with rules 3 (got {self.listener}, "
                             f"rules {self.rules})")
        if self.anticipation < 0 or not 0 <= self.solo <= 1:
            raise ValueError(f"anticipation must be ≥ 0 s and solo in [0, 1], got {self.anticipation}, {self.solo}")
        if self.rules == 1 and (self.solo or self.talking):
            raise ValueError("rules 1 has no solos and no talking corpus (rules 2 has)")

    @classmethod
    def from_dict(cls, d: dict) -> "SynthConfig":
        """The config stored in an LMDB's meta (``synth_config``) or synth_config.json; keys it lacks
        take the value the data was written with (:attr:`LEGACY`), unknown keys are ignored."""
        kw = {**cls.LEGACY, **{f.name: d[f.name] for f in fields(cls) if f.name in d}}
        if isinstance(kw.get("coeff_groups"), list):
            kw["coeff_groups"] = tuple(kw["coeff_groups"])
        return cls(**kw)

    def singers_of(self, video: int) -> int:
        counts = self.n_singers if isinstance(self.n_singers, (list, tuple)) else [self.n_singers]
        return int(counts[video % len(counts)])


@dataclass
class Song:
    vocals: np.ndarray   # (S, N) float32 at sr
    bgm: np.ndarray      # (N,)
    coeffs: np.ndarray   # (S, T, 56) before per-window offsets
    beats: np.ndarray    # beat times (s)
    onsets: list[np.ndarray]  # per singer phrase onset times (s)
    phrases: list[list[tuple[float, float]]] | None = None  # per singer (onset, duration) s; rules ≥ 2 only


def _expression_map() -> np.ndarray:
    """The fixed band-energy -> expression matrix (same for every song and every call)."""
    m = np.random.default_rng(1234).normal(0, 1, (50, N_BANDS))
    return m * (1.5 / np.sqrt(N_BANDS)) * np.exp(-np.arange(50) / 15.0)[:, None]


def _anticipation_lips() -> np.ndarray:
    """Fixed expression direction (50,) of the pre-onset mouth opening (per rad of jaw opening)."""
    return np.random.default_rng(4321).normal(0, 1, 50) * 3.0 * np.exp(-np.arange(50) / 10.0)


def _listener_expression() -> np.ndarray:
    """Fixed expression direction (50,) of the listener's answer to a singing partner (rules 3)."""
    return np.random.default_rng(5678).normal(0, 1, N_EXP) * np.exp(-np.arange(N_EXP) / 15.0)


LISTEN_DELAY, LISTEN_WIDTH = 0.3, 1.5   # s: the listener expression's bump after each partner onset


def listener_profile(t: np.ndarray, partner_onsets: np.ndarray) -> np.ndarray:
    """The listener rule's time course in [0, 1) (rules 3): tanh of the partners' onset bumps."""
    return np.tanh(_bump(t, partner_onsets, LISTEN_DELAY, LISTEN_WIDTH))


def _bump(t: np.ndarray, events: np.ndarray, delay: float, width: float) -> np.ndarray:
    """Sum of raised-cosine bumps of ``width`` s starting ``delay`` s after each event."""
    out = np.zeros_like(t)
    for e in events:
        u = (t - e - delay) / width
        m = (u >= 0) & (u <= 1)
        out[m] += 0.5 - 0.5 * np.cos(2 * np.pi * u[m])
    return out


def _sing(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """One singer's track: phrases of syllables with changing vowels. Returns (audio, onsets s)."""
    out = np.zeros(n, np.float32)
    onsets = []
    t = rng.uniform(0.0, 1.5)
    formants = np.array([300, 600, 900, 1500, 2500])
    while t < n / sr - 0.5:
        dur = rng.uniform(0.5, 2.0)
        a, b = int(t * sr), min(n, int((t + dur) * sr))
        onsets.append(t)
        ts = np.arange(b - a) / sr
        f0 = rng.uniform(150, 350) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * ts))  # vibrato
        phase = 2 * np.pi * np.cumsum(f0) / sr
        # Syllables: each 0.15–0.35 s, its own vowel formant and a loudness bump.
        bounds = np.cumsum(rng.uniform(0.15, 0.35, 20))
        syl = np.searchsorted(bounds, ts)
        formant = rng.choice(formants, size=syl.max() + 1)[syl]
        starts = np.concatenate([[0.0], bounds])[syl]
        ends = bounds[np.minimum(syl, len(bounds) - 1)]
        u = np.clip((ts - starts) / np.maximum(ends - starts, 1e-3), 0, 1)
        env = np.sin(np.pi * u) ** 0.5 * rng.uniform(0.5, 1.0, syl.max() + 1)[syl]
        sig = np.zeros_like(ts)
        for h in range(1, 13):
            fh = h * f0
            sig += np.exp(-((fh - formant) / 300.0) ** 2) * np.sin(h * phase) + 0.05 * np.sin(h * phase) / h
        out[a:b] += (0.25 * env * sig / 2.0).astype(np.float32)
        t += dur + rng.uniform(0.5, 2.5)
    return out, np.asarray(onsets)


def _schedule(rng: np.random.Generator, seconds: float, talking: bool = False) -> list[tuple[float, float]]:
    """One voice's (onset, duration) list: sung phrases 0.5–2 s with 0.5–2.5 s rests, or spoken
    utterances 1–3.5 s with 0.3–1.2 s pauses."""
    lo, hi, rest = ((1.0, 3.5, (0.3, 1.2)) if talking else (0.5, 2.0, (0.5, 2.5)))
    out, t = [], rng.uniform(0.0, 1.5)
    while t < seconds - 0.5:
        dur = rng.uniform(lo, hi)
        out.append((t, dur))
        t += dur + rng.uniform(*rest)
    return out


def _call_and_response(rng: np.random.Generator, phrases: list[list[tuple[float, float]]], solo: float,
                       margin: float) -> list[list[tuple[float, float]]]:
    """Make a share ``solo`` of the phrases solos: the other voices' phrases within ``margin`` s of one
    are dropped (earlier phrases first; a solo that would cut into an already kept phrase stays a
    plain phrase)."""
    items = sorted(((t, d, v, rng.uniform() < solo) for v, ph in enumerate(phrases) for t, d in ph))
    kept: list[tuple[float, float, int, bool]] = []
    for t, d, v, is_solo in items:
        clash = [k for k in kept if k[2] != v and k[0] - margin < t + d and t - margin < k[0] + k[1]]
        if any(k[3] for k in clash):
            continue                      # inside another voice's solo: this voice rests
        kept.append((t, d, v, is_solo and not clash))
    return [[(t, d) for t, d, w, _ in kept if w == v] for v in range(len(phrases))]


def _render(rng: np.random.Generator, phrases: list[tuple[float, float]], n: int, sr: int,
            talking: bool = False) -> np.ndarray:
    """Audio of one voice's phrases: sung (vibrato, sustained syllables) or spoken (short syllables
    with a consonant noise burst each, falling intonation, no vibrato)."""
    out = np.zeros(n, np.float32)
    formants = np.array([300, 600, 900, 1500, 2500])
    for t, dur in phrases:
        a, b = int(t * sr), min(n, int((t + dur) * sr))
        if b <= a:
            continue
        ts = np.arange(b - a) / sr
        if talking:
            f0 = rng.uniform(100, 220) * (1 - 0.25 * ts / dur) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(1, 3) * ts))
            bounds = np.cumsum(rng.uniform(0.08, 0.22, 64))
        else:
            f0 = rng.uniform(150, 350) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * ts))  # vibrato
            bounds = np.cumsum(rng.uniform(0.15, 0.35, 20))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        syl = np.minimum(np.searchsorted(bounds, ts), len(bounds) - 1)
        formant = rng.choice(formants, size=len(bounds))[syl]
        starts = np.concatenate([[0.0], bounds])[syl]
        ends = bounds[syl]
        u = np.clip((ts - starts) / np.maximum(ends - starts, 1e-3), 0, 1)
        env = np.sin(np.pi * u) ** 0.5 * rng.uniform(0.5, 1.0, len(bounds))[syl]
        sig = np.zeros_like(ts)
        for h in range(1, 13):
            sig += np.exp(-((h * f0 - formant) / 300.0) ** 2) * np.sin(h * phase) + 0.05 * np.sin(h * phase) / h
        if talking:   # a consonant: 40 ms of noise opening each syllable
            sig += (rng.normal(0, 1, len(ts)) * 1.5 * (ts - starts < 0.04)) * np.exp(-(ts - starts) / 0.02)
        out[a:b] += (0.25 * env * sig / 2.0).astype(np.float32)
    return out


def _opening(t: np.ndarray, onsets, lead: float) -> np.ndarray:
    """The anticipation profile (rules ≥ 2), in [0, 1]: rises over RISE s from ``lead`` s before each
    onset, stays open until the onset, closes over RELEASE s after it."""
    out = np.zeros_like(t)
    rise = min(RISE, lead / 2)
    for o in onsets:
        up = np.clip((t - (o - lead)) / rise, 0, 1)
        down = np.clip((t - o) / RELEASE, 0, 1)
        out = np.maximum(out, (0.5 - 0.5 * np.cos(np.pi * up)) * (0.5 + 0.5 * np.cos(np.pi * down)))
    return out


def _voiced(t: np.ndarray, phrases: list[tuple[float, float]], fps: int) -> np.ndarray:
    """1 on frames inside a phrase (one frame of slack each side: the 3-frame smoothed envelope), else 0."""
    g = np.zeros_like(t)
    for o, d in phrases:
        g[(t >= o - 1.0 / fps) & (t <= o + d + 1.0 / fps)] = 1.0
    return g


def _bgm(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    bpm = rng.uniform(80, 130)
    period = 60.0 / bpm
    beats = np.arange(rng.uniform(0, period), n / sr, period)
    ts = np.arange(n) / sr
    out = 0.03 * np.sin(2 * np.pi * rng.uniform(80, 160) * ts)  # a quiet drone
    k = np.arange(int(0.15 * sr)) / sr
    kick = 0.6 * np.exp(-k / 0.04) * np.sin(2 * np.pi * (50 + 80 * np.exp(-k / 0.02)) * k)
    hat = 0.1 * rng.normal(0, 1, int(0.03 * sr)) * np.exp(-np.arange(int(0.03 * sr)) / (0.008 * sr))
    for b in beats:
        i = int(b * sr)
        out[i:i + len(kick)] += kick[:n - i]
        j = int((b + period / 2) * sr)
        if j < n:
            out[j:j + len(hat)] += hat[:n - j]
    return out.astype(np.float32), beats


def _frame_features(audio: np.ndarray, sr: int, fps: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """RMS envelope (T,) and 8 log-band energies squashed to [0, 1] (T, 8), one per video frame."""
    n_fft = 1024
    pad = np.pad(audio, (n_fft // 2, n_fft))
    idx = np.round(np.arange(n_frames) * sr / fps).astype(int)[:, None] + np.arange(n_fft)[None]
    frames = pad[idx] * np.hanning(n_fft)
    rms = np.sqrt((pad[idx[:, n_fft // 4: 3 * n_fft // 4]] ** 2).mean(1))
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    edges = np.geomspace(100, 4000, N_BANDS + 1)
    bands = np.stack([spec[:, (freqs >= lo) & (freqs < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
    bands = np.clip((np.log10(bands + 1e-6) + 2.0) / 5.0, 0, 1)
    return rms, bands


def synthesize_song(cfg: SynthConfig, rng: np.random.Generator, n_singers: int | None = None) -> Song:
    """One song; ``n_singers`` defaults to ``cfg.n_singers`` (its first entry when it is a list)."""
    n_singers = cfg.singers_of(0) if n_singers is None else n_singers
    n = int(round(cfg.seconds * cfg.sr))
    n_frames = int(cfg.seconds * cfg.fps)
    t = np.arange(n_frames) / cfg.fps
    if cfg.rules == 1:
        tracks, onsets = zip(*[_sing(rng, n, cfg.sr) for _ in range(n_singers)])
        phrases = None
        bgm, beats = _bgm(rng, n, cfg.sr)
    else:
        if cfg.talking:   # one talker; the other slots stay silent (no partner), no music
            phrases = [_schedule(rng, cfg.seconds, talking=True)] + [[] for _ in range(n_singers - 1)]
        else:
            phrases = _call_and_response(rng, [_schedule(rng, cfg.seconds) for _ in range(n_singers)], cfg.solo,
                                         margin=cfg.anticipation + RELEASE)
        tracks = [_render(rng, ph, n, cfg.sr, talking=cfg.talking) for ph in phrases]
        onsets = [np.asarray([o for o, _ in ph], float) for ph in phrases]
        if cfg.talking:
            bgm, beats = np.zeros(n, np.float32), np.zeros(0)
        else:
            bgm, beats = _bgm(rng, n, cfg.sr)
    m = _expression_map()
    lips = _anticipation_lips()
    smile = _listener_expression()
    coeffs = np.zeros((n_singers, n_frames, 56), np.float32)
    nod = cfg.nod * _bump(t, beats, 0.0, 0.35)
    for s in range(n_singers):
        rms, bands = _frame_features(tracks[s], cfg.sr, cfg.fps, n_frames)
        env = np.clip(np.convolve(rms, np.ones(3) / 3, mode="same") / 0.15, 0, 1.5)
        direction = 1.0 if s < (n_singers - 1) / 2 or n_singers == 1 else -1.0
        partner_onsets = np.concatenate([onsets[p] for p in range(n_singers) if p != s] or [np.zeros(0)])
        turn = cfg.turn * np.tanh(_bump(t, partner_onsets, 0.2, 1.2))
        drift = gaussian_filter1d(rng.normal(0, 1, (n_frames, 3)), sigma=45, axis=0) * 0.03 * np.sqrt(45)
        # silent-singer rule (rules ≥ 2): no audio-driven mouth or expression outside the host's phrases
        gate = np.ones(n_frames) if phrases is None else _voiced(t, phrases[s], cfg.fps)
        f = coeffs[s]
        f[:, EXP] = (bands @ m.T) * gate[:, None] + rng.normal(0, 0.05 * cfg.noise, (n_frames, N_EXP))
        f[:, JAW_OPEN] = 0.3 * env * gate
        f[:, JAW.start + 1] = 0.02 * env * gate       # the jaw's small sideways turn (about y)
        if cfg.anticipation > 0:
            if cfg.rules == 1:   # a bump of 2 × lead starting ``lead`` s before each onset: it peaks at the onset
                pre = cfg.anticipation_amp * _bump(t, onsets[s], -cfg.anticipation, 2 * cfg.anticipation)
            else:
                pre = cfg.anticipation_amp * _opening(t, onsets[s], cfg.anticipation)
            f[:, JAW_OPEN] += pre
            f[:, EXP] += pre[:, None] * lips[None]
        if cfg.listener > 0:
            f[:, EXP] += cfg.listener * listener_profile(t, partner_onsets)[:, None] * smile[None]
        f[:, JAW] += rng.normal(0, 0.005 * cfg.noise, (n_frames, 3))
        f[:, POSE.start] = nod                          # pitch
        f[:, POSE.start + 1] = direction * (0.15 + turn)   # yaw
        f[:, POSE] += drift + rng.normal(0, 0.005 * cfg.noise, (n_frames, 3))
    return Song(vocals=np.stack(tracks), bgm=bgm, coeffs=coeffs, beats=beats, onsets=list(onsets),
                phrases=phrases)


def video_splits(n_videos: int, seed: int) -> list[str]:
    """60/10/30 split by video (no song leaks across splits); at least one val/test video when n ≥ 3."""
    order = np.random.default_rng(seed + 7).permutation(n_videos)
    n_val = max(1, round(0.1 * n_videos)) if n_videos >= 3 else 0
    n_test = max(1, round(0.3 * n_videos)) if n_videos >= 3 else 0
    split = ["train"] * n_videos
    for i in order[:n_val]:
        split[i] = "val"
    for i in order[n_val:n_val + n_test]:
        split[i] = "test"
    return split


def write_synth_lmdb(out: str | Path, cfg: SynthConfig) -> dict[str, int]:
    """Write ``cfg.videos`` synthetic songs as packed windows; returns window counts per split."""
    if (cfg.window * cfg.sr) % cfg.fps:
        raise ValueError("window * sr must be divisible by fps (whole audio samples per window)")
    bad = [g for g in cfg.coeff_groups if g not in GROUPS]
    if bad or not cfg.coeff_groups:
        raise ValueError(f"coeff_groups must be a non-empty subset of {list(GROUPS)}, got {list(cfg.coeff_groups)}")
    if min(cfg.singers_of(v) for v in range(max(cfg.videos, 1))) < 2:
        raise ValueError(f"every video needs at least 2 singers, got n_singers={cfg.n_singers}")
    if cfg.talking and cfg.n_singers != 2:
        raise ValueError(f"a talking corpus has one talker and one silent partner track (n_singers=2), "
                         f"got n_singers={cfg.n_singers}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty: synth writes a new LMDB; "
                              "choose another --out or remove it")
    # Written under a temporary name and renamed when complete: a killed synth leaves no half LMDB at
    # ``out`` (which `pachorus bench` would take for a finished one).
    final, out = out, out.with_name(f".{out.name}.tmp")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spw = cfg.window * cfg.sr // cfg.fps
    max_s = max(cfg.singers_of(v) for v in range(cfg.videos))
    per_window = max_s * (cfg.window * 56 * 4 + spw * 2) + spw * 2 + 4096
    n_win = max(1, int((cfg.seconds * cfg.fps - cfg.window) // cfg.stride) + 1)
    env = open_env(out, write=True, map_size=max(1 << 26, int(per_window * n_win * cfg.videos * 1.5)))
    splits = video_splits(cfg.videos, cfg.seed)
    with env.begin(write=True) as txn:
        write_meta(txn, fps=cfg.fps, sr=cfg.sr, window=cfg.window, stride=cfg.stride,
                   extra={"synthetic": True, "synth_config": asdict(cfg), "fit_backend": "synthetic",
                          "talking": cfg.talking,
                          "coeff_groups": [g for g in GROUPS if g in cfg.coeff_groups]})
    for v in range(cfg.videos):
        rng = np.random.default_rng([cfg.seed, v])
        n_singers = cfg.singers_of(v)
        song = synthesize_song(cfg, rng, n_singers)
        name = f"synth{v:04d}"
        with env.begin(write=True) as txn:
            for start in range(0, song.coeffs.shape[1] - cfg.window + 1, cfg.stride):
                c = song.coeffs[:, start:start + cfg.window].copy()
                c[:, :, POSE] += rng.normal(0, cfg.window_offset, (n_singers, 1, 3)).astype(np.float32)
                for g, sl in GROUPS.items():
                    if g not in cfg.coeff_groups:   # not estimated: stored as zeros, as a fit backend would
                        c[:, :, sl] = 0.0
                a = int(round(start * cfg.sr / cfg.fps))
                arrays = {"coeffs": c.astype(np.float32), "vocals": song.vocals[:, a:a + spw].astype(np.float16),
                          "bgm": song.bgm[a:a + spw].astype(np.float16), "pose0": c[:, 0, POSE].copy()}
                header = {"video": name, "segment": 0, "start": start, "split": splits[v]}
                txn.put(window_key(name, 0, start), encode_arrays(arrays, header))
    with env.begin(write=True) as txn:
        index = rebuild_index(txn)
    env.sync()
    env.close()
    counts = {s: len(index[s]) for s in SPLITS}
    (out / "synth_config.json").write_text(json.dumps({"config": asdict(cfg), "windows": counts}, indent=2))
    os.replace(out, final)   # over an empty folder, or none
    return counts
