"""`chorushead separate`: one song through the build's own separation (and, with its video, the assign step).

The song is built as a one-item build in ``<out>/build/`` by the runner, with the pipeline's stages and
parameters, so it is separated exactly as a dataset video is (Spleeter 2stems, MossFormer2 with the chunk
alignment and the full-band masks) and a rerun reuses what is done. An audio file runs ingest, bgm_split
and duet_split; a video also runs vad, crop, contiguity, fit, smooth and assign, whose order says which
voice belongs to which on-screen singer (strip k, left to right). Without a video the singer order is the
separator's, and ``separation.json`` says so.

Written to ``<out>``: ``vocals.wav``, ``accompaniment.wav`` (44.1 kHz stereo, as bgm_split writes them),
``singer1.wav``...``singerN.wav`` (44.1 kHz mono, from duet_split, in the order above) and
``separation.json``. ``pachorus infer --song`` runs this as a subprocess (pachorus imports only core).
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import Callable

from chorushead.core.errors import BadInput, StageError
from chorushead.core.manifest import iter_records
from chorushead.core.payloads import Separation
from chorushead.failures import first_failure
from chorushead.runner import VIDEO_EXTS, Pipeline, build, load_items, save_items, slug
from chorushead.stages import assign, bgm_split, duet_split, get_stage, ingest
from chorushead.stages.base import Item

AUDIO_STAGES = ["ingest", "bgm_split", "duet_split"]
VIDEO_STAGES = AUDIO_STAGES + ["vad", "crop", "contiguity", "fit", "smooth", "assign"]


def _item(song: Path) -> Item:
    song = song.absolute()
    return Item(id=f"{slug(song.stem)}-{hashlib.sha1(str(song).encode()).hexdigest()[:6]}", source=str(song))


def _check_song(song: Path, video: Path | None) -> Path | None:
    """The file that is built and whether it has a picture: a video song is its own video."""
    if not song.is_file():
        raise FileNotFoundError(f"--song {song}: file not found")
    is_video = song.suffix.lower() in VIDEO_EXTS
    if not is_video and song.suffix.lower() not in ingest.AUDIO_EXTS:
        raise BadInput(f"--song {song.name}: not an audio ({', '.join(sorted(ingest.AUDIO_EXTS))}) "
                       f"or video ({', '.join(sorted(VIDEO_EXTS))}) file")
    if video is not None:
        if not video.is_file():
            raise FileNotFoundError(f"--video {video}: file not found")
        if video.resolve() != song.resolve():
            # assign maps the tracks separated from the video's own soundtrack; a separately
            # supplied mix would be another separation whose order nothing ties to the faces.
            raise BadInput(f"--video {video.name} with --song {song.name}: the song must be the video's "
                           f"soundtrack; pass the video itself as --song {video.name}")
    return song if is_video else None


def separate(song: Path, out: Path, pipeline: Pipeline, video: Path | None = None, jobs: int = 1,
             progress: bool = False, log: Callable[[str], None] = print) -> Separation:
    """Separate ``song`` into ``out`` (see the module doc); raise StageError naming the stage that failed."""
    song, out = Path(song), Path(out)
    video = _check_song(song, None if video is None else Path(video))
    stages = VIDEO_STAGES if video is not None else AUDIO_STAGES
    missing = [s for s in stages if s not in pipeline.stages]
    if missing:
        raise ValueError(f"the pipeline has no stage(s) {missing}; separate needs {stages}")
    # A gate (the screen) picks videos for a dataset; a song to animate is separated whatever it shows,
    # so the gates leave the pipeline here (a pipeline without a gate ignores it: runner.Plan.needs).
    pipeline = dataclasses.replace(pipeline, stages=[s for s in pipeline.stages if not get_stage(s).gate])
    item = _item(song)
    work = out / "build"
    other = sorted(set(load_items(work)) - {item.id})
    if other:   # the build runs every item it knows: one folder, one song
        raise ValueError(f"{out} already holds the separation of another song ({other[0]}); choose another --out")
    work.mkdir(parents=True, exist_ok=True)
    save_items(work, [item])
    build(None, work, pipeline, stages=stages, jobs=jobs, progress=progress, log=log)
    latest = iter_records(work, pipeline.stages)
    problem = first_failure(latest, item.id, AUDIO_STAGES)
    if problem:
        raise StageError(problem)

    def rec(name: str):
        return latest[name][item.id]

    bgm = bgm_split.Outputs.of(rec("bgm_split"))
    duet = duet_split.Outputs.of(rec("duet_split"))
    order, source, conf, low = list(range(len(duet.singers))), "separator", None, None
    note = "singer order is the separator's (MossFormer2's track order): give the video to map voices to faces"
    if video is not None:
        problem = first_failure(latest, item.id, VIDEO_STAGES)
        if problem:
            raise StageError(problem)
        a = rec("assign")
        got = assign.Outputs.of(a)
        if a.status == "done":
            order = got.order + [j for j in order if j not in got.order]   # faces first, left to right
            source, conf, low = "assign (video)", got.confidence, got.low_confidence
            note = (f"singer k is the k-th face from the left (assign, confidence {got.confidence:.3f}"
                    f"{', LOW: check it' if got.low_confidence else ''})")
        else:
            note = f"singer order is the separator's: assign could not compare voices and faces ({a.reason})"
    shutil.copyfile(work / bgm.vocals, out / "vocals.wav")
    shutil.copyfile(work / bgm.accompaniment, out / "accompaniment.wav")
    for stale in out.glob("singer*.wav"):   # a rerun with fewer singers leaves none behind
        stale.unlink()
    singers = []
    for k, j in enumerate(order, start=1):
        shutil.copyfile(work / duet.singers[j], out / f"singer{k}.wav")
        singers.append(f"singer{k}.wav")
    spleeter = get_stage("bgm_split").make_params(pipeline.params.get("bgm_split"))
    models = {"spleeter": f"{spleeter.model} (ran in {rec('bgm_split').metrics.get('spleeter', '?')})",
              "mossformer2": str(rec("duet_split").metrics.get("model", ""))}
    if video is not None:
        models["fit"] = get_stage("fit").make_params(pipeline.params.get("fit")).backend
    sep = Separation(song=str(song.absolute()), video=None if video is None else str(video.absolute()),
                     vocals="vocals.wav", accompaniment="accompaniment.wav", singers=singers,
                     order_source=source, order=order, note=note, confidence=conf, low_confidence=low,
                     models=models, build=str(work))
    sep.save(out)
    return sep
