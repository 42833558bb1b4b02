"""Read many run directories, in worker processes when that pays off.

Parsing ``metrics.jsonl`` is CPU-bound (``json.loads`` holds the GIL), so a large sweep is read
by a pool of forked processes, each returning its parsed runs. Forking is only used where it is
safe and cheap: on platforms with ``fork``, when the calling process runs no other thread (a
fork copies locks held by other threads), and for at least :data:`MIN_RUNS_FOR_POOL` runs. Any
pool failure falls back to reading in this process, so the result never depends on the pool.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from analysis.run_reader import RunData, read_run

logger = logging.getLogger(__name__)

#: Below this many runs the pool start-up (~50 ms) outweighs the gain.
MIN_RUNS_FOR_POOL = 200
#: Chunks per worker: a few, so that one slow chunk does not leave the other workers idle.
CHUNKS_PER_WORKER = 4


def _read_chunk(run_dirs: Sequence[Path]) -> list[RunData]:
    return [read_run(run_dir) for run_dir in run_dirs]


def _worker_count(num_runs: int) -> int:
    if num_runs < MIN_RUNS_FOR_POOL or threading.active_count() > 1:
        return 1
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(available or 1, 16))


def read_runs(run_dirs: Sequence[Path], workers: int | None = None) -> list[RunData]:
    """Parse ``run_dirs`` (in order) with :func:`analysis.run_reader.read_run`.

    Args:
        run_dirs: run directories to read.
        workers: number of processes; None picks one per available CPU when safe (module
            docstring), 1 reads in this process.
    """
    count = _worker_count(len(run_dirs)) if workers is None else workers
    if count <= 1:
        return _read_chunk(run_dirs)
    num_chunks = min(len(run_dirs), count * CHUNKS_PER_WORKER)
    bounds = [len(run_dirs) * index // num_chunks for index in range(num_chunks + 1)]
    chunks = [run_dirs[start:stop] for start, stop in zip(bounds, bounds[1:], strict=False)]
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(count, mp_context=context) as pool:
            parts = list(pool.map(_read_chunk, chunks))
    except (BrokenProcessPool, OSError) as error:
        logger.warning("parallel read failed (%s); reading runs in this process", error)
        return _read_chunk(run_dirs)
    return [run for part in parts for run in part]
