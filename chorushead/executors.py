"""Executors by name: where a stage's items run. Stages never know which one is used.

``parallel_map(fn, tasks, jobs, backend)`` yields ``fn(task)`` results in completion order.
Results come back to the calling process, which alone appends to the manifests.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator


def parallel_map(fn: Callable[[Any], Any], tasks: Iterable[Any], jobs: int = 1, backend: str = "local",
                 address: str | None = None, gpu: bool = False) -> Iterator[Any]:
    from joblib import Parallel, delayed
    if backend != "local":
        raise ValueError(f"unknown backend {backend!r}; available: local")
    par = Parallel(n_jobs=jobs, return_as="generator_unordered", batch_size=1)
    yield from par(delayed(fn)(t) for t in tasks)
