"""Typed payloads: the arrays one stage hands the next, with their shapes and frame timing checked on load.

A stage's record carries small values and paths; the arrays live in files beside it (``.npz``, or for
``chorushead separate`` a folder of wavs and ``separation.json``). Each such file has a class here
that says what it holds and is the one place that reads or writes it: readers get typed fields
(``det.probs``), never a string key, and a file that does not match (a missing array, another dtype
kind, inconsistent shapes, another fps or start frame than its record) raises :class:`BadPayload`
naming the file and the stage to rerun. The stages hand them out through their ``Outputs``
(``crop.Outputs.of(record).load(out, fps)``, ``smooth.Outputs.of(record).load_segment(out, i)``).

The files are the ones the stages always wrote (same names, keys and dtypes), so a build made before
these classes existed stays current. Dtypes are checked by kind (float / integer / bool) and arrays
come back as stored. Arrays marked optional were not written by every version or backend (``found``:
the landmarks fit; ``shape``/``cam``: EMOCA's) and are None when absent.

Payloads without arrays need no class: contiguity's segments and assign's order and correlations are
record fields (their stages' ``Outputs``).
"""
from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from chorushead.core.errors import StageError
from chorushead.core.manifest import write_json_atomic
from chorushead.core.windows import N_COEFFS

T = TypeVar("T", bound="NpzPayload")


class BadPayload(StageError):
    """A stage's output file does not hold what its class says: one line, naming the file and the stage."""


@dataclass(frozen=True)
class Array:
    """One array of a payload: its key in the file, dtype kind, and dims (a name binds one size across
    the payload's arrays, an int is fixed, ``()`` a scalar)."""
    name: str
    kind: str                       # numpy dtype kinds accepted: "f" float, "iu" integer, "b" bool
    dims: tuple[str | int, ...]
    optional: bool = False


class NpzPayload:
    """Base of the ``.npz`` payloads: a dataclass whose fields are the arrays of :attr:`ARRAYS` (same
    names, same order: the order ``save`` writes them in)."""

    ARRAYS: ClassVar[tuple[Array, ...]] = ()
    STAGE: ClassVar[str] = ""       # who writes it: what to rerun when it is wrong

    @classmethod
    def fail(cls, path: Path, why: str) -> BadPayload:
        return BadPayload(f"{path}: {why}; rerun stage {cls.STAGE}")

    @classmethod
    def read(cls: type[T], path: str | Path) -> tuple[T, dict[str, int]]:
        """The payload at ``path`` and the sizes its dims bound (``{"S": 2, "T": 212}``)."""
        path = Path(path)
        if not path.is_file():
            raise cls.fail(path, f"{cls.__name__} file missing")
        try:
            with np.load(path, allow_pickle=False) as z:
                stored = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:   # a torn or foreign file
            raise cls.fail(path, f"unreadable ({type(e).__name__}: {e})") from None
        sizes: dict[str, int] = {}
        values: dict[str, Any] = {}
        for a in cls.ARRAYS:
            v = stored.get(a.name)
            if v is None:
                if not a.optional:
                    raise cls.fail(path, f"no array {a.name!r} (holds {sorted(stored)})")
                values[a.name] = None
                continue
            if v.dtype.kind not in a.kind:
                raise cls.fail(path, f"{a.name} is {v.dtype}, expected kind {a.kind!r}")
            if v.ndim != len(a.dims):
                raise cls.fail(path, f"{a.name} has shape {v.shape}, expected {len(a.dims)} dims {a.dims}")
            for dim, n in zip(a.dims, v.shape):
                want = dim if isinstance(dim, int) else sizes.setdefault(dim, n)
                if n != want:
                    raise cls.fail(path, f"{a.name} has shape {v.shape}: its {dim} is {n}, expected {want}")
            values[a.name] = v
        return cls(**values), sizes   # type: ignore[call-arg]

    def save(self, path: str | Path) -> Path:
        """Write the arrays that are not None, in declaration order (``np.savez``, as the stages always did)."""
        path = Path(path)
        np.savez(path, **{a.name: v for a in self.ARRAYS if (v := getattr(self, a.name)) is not None})
        return path

    @classmethod
    def expect(cls, path: Path, what: str, got: int, want: int | None) -> None:
        if want is not None and got != want:
            raise cls.fail(path, f"{what} is {got}, its record says {want}")


