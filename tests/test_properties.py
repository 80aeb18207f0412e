"""Properties that hold for all inputs, tested with hypothesis (issue 23, part 6): the window format's
round trip, a manifest's append / torn-line repair, fingerprint stability, the split by video.
Each property runs a few dozen generated examples (seconds); a failure prints the smallest example."""
from __future__ import annotations

import json
import random
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")   # a test dependency (pyproject's test extra)
from hypothesis import HealthCheck, assume, given, settings, strategies as st   # noqa: E402
from hypothesis.extra import numpy as hnp   # noqa: E402

from chorushead.core.manifest import Manifest, Record, fingerprint   # noqa: E402
from chorushead.core.windows import array_views, decode_arrays, encode_arrays   # noqa: E402

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- JSON values
json_scalars = st.none() | st.booleans() | st.integers(-2 ** 53, 2 ** 53) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4) |
                           st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
json_dicts = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


# ----------------------------------------------------------------------------- window format round trip
DTYPES = ["<f2", "<f4", "<f8", ">f4", ">f8", "<i1", "<i2", "<i4", "<i8", ">i4", "<u1", "<u2", "<u8", "|b1",
          "<c8", "<c16"]


@st.composite
def named_arrays(draw):
    names = draw(st.lists(st.text(min_size=1, max_size=10), max_size=5, unique=True))
    out = {}
    for name in names:
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5))   # 0-d: see below
        arr = draw(hnp.arrays(dtype, shape))
        if draw(st.booleans()) and arr.ndim >= 2:
            arr = arr.T                                  # not C-contiguous: stored C-ordered, same values
        out[name] = arr
    return out


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype (byte order included), shape and bytes (NaN payloads too)."""
    return a.dtype.str == b.dtype.str and a.shape == b.shape and np.ascontiguousarray(a).tobytes() == b.tobytes()


@FAST
@given(arrays=named_arrays(), header=json_dicts)
def test_window_format_round_trip(arrays, header):
    blob = encode_arrays(arrays, header)
    got, head = decode_arrays(blob)
    assert sorted(got) == sorted(arrays)                 # every name (stored sorted: order is not kept)
    assert all(same_array(arrays[k], got[k]) for k in arrays)
    assert head == header
    # the zero-copy readers give the same arrays: views of a memoryview, the layout cache shared
    views, _ = decode_arrays(memoryview(blob), copy=False)
    layouts: dict = {}
    for _ in range(2):                                   # second pass: the layout comes from the cache
        av = array_views(memoryview(blob), layouts)
        assert sorted(av) == sorted(arrays) and all(same_array(arrays[k], av[k]) for k in arrays)
    assert all(same_array(arrays[k], views[k]) for k in arrays)


def test_a_0d_array_round_trips():
    got, _ = decode_arrays(encode_arrays({"x": np.array(1.5, np.float32)}))
    assert got["x"].shape == ()


@FAST
@given(a=named_arrays(), b=named_arrays(), ha=json_dicts, hb=json_dicts)
def test_the_layout_cache_never_mixes_two_layouts(a, b, ha, hb):
    layouts: dict = {}
    for arrays, header in ((a, ha), (b, hb), (a, hb), (b, ha)):
        av = array_views(encode_arrays(arrays, header), layouts)
        assert sorted(av) == sorted(arrays) and all(same_array(arrays[k], av[k]) for k in arrays)


@FAST
@given(data=st.data())
def test_the_layout_cache_keys_on_names_dtypes_and_shapes(data):
    """Windows of one file share names and dtypes and differ in shapes (S = 2 or 3 singers): a view
    through the shared cache has its own window's shapes."""
    names = data.draw(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4, unique=True))
    dtypes = [np.dtype(data.draw(st.sampled_from(DTYPES))) for _ in names]
    layouts: dict = {}
    for _ in range(3):
        arrays = {n: data.draw(hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)))
                  for n, dt in zip(names, dtypes)}
        av = array_views(encode_arrays(arrays, {"video": "v"}), layouts)
        assert all(same_array(arrays[k], av[k]) for k in arrays)


# ----------------------------------------------------------------------------- manifest append / repair
records = st.builds(
    Record, item=st.sampled_from(["song-1", "song-2", "duet:3"]) | st.text(min_size=1, max_size=20),
    stage=st.just("crop"),
    status=st.sampled_from(["done", "failed", "skipped"]),
    fingerprint=st.text("0123456789abcdef", min_size=16, max_size=16),
    outputs=json_dicts, metrics=json_dicts, reason=st.none() | st.text(max_size=20),
    message=st.none() | st.text(max_size=20), started=st.floats(0, 2e9), seconds=st.floats(0, 1e4))


