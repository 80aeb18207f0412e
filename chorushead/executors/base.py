"""What every engine shares: the names of its types, how a lost task is reported, how follow-up tasks
are queued, and how worker processes are started here (thread limits, the forkserver, loopback).
"""
from __future__ import annotations

import os
import sys
import warnings
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional, Union

LOOPBACK = "127.0.0.1"   # where engines started here listen and talk (see the package docstring)
# How long to wait for a scheduler / cluster at an address before saying it cannot be reached (Dask's own
# default is 30 s, followed by a long traceback; Ray retries for a minute or more).
CONNECT_TIMEOUT = 10.0

# Native thread pools each worker may use, so `jobs` workers do not each grab every core.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class WorkerLost(RuntimeWarning):
    """A task's worker process died while running it; the task was not done and gives no result."""


# Whether a task needs a GPU: one answer for all tasks, or asked per task (a build streams many stages).
Gpu = Union[bool, Callable[[Any], bool]]
# follow(result) -> the tasks that result makes possible (queued as soon as it is back).
Follow = Optional[Callable[[Any], Iterable[Any]]]


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``[scheme://]host:port`` address; None when it names no TCP endpoint
    ("auto", "inproc://...", a bare host)."""
    rest = address.split("://", 1)[1] if "://" in address else address
    if "://" in address and address.split("://", 1)[0] not in ("tcp", "tls", "ray", "ws", "wss"):
        return None
    rest = rest.split("/", 1)[0]
    if rest.startswith("["):                          # [ipv6]:port
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host, int(port)


def check_reachable(what: str, address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise RuntimeError (one line, naming ``address``) unless a TCP connection to it opens within
    ``timeout`` seconds: a scheduler or cluster that is not there fails the build at once, instead of
    after Dask's 30 s wait and a 100-line traceback (or Ray's minute of retries)."""
    import socket
    hp = host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, (socket.timeout, TimeoutError)) else (e.strerror or str(e))
        raise RuntimeError(f"cannot reach the {what} at {address}: {why} (after at most {timeout:g} s); "
                           f"is it running and is the address right?") from None


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def label(task: Any) -> str:
    """How a warning names a task: the runner's ``Task`` as ``stage:item``, anything else by repr."""
    item_id = getattr(getattr(task, "item", None), "id", None)
    if item_id is not None:
        stage = getattr(task, "stage", None)
        return f"{stage}:{item_id}" if stage else str(item_id)
    text = repr(task)
    return text if len(text) <= 80 else text[:77] + "..."


def lost(task: Any, how: str) -> None:
    warnings.warn(f"{label(task)}: {how}; it was not done and stays pending (a rerun retries it)",
                  WorkerLost, stacklevel=3)


def queue_follow_ups(todo: deque, follow: Follow, result: Any) -> None:
    """Called once the caller has taken ``result`` (it resumes the generator after handling it, e.g.
    appending the record ``follow`` then reads), so follow-ups see what the caller made of it. They go
    to the FRONT of the queue: an item's next stage runs before the next new item starts, so items
    finish one after another (their files still in the page cache) instead of every item's first
    stage running before any second stage, which on a large batch would be a stage barrier again."""
    if follow is not None:
        todo.extendleft(reversed(list(follow(result))))


# ----------------------------------------------------------------------------- worker processes started here
def thread_env(jobs: int) -> dict[str, str]:
    """Native thread pools per worker, so ``jobs`` workers do not each grab every core (a value the
    user set wins)."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return {var: os.environ.get(var, threads) for var in THREAD_VARS}


def forkserver(preload: tuple[str, ...], env: dict[str, str]) -> Any:
    """multiprocessing's forkserver context, its server started (if it is not yet) with ``preload``
    imported and ``env`` set: processes of this context fork from it, with those modules in memory
    and those thread limits (native libraries read them when first loaded, i.e. in the server). A
    forked worker still gets this process's sys.path and working folder (multiprocessing sends them)."""
    import multiprocessing
    from multiprocessing import forkserver
    check_main_importable()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(dict.fromkeys(("chorushead.executors.local",) + preload)))
    with environ(env):
        forkserver.ensure_running()   # a no-op once running
    return ctx


def check_main_importable() -> None:
    """A worker process re-runs the main script's module (multiprocessing does, to find functions
    defined there); a script read from standard input has no file to re-run, and every worker would
    die at start. Say so instead."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is None and path and not os.path.exists(path):
        raise RuntimeError(f"worker processes started here cannot start from a script read from {path!r}: "
                           "save it to a file and run that, or use the local backend with jobs=1")


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the processes started inside, then put the old values back."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
