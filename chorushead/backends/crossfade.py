"""Separating a long recording in overlapping chunks: where the chunks start, and the linear cross-fade
that joins them. One copy for both chunked separators: Spleeter (``spleeter_worker.py``, under
Spleeter's own interpreter) and MossFormer2 (``stages/duet_split.py``).

Like ``worker_protocol.py`` this file runs where chorushead is not installed: numpy only, Python 3.8
syntax; the worker imports it from its own folder.
"""
import numpy as np


def chunk_starts(n, chunk, overlap):
    """Start sample of each chunk of ``n`` samples: every ``chunk - overlap`` samples, the last one
    ending at ``n`` (so every chunk has the same length and the last overlap may be longer)."""
    if chunk <= 0 or n <= chunk:
        return [0]
    hop = max(1, chunk - overlap)
    starts = list(range(0, n - chunk, hop))
    starts.append(n - chunk)
    return starts


def crossfade_into(out, start, written_end, piece):
    """Write ``piece`` (time on axis 0) into ``out`` from sample ``start``: over what is already written
    (up to ``written_end``) a linear fade from the old samples to the new ones, after that a copy.
    The weights of old and new sum to one, so stems that sum to the mix in every chunk still do.
    Returns the new written end."""
    ov = max(0, written_end - start)
    ramp = np.linspace(0.0, 1.0, ov + 2, dtype=np.float32)[1:-1]   # 0 and 1 excluded: both chunks count
    ramp = ramp.reshape((-1,) + (1,) * (piece.ndim - 1))
    out[start:start + ov] = out[start:start + ov] * (1 - ramp) + piece[:ov] * ramp
    out[start + ov:start + len(piece)] = piece[ov:]
    return start + len(piece)