# ----------------------------------------------------------------------------- crop
@dataclass
class Detections(NpzPayload):
    """``crop/detections.npz``: per strip S and frame T of the trimmed video (crop frame t = timeline
    frame ``start_frame + t``), in strip pixels of the full-resolution frame. Only ``probs`` is read by
    every consumer; the rest is what crop v4 writes (older or hand-made files may lack it)."""
    ARRAYS: ClassVar = (Array("boxes", "f", ("S", "T", 4), True), Array("probs", "f", ("S", "T")),
                        Array("landmarks", "f", ("S", "T", 5, 2), True), Array("n_faces", "iu", ("S", "T"), True),
                        Array("crop_boxes", "f", ("S", "T", 4), True), Array("detected", "b", ("S", "T"), True),
                        Array("strip_x0", "iu", ("S",), True), Array("strip_width", "iu", (), True),
                        Array("fps", "iu", (), True), Array("start_frame", "iu", (), True),
                        Array("crop_size", "iu", (), True))
    STAGE: ClassVar = "crop"
    boxes: np.ndarray | None          # (S, T, 4) float32, NaN where no face
    probs: np.ndarray                 # (S, T) float32, 0 where no face
    landmarks: np.ndarray | None      # (S, T, 5, 2) float32
    n_faces: np.ndarray | None        # (S, T) int16: confident faces in the strip
    crop_boxes: np.ndarray | None     # (S, T, 4) float32
    detected: np.ndarray | None       # (S, T) bool: the full pyramid ran (else tracked)
    strip_x0: np.ndarray | None       # (S,) int32
    strip_width: np.ndarray | None    # () int32
    fps: np.ndarray | None            # () int32, the build's
    start_frame: np.ndarray | None    # () int32, vad's start frame
    crop_size: np.ndarray | None      # () int32

    @property
    def n_strips(self) -> int:
        return int(self.probs.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.probs.shape[1])

    @classmethod
    def load(cls, path: str | Path, *, fps: int | None = None, start: int | None = None,
             frames: int | None = None) -> "Detections":
        """Checked against the build's ``fps`` and the crop record's ``start`` frame and ``frames`` (when given)."""
        path = Path(path)
        det, sizes = cls.read(path)
        cls.expect(path, "its frame count", sizes["T"], frames)
        if det.fps is not None:
            cls.expect(path, "its fps", int(det.fps), fps)
        if det.start_frame is not None:
            cls.expect(path, "its start frame", int(det.start_frame), start)
        return det


# ----------------------------------------------------------------------------- fingerprint
@dataclass
class AudioPrint(NpzPayload):
    """``fingerprint/audio.npz``: Chromaprint's raw fingerprint of the video's sound, one uint32
    sub-fingerprint per ~0.124 s (pack's duplicate check aligns and compares them)."""
    ARRAYS: ClassVar = (Array("fingerprint", "iu", ("A",)),)
    STAGE: ClassVar = "fingerprint"
    fingerprint: np.ndarray           # (A,) uint32

    @classmethod
    def load(cls, path: str | Path) -> "AudioPrint":
        return cls.read(path)[0]


@dataclass
class FrameHashes(NpzPayload):
    """``fingerprint/frames.npz``: a 64-bit difference hash per frame sampled at ``sample_fps``, and
    whether the frame had enough contrast to be compared (flat frames: fades, black)."""
    ARRAYS: ClassVar = (Array("hashes", "iu", ("F",)), Array("informative", "b", ("F",)),
                        Array("sample_fps", "iu", ()))
    STAGE: ClassVar = "fingerprint"
    hashes: np.ndarray                # (F,) uint64
    informative: np.ndarray           # (F,) bool
    sample_fps: np.ndarray            # () int

    @classmethod
    def load(cls, path: str | Path, sample_fps: int | None = None) -> "FrameHashes":
        """Checked against the record's ``sample_fps`` (when given)."""
        path = Path(path)
        h = cls.read(path)[0]
        cls.expect(path, "its sample rate (frames/s)", int(h.sample_fps), sample_fps)
        return h