@FAST
@given(recs=st.lists(records, min_size=1, max_size=6), cut=st.floats(0, 1), extra=records)
def test_manifest_torn_at_any_byte_reads_back_the_complete_prefix_and_appends_cleanly(recs, cut, extra):
    """Records appended, the file cut at any byte (a crash mid-write): reading gives exactly the
    records whose whole line survived; the next append starts a fresh line and reads back after them."""
    with tempfile.TemporaryDirectory() as d:
        m = Manifest(Path(d), "crop")
        ends = []
        for r in recs:
            m.append(r)
            ends.append(m.path.stat().st_size - 1)       # where this record's line ends (its newline)
        assert m.read_all() == recs
        data = m.path.read_bytes()
        pos = int(round(cut * len(data)))
        m.path.write_bytes(data[:pos])
        complete = [r for r, end in zip(recs, ends) if end <= pos]   # the JSON text up to the newline is there
        assert m.read_all() == complete
        m.append(extra)
        assert m.read_all() == complete + [extra]
        latest = {}
        for r in complete + [extra]:
            latest[r.item] = r
        assert m.latest() == latest


# ----------------------------------------------------------------------------- fingerprints
def shuffled(value, rnd: random.Random):
    """The same JSON value with every dict's key order shuffled (recursively)."""
    if isinstance(value, dict):
        keys = list(value)
        rnd.shuffle(keys)
        return {k: shuffled(value[k], rnd) for k in keys}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


@FAST
@given(parts=st.lists(json_values, min_size=1, max_size=4), seed=st.integers(0, 2 ** 32 - 1))
def test_fingerprint_ignores_dict_order(parts, seed):
    assert fingerprint(*shuffled(parts, random.Random(seed))) == fingerprint(*parts)


def _leaf_paths(value, path=()):
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaf_paths(v, path + (k,))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from _leaf_paths(v, path + (i,))
    else:
        yield path


