"""The packed-window LMDB: the one format the pack stage writes and the trainer reads.

Layout (all keys are UTF-8 bytes):

- ``__meta__``            JSON: format name/version, fps, sample rate, window/stride, coefficient layout,
                          ``generation`` (see below).
- ``__generation__``      the generation as ASCII digits, what a reader checks per batch (a few bytes,
                          where ``__meta__`` holds pack's per-video summary and grows with the videos).
- ``__index__``           JSON: ``{"train": [key, ...], "val": [...], "test": [...]}``, sorted keys.
- ``__done__/<video>``    JSON: the fingerprint of the packed video and its window keys (resume marker).
- ``w/<video>/<segment>/<start>``  one window, encoded with :func:`encode_arrays`:
    ``coeffs``  float32 (S, W, 56)  per singer, ``[exp(50), jaw(3), pose(3)]`` at 30 fps
    ``vocals``  float16 (S, W*sr/fps) each singer's vocal at 16 kHz
    ``bgm``     float16 (W*sr/fps,)   the accompaniment at 16 kHz
    ``pose0``   float32 (S, 3)        each singer's global pose at the window's first frame
    ``shape``   float32 (S, 100)      optional: each singer's identity (EMOCA's FLAME shape code, the
                                      median over the segment's frames); absent when the fit gives none
  and the header carries ``video``, ``segment``, ``start`` (frame in the trimmed video), ``split``.

Windows with different singer counts S (duets and trios) may share one LMDB: each window carries its
own S, and the index lists ``[key, S]`` per window (format version 2; version 1 had bare keys and one
S for the whole file in the meta). The trainer's unit is a host sample (host, partner = sum of the
others, BGM, host coefficients), whose shapes do not depend on S, so batches mix duets and trios
freely: no padding, no mask, no grouping by S.

``shape`` is optional within version 2 (no version bump: readers ignore arrays they do not know and
treat a missing ``shape`` as "identity unknown", so files written before it existed still read).
The meta says how many windows carry one (``shape_windows`` of ``windows``; ``has_shape`` when all do).

The partner vocal of singer *i* is the sum of the other singers' vocals (paper Eq. 3); the reader
derives it rather than storing it S times. Values are a small JSON header + raw little-endian
buffers, so a read is one LMDB lookup and ``np.frombuffer`` per array (no pickle, no zip).

Every key is made and read here: :func:`window_key` / :func:`parse_window_key`, :class:`WindowWriter`
(pack's writer: done markers, deleting a video, merging pack's summary into the meta, the generation),
:class:`WindowReader` and :func:`packed_videos` (what the markers say is packed); ``pachorus synth``
writes a new file with :func:`write_meta`, :func:`window_key` and :func:`rebuild_index`.

Reading while a pack writes: one writer (pack) may rewrite the file while trainers read it. Readers
use LMDB's reader lock table (``lock.mdb``), which keeps every page a reader's transaction sees from
being reused by the writer, and adopt the map when the writer grew it (:func:`open_env`). Each
:func:`write_meta` (the writer calls it in the transaction that starts a change) increments
``generation``; a :class:`WindowReader` records the generation its index came from and every read
checks it in the same transaction as the windows, so a batch is never a mix of two packs, and a repack
during training stops the run with :class:`DatasetChanged` instead of training on a mix.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

FORMAT = "chorushead-windows"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META_KEY = b"__meta__"
GENERATION_KEY = b"__generation__"
INDEX_KEY = b"__index__"
DONE_PREFIX = b"__done__/"
WINDOW_PREFIX = b"w/"
SPLITS = ("train", "val", "test")
N_COEFFS = 56
N_SHAPE = 100   # EMOCA's identity code: the first 100 of FLAME's 300 shape directions
# The 56-coefficient layout, named once: expression 0-50, jaw rotation 50-53, head pose 53-56.
N_EXP = 50
EXP, JAW, POSE = slice(0, N_EXP), slice(N_EXP, N_EXP + 3), slice(N_EXP + 3, N_COEFFS)
EXP_JAW = slice(0, JAW.stop)   # what the host's own voice drives (expression + jaw)
JAW_OPEN = JAW.start           # the jaw's opening rotation (about x), radians
GROUPS = {"exp": EXP, "jaw": JAW, "pose": POSE}


def encode_arrays(arrays: dict[str, np.ndarray], header: dict[str, Any] | None = None) -> bytes:
    """Serialise named arrays + a JSON header into one byte string."""
    spec, chunks, offset = {}, [], 0
    for name, arr in arrays.items():
        arr = np.asarray(arr)          # not ascontiguousarray: that makes a 0-d array 1-d
        raw = arr.tobytes()            # C order whatever the array's memory layout
        spec[name] = [arr.dtype.str, list(arr.shape), offset, len(raw)]
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps({"arrays": spec, "header": header or {}}, sort_keys=True).encode()
    return struct.pack("<I", len(head)) + head + b"".join(chunks)


def decode_arrays(blob: bytes | memoryview, copy: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of :func:`encode_arrays`. With ``copy=False`` the arrays view ``blob`` (only valid while
    the LMDB transaction that produced it is open)."""
    (n,) = struct.unpack_from("<I", blob, 0)
    meta = json.loads(bytes(blob[4:4 + n]))
    base = 4 + n
    out = {}
    for name, (dtype, shape, off, size) in meta["arrays"].items():
        dt = np.dtype(dtype)
        a = np.frombuffer(blob, dtype=dt, count=size // dt.itemsize, offset=base + off).reshape(shape)
        out[name] = a.copy() if copy else a
    return out, meta["header"]


def array_views(blob: bytes | memoryview, layouts: dict | None = None) -> dict[str, np.ndarray]:
    """The arrays of one :func:`encode_arrays` value as views of ``blob`` (valid only while the LMDB
    transaction that produced it is open), header not decoded. ``layouts`` caches each parsed array
    layout under its JSON text: the windows of a file share a few (S, ``shape`` present or not), so a
    batch read parses JSON once per layout, not once per window. Bounded (a few hundred entries)."""
    (n,) = struct.unpack_from("<I", blob, 0)
    head = bytes(blob[4:4 + n])
    # sort_keys puts the array spec first: '{"arrays": {...}, "header": {...}}'; the spec alone keys the layout
    cut = head.find(b', "header": ') if head.startswith(b'{"arrays": ') else -1
    spec = layouts.get(head[:cut]) if layouts is not None and cut > 0 else None
    if spec is None:
        spec = [(name, np.dtype(dt), tuple(shape), off, size)
                for name, (dt, shape, off, size) in json.loads(head)["arrays"].items()]
        if layouts is not None and cut > 0 and len(layouts) < 256:
            layouts[head[:cut]] = spec
    base = 4 + n
    return {name: np.frombuffer(blob, dtype=dt, count=size // dt.itemsize, offset=base + off).reshape(shape)
            for name, dt, shape, off, size in spec}


def window_key(video: str, segment: int, start: int) -> bytes:
    return f"w/{video}/{segment:04d}/{start:07d}".encode()


def parse_window_key(key: str | bytes) -> tuple[str, int, int]:
    """(video, segment, start) of a window key (the inverse of :func:`window_key`)."""
    key = key.decode() if isinstance(key, (bytes, bytearray)) else key
    video, segment, start = key[len(WINDOW_PREFIX):].rsplit("/", 2)
    return video, int(segment), int(start)


@dataclass
class Window:
    key: str
    video: str
    segment: int
    start: int
    split: str
    coeffs: np.ndarray   # (S, W, 56) float32
    vocals: np.ndarray   # (S, N) float16 as stored
    bgm: np.ndarray      # (N,) float16 as stored
    pose0: np.ndarray    # (S, 3) float32
    shape: np.ndarray | None = None   # (S, 100) float32 identity codes, None when the fit gave none

    @property
    def n_singers(self) -> int:
        return int(self.coeffs.shape[0])

    def partner(self, host: int) -> np.ndarray:
        """Sum of all other singers' vocals (paper Eq. 3: A^P = A^S - A^H), float32."""
        others = [k for k in range(self.n_singers) if k != host]
        return np.sum(self.vocals[others], axis=0, dtype=np.float32)


MAX_READERS = 512   # reader lock table slots: one per concurrently open read transaction, all processes


class DatasetChanged(RuntimeError):
    """The LMDB was repacked (or is being repacked) while a reader used it: the windows changed under
    the run. One line, for a person: ``pachorus`` prints it as its error."""


_ENVS: dict[tuple[int, str], "_ReadEnv"] = {}
_WARNED: set[str] = set()


def open_env(path: str | Path, *, write: bool = False, map_size: int = 1 << 30):
    """The one way to open a windows LMDB.

    Writers (pack, synth) get a fresh writable environment (one writer per file, on local disk).
    Readers share one read-only environment per (process, path): py-lmdb refuses to open the same
    environment twice in a process (a train and a val reader of one file need that), and keying by
    pid gives a forked DataLoader worker its own (LMDB handles must not cross a fork). ``readahead``
    stays on: measured cold reads collapse ~20x without it.

    A reader uses LMDB's reader lock table (``lock.mdb``), which LMDB documents as safe beside the one
    writer: the pages a read transaction sees are not reused until it ends. Its ``begin()`` adopts the
    map when the writer grew the file beyond this process's map (``MapResizedError`` →
    ``set_mapsize(0)``, once no read transaction of the process is open, then again). Where the lock
    table cannot be written (a read-only copy) it reads without one and warns once: then no writer
    can run there either.
    """
    import lmdb
    path = Path(path)
    if write:
        cached = _ENVS.pop((os.getpid(), str(path.resolve())), None)
        if cached is not None:   # a reader of this file in this process: close it so the writer may open
            cached.close()
        return lmdb.open(str(path), map_size=map_size, subdir=True, readahead=True, meminit=False,
                         max_readers=MAX_READERS)
    key = (os.getpid(), str(path.resolve()))
    env = _ENVS.get(key)
    if env is None:
        for k in [k for k in _ENVS if k[1] == key[1]]:   # inherited over fork: py-lmdb refuses a second
            _ENVS.pop(k).close_inherited()                # open of the path, and the parent's is unusable here
        env = _ENVS[key] = _ReadEnv(path)
    return env


def _lock_table_writable(path: Path) -> bool:
    lock = path / "lock.mdb"
    return os.access(lock, os.W_OK) if lock.exists() else os.access(path, os.W_OK)


class _ReadEnv:
    """A reader's environment: ``begin()`` like py-lmdb's (a context manager whose ``__enter__`` gives
    the transaction itself), surviving a map the writer grew; other attributes are the environment's.
    Counts the open read transactions of this process, because ``set_mapsize`` invalidates them all."""

    def __init__(self, path: Path):
        import lmdb
        self.path, self.pid, self.closed = path, os.getpid(), False
        self._resized = lmdb.MapResizedError
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)   # notified when no read transaction is open
        self.forks = _FORKS[0]             # which process (in fork order) opened it: see WindowReader.env
        self._active = 0                   # read transactions open in this process
        self._mine = threading.local()     # ... and in this thread
        kw = dict(readonly=True, readahead=True, meminit=False, max_readers=MAX_READERS, subdir=True)
        self.locked = _lock_table_writable(path)
        if self.locked:
            try:
                self.env = lmdb.open(str(path), lock=True, **kw)
            except lmdb.ReadonlyError:     # EACCES on lock.mdb although access() allowed it (root squash...)
                self.locked = False
        if not self.locked:
            if str(path) not in _WARNED:
                _WARNED.add(str(path))
                warnings.warn(f"{path}: cannot write its LMDB lock table (lock.mdb; a read-only copy?), reading "
                              "without it: safe only while nothing writes this copy", RuntimeWarning, stacklevel=3)
            self.env = lmdb.open(str(path), lock=False, **kw)
        else:
            self.env.reader_check()        # slots left by dead processes (DataLoader workers end with _exit)

    def begin(self, *, buffers: bool = False) -> "_ReadTxn":
        self._lock.acquire()
        try:
            try:
                txn = self.env.begin(buffers=buffers)
            except self._resized:          # the writer grew the file past our map: adopt its size, retry
                txn = self._adopt_new_size(buffers)
            self._active += 1
        finally:
            self._lock.release()
        mine = self._mine
        mine.n = getattr(mine, "n", 0) + 1
        return _ReadTxn(self, txn)

    def _adopt_new_size(self, buffers: bool):   # under self._lock
        while True:
            if getattr(self._mine, "n", 0):
                raise RuntimeError(f"{self.path}: the LMDB grew while this thread holds a read transaction; "
                                   "end it before beginning another")
            while self._active:            # set_mapsize invalidates every open transaction of the process
                self._idle.wait()
            self.env.set_mapsize(0)
            try:
                return self.env.begin(buffers=buffers)
            except self._resized:          # grew again meanwhile
                continue

    def _release(self) -> None:
        mine = self._mine
        mine.n = getattr(mine, "n", 1) - 1
        with self._lock:
            self._active -= 1
            if not self._active:
                self._idle.notify_all()

    def close(self) -> None:
        self.closed = True
        self.env.close()

    def close_inherited(self) -> None:
        """In a forked child: close the parent's environment (py-lmdb refuses a second open of the file
        while it is open). Closing aborts the transactions it holds, which would free the *parent's*
        reader slots in the shared lock table; the fork hook below leaves none when no read was open."""
        self.closed = True
        if self.locked and self._active:
            raise RuntimeError(f"{self.path}: this process was forked while its parent was reading the LMDB "
                               "in another thread; start worker processes while no read is open")
        self.env.close()

    def __getattr__(self, name):           # info(), stat(), readers()... of the environment
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)


