"""A pickle cache of parsed runs under ``SWEEP_DIR/.analysis_cache``.

Each run directory is keyed by a fingerprint of its contract files (name, size, mtime in ns):
a run whose files have not changed is not parsed again, so reloading a live sweep re-reads only
the runs that wrote something. The assembled sweep is cached too, keyed by all fingerprints, so
an unchanged sweep loads with one unpickle.

The cache is a pickle, so load only sweep directories you trust. It is an optimisation only:
a missing, stale, corrupt or unwritable cache is ignored (logged at debug level) and everything
is read from the run directories.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.run_reader import RunData
from analysis.sweepdir import RUN_FILES, SWEEP_FILE

logger = logging.getLogger(__name__)

CACHE_DIR = ".analysis_cache"
CACHE_FILE = "sweep.pkl"
#: Bump when RunData, SweepResults, the parsing rules or the assembled frames change.
CACHE_VERSION = 4

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(directory: Path, names: tuple[str, ...] = RUN_FILES) -> Fingerprint:
    """(name, size, mtime_ns) of each of ``names`` present in ``directory``."""
    stamps = []
    for name in names:
        try:
            stat = os.stat(directory / name)
        except OSError:
            continue
        stamps.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)


def sweep_fingerprint(root: Path) -> Fingerprint:
    """Fingerprint of ``sweep.json`` (empty when absent)."""
    return fingerprint(root, (SWEEP_FILE,))


@dataclass
class CacheContent:
    """What the cache file holds.

    Attributes:
        runs: run directory path -> (fingerprint, parsed run).
        sweep_key: the key the assembled sweep was built for, None when not stored.
        sweep: the assembled sweep (an :class:`analysis.load.SweepResults`), None when not stored.
    """

    runs: dict[str, tuple[Fingerprint, RunData]] = field(default_factory=dict)
    sweep_key: Any = None
    sweep: Any = None


def cache_path(root: Path) -> Path:
    """Where the cache of the sweep at ``root`` lives."""
    return root / CACHE_DIR / CACHE_FILE


def read_cache(root: Path) -> CacheContent:
    """The cache content, or an empty one when it is missing or unusable."""
    path = cache_path(root)
    try:
        with path.open("rb") as handle:
            # The cache is a pickle that this package wrote into the sweep directory; a sweep
            # directory is trusted like the code that reads it (never load a stranger's).
            version, content = pickle.load(handle)  # noqa: S301
    except FileNotFoundError:
        return CacheContent()
    except Exception as error:  # noqa: BLE001 - any unpickling problem means "no cache"
        logger.debug("ignoring unreadable analysis cache %s: %s", path, error)
        return CacheContent()
    if version != CACHE_VERSION or not isinstance(content, CacheContent):
        return CacheContent()
    return content


def write_cache(root: Path, content: CacheContent) -> None:
    """Write the cache atomically (temporary file, then rename); failures are ignored."""
    path = cache_path(root)
    # One temporary name per process and thread, so concurrent writers never share one.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        with temporary.open("wb") as handle:
            pickle.dump((CACHE_VERSION, content), handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)
    except (OSError, pickle.PicklingError) as error:
        logger.debug("cannot write analysis cache %s: %s", path, error)
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