# ----------------------------------------------------------------------------- fit
@dataclass
class FitSegment(NpzPayload):
    """``fit/seg{i:03d}.npz``: one contiguity segment's fitted coefficients per singer (strip order),
    ``[exp 50, jaw 3, pose 3]`` per frame; written by the fit backends (EMOCA: + ``shape``, ``cam``;
    landmarks: + ``found``)."""
    ARRAYS: ClassVar = (Array("coeffs", "f", ("S", "T", N_COEFFS)), Array("frames", "iu", (2,), True),
                        Array("found", "b", ("S", "T"), True), Array("shape", "f", ("S", "T", "D"), True),
                        Array("cam", "f", ("S", "T", 3), True))
    STAGE: ClassVar = "fit"
    coeffs: np.ndarray                # (S, T, 56) float32
    frames: np.ndarray | None = None  # (2,) int64: [start, end) in crop frames
    found: np.ndarray | None = None   # (S, T) bool: a face was found (else interpolated)
    shape: np.ndarray | None = None   # (S, T, 100) float32: EMOCA's identity code per frame
    cam: np.ndarray | None = None     # (S, T, 3) float32

    @classmethod
    def load(cls, path: str | Path, span: tuple[int, int] | None = None) -> "FitSegment":
        """Checked against the contiguity segment ``span`` = [start, end) it was fitted on (when given)."""
        path = Path(path)
        seg, sizes = cls.read(path)
        if seg.frames is not None:
            a, b = (int(x) for x in seg.frames)
            cls.expect(path, "its frame count (end - start)", sizes["T"], b - a)
            if span is not None and (a, b) != tuple(span):
                raise cls.fail(path, f"it covers frames [{a}, {b}), the segment is [{span[0]}, {span[1]})")
        elif span is not None:
            cls.expect(path, "its frame count", sizes["T"], span[1] - span[0])
        return seg


# ----------------------------------------------------------------------------- smooth
@dataclass
class SmoothSegment(NpzPayload):
    """``smooth/seg{i:03d}.npz``: one segment's coefficients smoothed along time, and the raw fit."""
    ARRAYS: ClassVar = (Array("coeffs", "f", ("S", "T", N_COEFFS)), Array("raw", "f", ("S", "T", N_COEFFS), True))
    STAGE: ClassVar = "smooth"
    coeffs: np.ndarray                # (S, T, 56) float32, smoothed
    raw: np.ndarray | None = None     # (S, T, 56) the fit's, unsmoothed

    @classmethod
    def load(cls, path: str | Path, frames: int | None = None) -> "SmoothSegment":
        """Checked against the segment's length in ``frames`` (when given)."""
        path = Path(path)
        seg, sizes = cls.read(path)
        cls.expect(path, "its frame count", sizes["T"], frames)
        return seg


# ----------------------------------------------------------------------------- separate
SEPARATION_FILE = "separation.json"


@dataclass
class Separation:
    """What ``chorushead separate`` writes to a folder: ``separation.json`` (this) beside the tracks it
    names (paths relative to the folder). ``pachorus infer --song`` reads it back with :meth:`load`."""
    song: str
    video: str | None
    vocals: str
    accompaniment: str
    singers: list[str]               # singer<k>.wav, k = 1..N in the order below
    order_source: str                # "assign (video)" or "separator"
    order: list[int]                 # singer k+1 = duet_split track order[k]
    note: str                        # the order, said in words
    confidence: float | None = None  # assign's margin per singer (video only)
    low_confidence: bool | None = None
    models: dict[str, str] = field(default_factory=dict)
    build: str = ""                  # the one-item build folder (manifests, per-stage outputs)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / SEPARATION_FILE
        write_json_atomic(path, dataclasses.asdict(self))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "Separation":
        """Read and check ``<folder>/separation.json``: every field known and present, one singer per
        order entry, and every track it names on disk."""
        path = Path(folder) / SEPARATION_FILE
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise BadPayload(f"{path}: unreadable ({type(e).__name__}: {e}); rerun `chorushead separate`") from None
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        if not isinstance(d, dict) or set(d) - names or required - set(d):
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise BadPayload(f"{path}: holds {got}, expected the fields of Separation; rerun `chorushead separate`")
        sep = cls(**d)
        if len(sep.singers) != len(sep.order):
            raise BadPayload(f"{path}: {len(sep.singers)} singer track(s) for an order of {len(sep.order)}")
        missing = [n for n in (sep.vocals, sep.accompaniment, *sep.singers) if not (Path(folder) / n).is_file()]
        if missing:
            raise BadPayload(f"{path}: names {', '.join(missing)}, not in {folder}; rerun `chorushead separate`")
        return sep

    def paths(self, folder: str | Path) -> tuple[list[Path], Path]:
        """The singers' tracks (in order) and the accompaniment, as paths under ``folder``."""
        folder = Path(folder)
        return [folder / n for n in self.singers], folder / self.accompaniment