class _ReadTxn:
    """One read transaction of a :class:`_ReadEnv`: ``with env.begin() as txn`` gives py-lmdb's own."""
    __slots__ = ("txn", "_env", "_open")

    def __init__(self, env: _ReadEnv, txn):
        self.txn, self._env, self._open = txn, env, True

    def __enter__(self):
        return self.txn

    def __exit__(self, *exc) -> None:
        self.abort()

    def abort(self) -> None:
        if self._open:
            self._open = False
            self.txn.abort()
            self._env._release()

    commit = abort

    def __getattr__(self, name):
        if name == "txn":
            raise AttributeError(name)
        return getattr(self.txn, name)

    def __del__(self):
        if self._open and os.getpid() == self._env.pid:
            self.abort()


_FORK_HELD: list[_ReadEnv] = []


def _before_fork() -> None:
    """Hold every reader of this process still across a fork, and drop py-lmdb's cached read transaction
    (it keeps a slot in the lock table, which the child's close of the inherited environment would free
    under the parent or a sibling): ``set_mapsize(0)`` aborts it and costs ~10 µs."""
    pid = os.getpid()
    for e in list(_ENVS.values()):
        if e.pid == pid and not e.closed:
            e._lock.acquire()
            _FORK_HELD.append(e)
            if e.locked and not e._active:
                try:
                    e.env.set_mapsize(0)
                except Exception:   # best effort: never fail a fork
                    pass


