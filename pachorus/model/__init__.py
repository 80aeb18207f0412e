"""PaChorus networks: audio encoders, Host Animator, Partner-aware Motion Prior (CVAE), baselines."""
from .audio import AudioEncoderUnavailable, LogMelEncoder, Wav2Vec2Encoder, build_audio_encoder
from .pachorus import VARIANTS, ModelConfig, ModelOutput, PaChorus, build_model, load_model

__all__ = ["AudioEncoderUnavailable", "LogMelEncoder", "Wav2Vec2Encoder", "build_audio_encoder", "VARIANTS",
           "ModelConfig", "ModelOutput", "PaChorus", "build_model", "load_model"]
