"""ffmpeg wrappers: probe, decode audio and frames, write wav, encode video, cut review clips.

We use the static ffmpeg that ships inside ``imageio-ffmpeg`` (no ffprobe there), so probing parses
``ffmpeg -i`` output. Frames are always decoded through ffmpeg's ``fps`` filter onto a constant
30 fps timeline: that is what "normalise to constant 30 fps" means here, without re-encoding the
video (no generation loss, and the video is decoded once per build instead of twice).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from chorushead.core.errors import BadInput


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """imageio-ffmpeg's bundled binary, else one on PATH."""
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # pragma: no cover - depends on the install
        exe = shutil.which("ffmpeg")
        if exe:
            return exe
        raise RuntimeError("ffmpeg not found: `pip install imageio-ffmpeg` or `apt-get install ffmpeg`.")


def ffmpeg_for_tools() -> str | None:
    """The binary above for a third-party library that runs ffmpeg itself (yt-dlp merging a download's
    separate video and audio streams): no command line of ours, the same ffmpeg. None when there is none."""
    try:
        return ffmpeg_exe()
    except RuntimeError:  # pragma: no cover - depends on the install
        return None


@dataclass
class Probe:
    duration: float
    width: int
    height: int
    fps: float            # the stream's nominal rate (may be wrong for VFR; we resample anyway)
    video_codec: str
    has_audio: bool
    audio_rate: int | None
    audio_channels: int | None