def _after_fork() -> None:
    while _FORK_HELD:
        _FORK_HELD.pop()._lock.release()


def _after_fork_in_child() -> None:
    _FORKS[0] += 1
    _after_fork()


_FORKS = [0]   # forks this process descends from: a reader's environment of another count is its parent's

if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork_in_child)


def read_generation(source) -> int:
    """The generation of a windows LMDB (``path``) or of the snapshot a read transaction sees
    (``txn``): how many times :func:`write_meta` ran on it; 0 for files written before it counted."""
    if isinstance(source, (str, Path)):
        with open_env(source).begin() as txn:
            return read_generation(txn)
    raw = source.get(GENERATION_KEY)
    return int(bytes(raw)) if raw is not None else 0


class WindowReader:
    """Random access to packed windows of one split.

    ``reader[i]`` is a :class:`Window`; ``reader.host_sample(j)`` expands windows to one sample per
    singer-as-host (what the trainer iterates). Opens lazily so it survives DataLoader fork/spawn.
    Readers of one file in one process share its environment (:func:`open_env`).

    ``generation`` is the file's generation when the reader opened (read with the index, in one
    transaction); every read checks it in its own transaction (:meth:`check`), so a reader returns only
    windows of the pack its index came from, or raises :class:`DatasetChanged`.
    """

    def __init__(self, path: str | Path, split: str | None = "train"):
        self.path = Path(path)
        if not (self.path / "data.mdb").exists():
            raise FileNotFoundError(
                f"No packed LMDB at {self.path} (looked for {self.path / 'data.mdb'}). "
                "Run `chorushead build ... --stages pack` or `pachorus synth` first.")
        self.split = split
        with open_env(self.path).begin() as txn:
            meta = txn.get(META_KEY)
            index = txn.get(INDEX_KEY)
            self.generation = read_generation(txn)
        self._generation_raw = str(self.generation).encode() if self.generation else None   # as stored
        if meta is None or index is None:
            raise ValueError(f"{self.path} is not a finished {FORMAT} LMDB (no __meta__/__index__): "
                             "the pack stage did not complete; rerun it.")
        self.meta = json.loads(meta)
        if self.meta.get("format") != FORMAT or self.meta.get("version") not in READABLE_VERSIONS:
            raise ValueError(f"{self.path}: unsupported format {self.meta.get('format')} v{self.meta.get('version')}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        idx = json.loads(index)
        entries = [e for s in (SPLITS if split is None else (split,)) for e in idx.get(s, [])]
        if self.meta["version"] == 1:   # bare keys, one S for the file
            entries = [[k, int(self.meta.get("n_singers", 2))] for k in entries]
        self.keys = [k for k, _ in entries]
        self._raw_keys = [k.encode() for k in self.keys]   # encoded once: a batch looks up many
        self.singers = np.array([s for _, s in entries], dtype=np.int64)       # S of each window
        # host sample j lives in window searchsorted(ends, j, "right"), host j - starts[window]
        self._ends = np.cumsum(self.singers)
        self.singer_counts = sorted({int(s) for s in self.singers})

    def __len__(self) -> int:
        return len(self.keys)

    def env(self) -> "_ReadEnv":
        """This process's reader environment of the file (:func:`open_env`), kept by the reader: a read
        does not resolve the path again (``Path.resolve`` is a few syscalls). A forked or unpickled
        reader (a DataLoader worker) opens its own."""
        env = self.__dict__.get("_env")
        if env is None or env.closed or env.forks != _FORKS[0]:
            env = self._env = open_env(self.path)
        return env

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_env", None)   # an LMDB handle: not for another process
        return state

    def check(self, txn) -> None:
        """Raise :class:`DatasetChanged` unless ``txn`` sees the generation this reader opened (one
        lookup of a few bytes: cheap enough per batch, or per window)."""
        if txn.get(GENERATION_KEY) != self._generation_raw:
            raise self.changed(txn)

    def changed(self, txn, key: str | None = None) -> DatasetChanged:
        """The error for a repack seen in ``txn``, or for window ``key`` missing from it."""
        now = read_generation(txn)
        if now != self.generation:
            return DatasetChanged(f"{self.path} was repacked while in use (generation {self.generation} -> {now}): "
                                  "the windows changed under this run; restart training on the new dataset")
        return DatasetChanged(f"{self.path}: window {key} vanished while in use (still generation {now}, whose "
                              "index lists it): the LMDB is being rewritten under this run; restart training "
                              "once the pack has finished")

    def blob(self, txn, i: int):
        """Window ``i``'s stored value in ``txn`` (a transaction :meth:`check` has passed); a window the
        index lists but the file lacks raises :class:`DatasetChanged`."""
        blob = txn.get(self._raw_keys[i])
        if blob is None:
            raise self.changed(txn, self.keys[i])
        return blob

    def views(self, txn, i: int, layouts: dict | None = None) -> dict[str, np.ndarray]:
        """Window ``i``'s arrays as views of the page (valid only inside ``txn``; see :func:`array_views`)."""
        return array_views(self.blob(txn, i), layouts)

    def _window(self, txn, i: int) -> Window:
        arrays, head = decode_arrays(self.blob(txn, i), copy=True)
        return Window(key=self.keys[i], video=head["video"], segment=int(head["segment"]), start=int(head["start"]),
                      split=head["split"], coeffs=arrays["coeffs"], vocals=arrays["vocals"], bgm=arrays["bgm"],
                      pose0=arrays["pose0"], shape=arrays.get("shape"))

    def __getitem__(self, i: int) -> Window:
        """One window, arrays in their stored dtypes (audio float16: half the bytes; convert where
        it is used, e.g. ``torch.from_numpy(a).float()``, which is much faster than numpy's astype)."""
        with self.env().begin(buffers=True) as txn:
            self.check(txn)
            return self._window(txn, i)

    def read(self, indices: list[int]) -> list[Window]:
        """Several windows from one snapshot of the file (one transaction, its generation checked)."""
        with self.env().begin(buffers=True) as txn:
            self.check(txn)
            return [self._window(txn, i) for i in indices]

    def __iter__(self) -> Iterator[Window]:
        for i in range(len(self)):
            yield self[i]

    def n_host_samples(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def host_sample(self, j: int) -> dict[str, np.ndarray]:
        """Sample j = (window i, host h), counting every singer of every window as a host in turn:
        host/partner vocals, BGM, host coefficients, pose0, and the host's identity: ``shape`` (100,)
        (zeros = FLAME's mean head when unknown) with ``has_shape`` saying which."""
        if not 0 <= j < self.n_host_samples():
            raise IndexError(f"host sample {j} out of range ({self.n_host_samples()})")
        i = int(np.searchsorted(self._ends, j, side="right"))
        h = j - (int(self._ends[i - 1]) if i else 0)
        w = self[i]
        known = w.shape is not None
        return {"host": w.vocals[h].astype(np.float32), "partner": w.partner(h), "bgm": w.bgm.astype(np.float32),
                "coeffs": w.coeffs[h], "pose0": w.pose0[h], "key": w.key, "singer": h,
                "shape": w.shape[h].astype(np.float32) if known else np.zeros(N_SHAPE, np.float32),
                "has_shape": known}

    def host_shapes(self) -> tuple[np.ndarray, np.ndarray]:
        """Identity of every host sample, in sample order, without reading audio: ``shapes`` (N, 100)
        float32 (zeros where unknown) and ``known`` (N,) bool."""
        n = self.n_host_samples()
        shapes, known = np.zeros((n, N_SHAPE), np.float32), np.zeros(n, bool)
        with self.env().begin(buffers=True) as txn:
            self.check(txn)
            for i in range(len(self.keys)):
                arrays, _ = decode_arrays(self.blob(txn, i), copy=False)
                if "shape" in arrays:
                    a = int(self._ends[i - 1]) if i else 0
                    shapes[a:a + int(self.singers[i])] = arrays["shape"]
                    known[a:a + int(self.singers[i])] = True
        return shapes, known


def write_meta(txn, *, fps: int, sr: int, window: int, stride: int, extra: dict | None = None) -> int:
    """``__meta__``, with the next ``generation`` (the one stored in ``txn`` + 1; 1 for a new file, also
    written to ``__generation__``); returns it. Call it once per change, in the write transaction that
    begins it (before or with the first window deleted or rewritten): readers see the new generation
    no later than the first changed window. The singer counts present are added by
    :func:`rebuild_index` (they depend on which windows are in the file)."""
    generation = read_generation(txn) + 1
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "fps": fps, "sr": sr, "window": window,
            "stride": stride, "coeff_layout": {k: [g.start, g.stop] for k, g in GROUPS.items()}}
    meta.update(extra or {})
    meta["generation"] = generation
    txn.put(META_KEY, json.dumps(meta, sort_keys=True).encode())
    txn.put(GENERATION_KEY, str(generation).encode())
    return generation


def bump_generation(txn) -> int:
    """Move the generation of an existing file on by one (``__generation__`` and ``__meta__``), in a write
    transaction that changes windows after :func:`write_meta` began the change: every transaction a
    reader can see in between carries its own generation, so no reader reads two states as one."""
    generation = read_generation(txn) + 1
    raw = txn.get(META_KEY)
    if raw is not None:
        meta = json.loads(bytes(raw))
        meta["generation"] = generation
        txn.put(META_KEY, json.dumps(meta, sort_keys=True).encode())
    txn.put(GENERATION_KEY, str(generation).encode())
    return generation


def rebuild_index(txn) -> dict[str, list]:
    """Scan window keys and write ``__index__``: ``[key, S]`` per window grouped by split (sorted,
    deterministic); record in ``__meta__`` which singer counts the file holds and how many windows
    carry identity codes (``shape_windows`` of ``windows``, ``has_shape`` when every one does)."""
    index: dict[str, list] = {s: [] for s in SPLITS}
    with_shape = 0
    cur = txn.cursor()
    if cur.set_range(WINDOW_PREFIX):
        for k, v in cur:
            if not bytes(k).startswith(WINDOW_PREFIX):
                break
            arrays, head = decode_arrays_header(v)
            index[head["split"]].append([bytes(k).decode(), int(arrays["coeffs"][1][0])])
            with_shape += "shape" in arrays
    txn.put(INDEX_KEY, json.dumps(index, sort_keys=True).encode())
    raw = txn.get(META_KEY)
    if raw is not None:
        meta = json.loads(bytes(raw))
        meta["singer_counts"] = sorted({s for e in index.values() for _, s in e})
        meta.pop("n_singers", None)
        n = sum(len(e) for e in index.values())
        meta.update(windows=n, shape_windows=with_shape, has_shape=bool(n) and with_shape == n)
        txn.put(META_KEY, json.dumps(meta, sort_keys=True).encode())
    return index


def decode_arrays_header(blob) -> tuple[dict, dict]:
    (n,) = struct.unpack_from("<I", blob, 0)
    meta = json.loads(bytes(blob[4:4 + n]))
    return meta["arrays"], meta["header"]


def _read_markers(txn) -> dict[str, dict[str, Any]]:
    """Video -> its ``__done__`` marker (the fingerprint it was packed with, its windows and summary)."""
    res, cur = {}, txn.cursor()
    if cur.set_range(DONE_PREFIX):
        for k, v in cur:
            k = bytes(k)
            if not k.startswith(DONE_PREFIX):
                break
            res[k[len(DONE_PREFIX):].decode()] = json.loads(bytes(v))
    return res


def packed_videos(path: str | Path) -> dict[str, dict[str, Any]]:
    """Video id -> what the LMDB at ``path`` holds of it (split, windows, segments, frames, the pack
    fingerprint), read from its ``__done__`` markers; {} when there is no LMDB. The one answer to "what
    is packed" for status and the dataset card."""
    path = Path(path)
    if not (path / "data.mdb").exists():
        return {}
    with open_env(path).begin() as txn:
        markers = _read_markers(txn)
    return {v: m.get("summary") or {"windows": m.get("windows", 0), "split": "?", "fingerprint": m.get("fingerprint")}
            for v, m in markers.items()}


def merge_meta(txn, fields: dict[str, Any]) -> None:
    """Set top-level ``fields`` of ``__meta__`` (e.g. pack's ``summary``), keeping the rest."""
    meta = json.loads(bytes(txn.get(META_KEY)))
    meta.update(fields)
    txn.put(META_KEY, json.dumps(meta, sort_keys=True).encode())


def _delete_prefix(txn, prefix: bytes) -> int:
    cur, n = txn.cursor(), 0
    if cur.set_range(prefix):
        while bytes(cur.key()).startswith(prefix):
            if not cur.delete():
                break
            n += 1
    return n


def _delete_video(txn, video: str) -> None:
    _delete_prefix(txn, WINDOW_PREFIX + f"{video}/".encode())
    txn.delete(DONE_PREFIX + video.encode())


class WindowWriter:
    """The one writer of a windows LMDB (pack), which changes it one video at a time.

    Crash safety without a second copy: each video is written as (generation moved on, its old windows
    deleted, its new windows, its ``__done__`` marker) in one transaction, so a marker vouches for
    exactly the windows beside it; the meta and index are written last (:meth:`finish`). A new file is
    built under a temporary name and renamed once its first video is complete (:meth:`publish`), so a
    half-born file never sits at the final path.

    ``markers`` and ``meta`` are what the file held when it was opened."""

    def __init__(self, final: str | Path, map_size: int):
        self.final, self.map_size = Path(final), map_size
        self.tmp = self.final.with_name(f".{self.final.name}.tmp")
        self.pending = not self.final.exists()
        if self.pending:
            shutil.rmtree(self.tmp, ignore_errors=True)   # a first pack killed before its first video
        self.env = open_env(self.tmp if self.pending else self.final, write=True, map_size=map_size)
        with self.env.begin() as txn:
            self.markers = _read_markers(txn)
            raw = txn.get(META_KEY)
        self.meta: dict[str, Any] = json.loads(bytes(raw)) if raw is not None else {}
        self._layout: dict[str, Any] = {}

    def begin_change(self, *, fps: int, sr: int, window: int, stride: int, extra: dict | None,
                     drop: list[str]) -> None:
        """The first write of a change: the meta with the next generation (before any window moves) and
        the ``drop``ped videos gone, in one transaction."""
        self._layout = dict(fps=fps, sr=sr, window=window, stride=stride, extra=extra)
        with self.env.begin(write=True) as txn:
            write_meta(txn, **self._layout)
            for v in drop:
                _delete_video(txn, v)

    def put_video(self, video: str, entries: list[tuple[bytes, bytes]], marker: dict[str, Any]) -> None:
        """Replace ``video``'s windows by ``entries`` and mark it done with ``marker``, in one transaction
        that is a generation of its own (a failure keeps the old windows)."""
        with self.env.begin(write=True) as txn:
            bump_generation(txn)
            _delete_prefix(txn, WINDOW_PREFIX + f"{video}/".encode())
            for k, v in entries:
                txn.put(k, v)
            txn.put(DONE_PREFIX + video.encode(), json.dumps(marker, sort_keys=True).encode())
        self.publish()

    def finish(self, meta: dict[str, Any]) -> dict[str, list]:
        """The meta again (next generation), the index, and ``meta``'s fields merged in; the file published
        and synced. Returns the index."""
        with self.env.begin(write=True) as txn:
            write_meta(txn, **self._layout)
            index = rebuild_index(txn)
            merge_meta(txn, meta)
        self.publish()
        self.env.sync(True)
        return index

    def publish(self) -> None:
        if self.pending:
            self.env.sync(True)
            self.env.close()
            os.replace(self.tmp, self.final)
            self.env = open_env(self.final, write=True, map_size=self.map_size)
            self.pending = False

    def discard(self) -> None:
        """A new file nothing was published to (no video packed): remove it."""
        self.env.close()
        if self.pending:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def close(self) -> None:
        self.env.close()