def _replace(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    return [_replace(v, rest, new) if i == head else v for i, v in enumerate(value)]


@FAST
@given(data=st.data(), parts=st.lists(json_values, min_size=1, max_size=4))
def test_fingerprint_changes_with_any_value(data, parts):
    paths = list(_leaf_paths(parts))
    path = data.draw(st.sampled_from(paths))
    new = data.draw(json_values)
    changed = _replace(parts, path, new)
    assume(json.dumps(changed, sort_keys=True) != json.dumps(parts, sort_keys=True))   # really another value
    assert fingerprint(*changed) != fingerprint(*parts)


# the runner's fingerprints: the same parameters in any order -> the same; a changed result parameter ->
# that stage and every stage after it; an execution-only one -> nothing
ITEM_STAGES = ["ingest", "screen", "bgm_split", "duet_split", "vad", "crop", "contiguity", "fit", "smooth", "assign"]
STAGES_PROBED = ["ingest", "vad", "crop", "contiguity", "smooth", "assign"]   # no model lookups on change


def _runner():
    from chorushead.runner import Pipeline, Plan
    from chorushead.stages import get_stage
    from chorushead.stages.base import Item
    return Pipeline, Plan, get_stage, Item


def _chain(pipeline) -> dict[str, str]:
    Pipeline, Plan, get_stage, Item = _runner()
    plan = Plan.of(pipeline)
    item = Item(id="song-000000", source="/nonexistent/song.mp4")
    recs: dict[str, Record] = {}
    for name in ITEM_STAGES:
        fp = plan.fingerprint(name, item, {need: recs[need] for need in plan.needs(name)})
        recs[name] = Record(item=item.id, stage=name, status="done", fingerprint=fp)
    return {k: r.fingerprint for k, r in recs.items()}


@pytest.fixture(scope="module")
def default_config():
    Pipeline, *_ = _runner()
    base = Pipeline.load()
    return {"stages": list(base.stages), "fps": base.fps}, {k: dict(v) for k, v in base.params.items()}, _chain(base)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_runner_fingerprints_ignore_the_order_of_parameters(default_config, seed):
    Pipeline, *_ = _runner()
    pipe, params, base = default_config
    assert _chain(Pipeline.from_config(pipe, shuffled(params, random.Random(seed)))) == base


def _other_value(draw, default):
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return draw(st.integers(-1000, 1000).filter(lambda v: v != default))
    if isinstance(default, float):
        return draw(st.floats(-1e3, 1e3, allow_nan=False).filter(lambda v: v != default))
    if isinstance(default, str):
        return draw(st.text("abcdefghij-_/", min_size=1, max_size=8).filter(lambda v: v != default))
    raise AssertionError(type(default))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_runner_fingerprints_change_from_a_changed_setting_on(default_config, data):
    import dataclasses
    Pipeline, _, get_stage, _ = _runner()
    pipe, params, base = default_config
    stage = data.draw(st.sampled_from(STAGES_PROBED))
    fields = [f for f in dataclasses.fields(get_stage(stage).params)]
    f = data.draw(st.sampled_from(fields))
    default = getattr(get_stage(stage).make_params(params.get(stage)), f.name)
    new = _other_value(data.draw, default)
    try:
        pl = Pipeline.from_config(pipe, {**params, stage: {**params.get(stage, {}), f.name: new}})
    except ValueError:
        assume(False)                                    # a value the stage refuses at load
    got = _chain(pl)
    changed = {s for s in ITEM_STAGES if got[s] != base[s]}
    if f.metadata.get("exec"):
        assert changed == set(), (stage, f.name)
    else:
        downstream = {s for s in ITEM_STAGES if s == stage or _depends_on(s, stage)}
        assert changed == downstream, (stage, f.name, changed)


def _depends_on(stage: str, upstream: str) -> bool:
    _, _, get_stage, _ = _runner()
    needs = get_stage(stage).needs
    return upstream in needs or any(_depends_on(n, upstream) for n in needs)


# ----------------------------------------------------------------------------- the split by video
FRACTIONS = st.lists(st.integers(0, 20), min_size=3, max_size=3).filter(lambda c: sum(c) > 0).map(
    lambda c: [x / sum(c) for x in c])
VIDEO_IDS = st.lists(st.text("abcdefghijklmnop0123456789-", min_size=1, max_size=12), max_size=40, unique=True)


@FAST
@given(videos=VIDEO_IDS, fractions=FRACTIONS, seed=st.integers(0, 1000), shuffle=st.integers(0, 2 ** 32 - 1))
def test_pack_split_puts_every_video_in_one_split_in_proportion(videos, fractions, seed, shuffle):
    from chorushead.stages.selection import SPLIT_NAMES, assign_splits
    got = assign_splits(videos, fractions, seed)
    assert set(got) == set(videos) and set(got.values()) <= set(SPLIT_NAMES)   # each video once, named
    counts = Counter(got.values())
    n = len(videos)
    for name, f in zip(SPLIT_NAMES, fractions):
        assert abs(counts[name] - f * n) < 1 + 1e-9, (name, counts, fractions)   # largest remainder
    # deterministic per seed, whatever order the videos are listed in
    other = list(videos)
    random.Random(shuffle).shuffle(other)
    assert assign_splits(other, fractions, seed) == got
    # largest remainder: each count is f * n rounded down or up, and the ones rounded up have the
    # largest remainders (ties aside)
    raw = [f * n for f in fractions]
    up_ = [i for i, name in enumerate(SPLIT_NAMES) if counts[name] > np.floor(raw[i] + 1e-9)]
    down_ = [i for i, name in enumerate(SPLIT_NAMES) if counts[name] <= np.floor(raw[i] + 1e-9)]
    rem = [r - np.floor(r + 1e-9) for r in raw]
    assert all(rem[i] >= rem[j] - 1e-9 for i in up_ for j in down_), (counts, fractions)


def test_pack_split_documented_examples():
    from chorushead.stages.selection import assign_splits
    assert list(assign_splits(["a"], [0.6, 0.1, 0.3], 0).values()) == ["train"]
    assert sorted(Counter(assign_splits(["a", "b", "c"], [0.6, 0.1, 0.3], 0).values()).items()) == [
        ("test", 1), ("train", 2)]
    ten = Counter(assign_splits([f"v{i}" for i in range(10)], [0.6, 0.1, 0.3], 7).values())
    assert ten == {"train": 6, "val": 1, "test": 3}


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_synth_split_by_video(seed):
    for n in range(0, 121):   # every count: the small ones are where rounding bites
        _check_synth_split(n, seed)


def _check_synth_split(n, seed):
    from pachorus.synth import video_splits
    got = video_splits(n, seed)
    assert len(got) == n and set(got) <= {"train", "val", "test"}
    assert video_splits(n, seed) == got
    c = Counter(got)
    if n < 3:
        assert got == ["train"] * n
    else:
        assert c["val"] == max(1, round(0.1 * n)) and c["test"] == max(1, round(0.3 * n))
        assert c["train"] == n - c["val"] - c["test"] >= 1
        assert abs(c["train"] - 0.6 * n) <= 2 and abs(c["val"] - 0.1 * n) <= 1 and abs(c["test"] - 0.3 * n) <= 1


def test_any_split_the_pipeline_accepts_gives_every_video_a_split():
    from chorushead.runner import Pipeline
    from chorushead.stages.selection import assign_splits
    videos = [f"v{i}" for i in range(10)]
    for fractions in ([0.2, 0.2, 0.2], [0.6, 0.2, 0.3], [60, 10, 30]):
        try:
            Pipeline.load(overrides=[f"pack.split={json.dumps(fractions)}"])
        except ValueError:
            continue                                     # refused at load: fine
        got = assign_splits(videos, fractions, 0)
        assert set(got) == set(videos), fractions        # every video in a split...
        counts = Counter(got.values())                   # ... in the proportions asked for
        assert all(abs(counts[n] - f / sum(fractions) * 10) < 1 for n, f in zip(("train", "val", "test"), fractions))