_DUR = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VID = re.compile(r"Stream #\S+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_FPS = re.compile(r"([\d.]+) (?:fps|tbr)")
_AUD = re.compile(r"Stream #\S+.*?: Audio: (\w+).*?, (\d+) Hz, ([^,]+)")


def probe(path: str | Path) -> Probe:
    """Probe a media file with ``ffmpeg -i``. Raises BadInput with ffmpeg's own complaint."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: file does not exist")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise BadInput(f"{path}: cannot read the file ({e.strerror}); check its permissions") from e
    p = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                       capture_output=True, text=True, errors="replace")
    err = p.stderr
    vid = _VID.search(err)
    if vid is None:
        last = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        raise BadInput(f"{path.name}: ffmpeg finds no video stream ({last[0].strip()}). "
                       "The file is not a video or is damaged.")
    dur = _DUR.search(err)
    duration = 0.0
    if dur:
        h, m, s = dur.groups()
        duration = int(h) * 3600 + int(m) * 60 + float(s)
    vline = err[vid.start():].splitlines()[0]
    fps_m = _FPS.search(vline)
    aud = _AUD.search(err)
    channels = None
    if aud:
        layout = aud.group(3).strip()
        n = re.match(r"(\d+)(?:\.(\d+))?", layout)     # "6 channels"; "5.1(side)" is 5 + 1 (LFE)
        channels = {"mono": 1, "stereo": 2}.get(layout) or (int(n.group(1)) + int(n.group(2) or 0) if n else 2)
    return Probe(duration=duration, width=int(vid.group(2)), height=int(vid.group(3)),
                 fps=float(fps_m.group(1)) if fps_m else 0.0, video_codec=vid.group(1),
                 has_audio=aud is not None, audio_rate=int(aud.group(2)) if aud else None,
                 audio_channels=channels)


def load_audio(path: str | Path, sr: int, mono: bool = True, start: float = 0.0,
               duration: float | None = None) -> np.ndarray:
    """Decode any audio (or a video's audio) to float32 at ``sr``: (n,) if mono else (n, 2)."""
    ch = 1 if mono else 2
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
    if start > 0:
        cmd += ["-ss", f"{start:.6f}"]
    cmd += ["-i", str(path)]
    if duration is not None:
        cmd += ["-t", f"{duration:.6f}"]
    cmd += ["-vn", "-ac", str(ch), "-ar", str(sr), "-f", "f32le", "-"]
    p = subprocess.run(cmd, capture_output=True)
    if p.returncode != 0:
        raise BadInput(f"{Path(path).name}: cannot decode audio: {p.stderr.decode(errors='replace').strip()[-300:]}")
    a = np.frombuffer(p.stdout, dtype=np.float32)
    return a.copy() if mono else a.reshape(-1, 2).copy()


def write_wav(path: str | Path, audio: np.ndarray, sr: int) -> None:
    """float32 WAV (no clipping surprises for separated stems that exceed ±1)."""
    from scipy.io import wavfile
    wavfile.write(str(path), sr, np.asarray(audio, dtype=np.float32))


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    from scipy.io import wavfile
    sr, a = wavfile.read(str(path))
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    elif a.dtype == np.int32:
        a = a.astype(np.float32) / 2147483648.0
    return a.astype(np.float32), int(sr)


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling along axis 0 (exact rational ratio)."""
    if sr_in == sr_out:
        return audio.astype(np.float32)
    from math import gcd
    from scipy.signal import resample_poly
    g = gcd(sr_in, sr_out)
    return resample_poly(audio, sr_out // g, sr_in // g, axis=0).astype(np.float32)


def iter_frames(path: str | Path, fps: int = 30, start_frame: int = 0, n_frames: int | None = None,
                scale: tuple[int, int] | None = None, chunk: int = 32, convert: str = "ffmpeg",
                ) -> Iterator[np.ndarray]:
    """Decode RGB frames on a constant ``fps`` timeline, in chunks of (k, H, W, 3) uint8.

    Frame i of the timeline is the source frame shown at time i/fps (ffmpeg's fps filter). The range
    is cut with the ``trim`` filter after ``fps``, so indices are exact whatever the source's rate.
    convert: who turns the video's YUV into RGB. "ffmpeg" (swscale); "opencv": ffmpeg pipes yuv420p
    (half the bytes) and OpenCV converts in the consuming thread (BT.601 like swscale's default,
    measured ~3x less CPU; pixel values may differ by rounding). Odd frame sizes use "ffmpeg".
    """
    pr = probe(path)
    w, h = scale or (pr.width, pr.height)
    yuv = convert == "opencv" and w % 2 == 0 and h % 2 == 0
    vf = [f"fps={fps}"]
    if start_frame or n_frames is not None:
        end = f":end_frame={start_frame + n_frames}" if n_frames is not None else ""
        # setpts: trim keeps the original timestamps, and rawvideo output would pad from t=0 with
        # copies of the first kept frame; restarting the clock makes index 0 = start_frame exactly.
        vf.append(f"trim=start_frame={start_frame}{end},setpts=PTS-STARTPTS")
    if scale:
        vf.append(f"scale={w}:{h}:flags=area")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path), "-an",
           "-vf", ",".join(vf), "-pix_fmt", "yuv420p" if yuv else "rgb24", "-f", "rawvideo", "-"]
    yield from _pipe_frames(cmd, path, w, h, yuv, chunk)


def timeline_origin(path: str | Path, fps: int = 30) -> int:
    """The pts (in 1/fps units) of frame 0 of the ``fps`` timeline that :func:`iter_frames` decodes:
    ffmpeg's fps filter numbers its output from the first video frame's rounded timestamp, which is
    not 0 when the video starts after the file (e.g. 0.47 s after the audio: 14 at 30 fps)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "info", "-i", str(path), "-an",
           "-vf", f"fps={fps},showinfo", "-frames:v", "1", "-f", "null", "-"]
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    m = re.search(r"\bn:\s*0\s+pts:\s*(-?\d+)", p.stderr)
    if m is None:
        raise BadInput(f"{Path(path).name}: cannot decode the first video frame: {p.stderr.strip()[-300:]}")
    return int(m.group(1))


def iter_frames_from(path: str | Path, fps: int = 30, start_frame: int = 0, n_frames: int | None = None,
                     chunk: int = 32, convert: str = "ffmpeg", origin: int | None = None,
                     margin_s: float = 1.0) -> Iterator[np.ndarray]:
    """:func:`iter_frames` (same frames, same chunks) for a range deep inside a long video, without
    decoding everything before it: ffmpeg seeks to the keyframe at or before ``start_frame``'s time
    minus ``margin_s`` (``-noaccurate_seek``: every frame from that keyframe on reaches the filters)
    and keeps the file's timestamps (``-copyts -start_at_zero``: the same ones a decode from the start
    sees), so the ``fps`` filter picks the same source frame for every timeline pts; ``trim`` then cuts
    by pts, not by counting. ``origin``: :func:`timeline_origin` (probed when None).
    """
    pr = probe(path)
    w, h = pr.width, pr.height
    yuv = convert == "opencv" and w % 2 == 0 and h % 2 == 0
    p0 = timeline_origin(path, fps) if origin is None else int(origin)
    first = p0 + int(start_frame)
    seek = first / fps - margin_s           # margin >= 1 frame: the frame shown at ``first`` is decoded
    trim = f"trim=start_pts={first}" + (f":end_pts={first + n_frames}" if n_frames is not None else "")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-copyts", "-start_at_zero"]
    if seek > 0:
        cmd += ["-noaccurate_seek", "-ss", f"{seek:.6f}"]
    cmd += ["-i", str(path), "-an", "-vf", f"fps={fps},{trim},setpts=PTS-STARTPTS",
            "-pix_fmt", "yuv420p" if yuv else "rgb24", "-f", "rawvideo", "-"]
    yield from _pipe_frames(cmd, path, w, h, yuv, chunk)


def _pipe_frames(cmd: list[str], path: str | Path, w: int, h: int, yuv: bool, chunk: int,
                 ) -> Iterator[np.ndarray]:
    """Run ``cmd`` (ffmpeg writing rawvideo frames to stdout) and yield (k, h, w, 3) RGB chunks (as
    :func:`iter_frames` does)."""
    frame_bytes = w * h * 3 // 2 if yuv else w * h * 3
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=frame_bytes * chunk)
    _grow_pipe(proc.stdout)
    try:
        while True:
            buf = proc.stdout.read(frame_bytes * chunk)
            if not buf:
                break
            k = len(buf) // frame_bytes
            if k and yuv:
                import cv2
                planes = np.frombuffer(buf[:k * frame_bytes], dtype=np.uint8).reshape(k, h * 3 // 2, w)
                rgb = np.empty((k, h, w, 3), np.uint8)
                for i in range(k):
                    cv2.cvtColor(planes[i], cv2.COLOR_YUV2RGB_I420, dst=rgb[i])
                yield rgb
            elif k:
                yield np.frombuffer(buf[:k * frame_bytes], dtype=np.uint8).reshape(k, h, w, 3)
            if len(buf) < frame_bytes * chunk:
                break
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        rc = proc.wait()
    if rc not in (0, None) and rc > 0:
        raise BadInput(f"{Path(path).name}: video decoding failed: {err.strip()[-300:]}")


def _grow_pipe(pipe) -> None:
    """Linux: a 1 MB pipe instead of 64 kB, so ffmpeg and the reader swap ~16x less often (measured
    ~10 context switches less per 1024² frame). Best effort: elsewhere the default stays."""
    try:
        import fcntl
        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass


def count_frames(duration: float, fps: int = 30) -> int:
    return int(np.floor(duration * fps + 1e-6))


class VideoWriter:
    """Streaming H.264 encoder: ``with VideoWriter(path, w, h, fps) as vw: vw.write(frame)``.

    Frames are RGB uint8 (H, W, 3) or a batch (k, H, W, 3), piped to ffmpeg as they come, so a long
    render never holds the whole video in memory. ``audio`` (a file) is muxed in, cut to the video.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: int = 30,
                 audio: str | Path | None = None, crf: int = 20):
        self.path = Path(path)
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-"]
        if audio is not None:
            cmd += ["-i", str(audio), "-c:a", "aac", "-b:a", "128k", "-shortest"]
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p", str(self.path)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frames: np.ndarray) -> None:
        self._proc.stdin.write(np.ascontiguousarray(frames, dtype=np.uint8).tobytes())

    def close(self) -> None:
        self._proc.stdin.close()
        err = self._proc.stderr.read()
        self._proc.stderr.close()
        if self._proc.wait() != 0:
            raise RuntimeError(f"ffmpeg could not encode {self.path}: {err.decode(errors='replace')[-500:]}")

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cut_clip(source: str | Path, dest: str | Path, start: float, duration: float, fps: int = 30,
             max_width: int = 640, crf: int = 23) -> None:
    """Cut [start, start + duration) seconds of ``source`` to an H.264/AAC mp4 for a browser.

    Re-encoded, not stream-copied, so the clip starts exactly on the first frame of the range (the
    same ``fps`` timeline as :func:`iter_frames`), has a keyframe every half second (instant seeking)
    and is at most ``max_width`` wide. Audio is kept when the source has any.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-ss", f"{start:.6f}", "-i", str(source), "-t", f"{duration:.6f}",
           "-map", "0:v:0", "-map", "0:a:0?",
           "-vf", f"fps={fps},scale='min({max_width},iw)':-2",
           "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
           "-g", str(max(1, fps // 2)), "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart", str(dest)]
    p = subprocess.run(cmd, capture_output=True)
    if p.returncode != 0 or not Path(dest).exists():
        Path(dest).unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not cut the clip from {Path(source).name}: "
                           f"{p.stderr.decode(errors='replace').strip()[-300:]}")


def encode_video(path: str | Path, frames: np.ndarray | list, fps: int = 30, audio: str | Path | None = None,
                 crf: int = 20) -> None:
    """Encode RGB uint8 frames (T, H, W, 3) to H.264 mp4, optionally muxing an audio file."""
    frames = np.asarray(frames)
    _, h, w, _ = frames.shape
    with VideoWriter(path, w, h, fps, audio=audio, crf=crf) as vw:
        vw.write(frames)
