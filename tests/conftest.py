"""Session fixtures for tests that need real infrastructure: a local SLURM and a private Ray.

``slurm_cluster`` starts SLURM daemons with ``scripts/slurm/start_slurm.sh`` (root only);
``ray_cluster`` starts a loopback-only Ray with ``dino_ablate.launch.ray_local``. Each is
started at most once per pytest process, on first use, and stopped at the end of the session.

When SLURM cannot be started (not root, packages missing without network, start failure),
its tests are skipped with the reason, except under ``CI=true``, where they fail: CI must
not pass by skipping the real-cluster tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.multinode import alive, descendants

# The raw-pixel baselines cache (dino_ablate.baselines) of this test session, not the user's
# home; trials started by Ray or SLURM inherit it through the environment.
os.environ.setdefault("DINO_ABLATE_CACHE", tempfile.mkdtemp(prefix="dino_ablate_cache_"))

REPO_ROOT = Path(__file__).resolve().parents[1]
SLURM_SCRIPTS = REPO_ROOT / "scripts" / "slurm"

if str(REPO_ROOT) not in sys.path:  # dino_ablate importable without an editable install
    sys.path.insert(0, str(REPO_ROOT))

from dino_ablate.launch.ray_local import setup_env, start_ray  # noqa: E402

# Ray reads some settings when it is imported; test modules import ray after conftest.
setup_env()

from tests.multinode import ray_two_nodes, slurm_two_nodes  # noqa: E402, F401  (fixtures)

MARKERS = (
    "slurm: needs the local SLURM cluster (slurm_cluster fixture; root, Debian slurm packages)",
    "ray: needs the private Ray cluster (ray_cluster fixture)",
    "slow: takes more than a few seconds; deselect with -m 'not slow'",
    "multinode: needs a two-host test cluster on this machine (tests/multinode.py)",
)


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> NoReturn:
    """Skip locally; fail under CI=true, where a skipped cluster test would hide a breakage."""
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: infrastructure tests must run)", pytrace=False)
    pytest.skip(reason)


def _free_loopback_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now, so a cluster started by someone else cannot clash."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class SlurmCluster:
    """A running single-node SLURM started for this test session.

    Attributes:
        root: SLURM_ROOT (a fresh /tmp/slurm-* dir): config (``etc/slurm.conf``), state,
            daemon logs (``log/``), ``pids``.
        env: what ``$root/env.sh`` exports: ``SLURM_ROOT``, ``SLURM_CONF`` and ``PATH`` with the
            sacct shim first. The fixture also sets these in ``os.environ`` for the session,
            so submitit and subprocesses pick them up without passing ``env``.
        partition: the only partition.
        start_seconds: wall time of start_slurm.sh.
    """

    root: Path
    env: dict[str, str]
    partition: str
    start_seconds: float

    @property
    def conf(self) -> Path:
        return Path(self.env["SLURM_CONF"])

    @property
    def log_dir(self) -> Path:
        return self.root / "log"


def _read_env_sh(env_sh: Path) -> dict[str, str]:
    """The variables env.sh exports, as a clean bash sees them after sourcing it."""
    names = ("SLURM_ROOT", "SLURM_CONF", "PATH")
    out = subprocess.run(
        [
            "bash",
            "-c",
            'source "$1" && printf "%s\\0" "$SLURM_ROOT" "$SLURM_CONF" "$PATH"',
            "_",
            env_sh,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(zip(names, out.split("\0")[:3], strict=True))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start munged + slurmctld + slurmd (127.0.0.1, free ports) for the session; stop them after.

    Skips (fails under CI=true) when not root or when start_slurm.sh fails; the reason
    includes the tail of its output.
    """
    if os.geteuid() != 0:
        _unavailable("the local SLURM cluster needs root (daemons run as root)")
    # Not under pytest's basetemp: munged refuses a socket below a directory without o+x,
    # and basetemp is 0700. Deleted after a clean stop; kept (with its logs) if start fails.
    root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    ctld_port, slurmd_port = _free_loopback_ports(2)
    script_env = {
        **os.environ,
        "SLURM_ROOT": str(root),
        "SLURM_CTLD_PORT": str(ctld_port),
        "SLURM_SLURMD_PORT": str(slurmd_port),
    }
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [SLURM_SCRIPTS / "start_slurm.sh"],
            env=script_env,
            capture_output=True,
            text=True,
            timeout=600,  # includes apt-get on a fresh machine
        )
    except subprocess.TimeoutExpired:
        _stop_slurm(root)
        _unavailable("start_slurm.sh did not finish within 600 s")
    start_seconds = time.perf_counter() - started
    if proc.returncode != 0:
        if not (root / "log").exists():  # failed before writing anything worth keeping
            shutil.rmtree(root, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        _unavailable(f"start_slurm.sh failed (rc={proc.returncode}):\n{tail}")

    env = _read_env_sh(root / "env.sh")
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield SlurmCluster(root=root, env=env, partition="debug", start_seconds=start_seconds)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if _stop_slurm(root):
            shutil.rmtree(root, ignore_errors=True)


def _stop_slurm(root: Path) -> bool:
    """Run stop_slurm.sh; True when it stopped everything cleanly."""
    proc = subprocess.run(
        [SLURM_SCRIPTS / "stop_slurm.sh"],
        env={**os.environ, "SLURM_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0 or "WARNING" in proc.stdout:
        warnings.warn(
            f"stop_slurm.sh (rc={proc.returncode}): {proc.stdout}{proc.stderr}", stacklevel=2
        )
        return False
    return True


@dataclass(frozen=True)
class RayCluster:
    """A private single-node Ray started for this test session.

    Attributes:
        context: what ``ray.init`` returned (``address_info`` has the GCS address and node IP).
        node_ip: the node's IP (127.0.0.1).
        temp_dir: Ray's session/log directory; deleted at the end of the session.
        storage_path: an empty directory for Tune/Train results (kept with pytest's basetemp).
        start_seconds: wall time of ``start_ray``.
    """

    context: Any
    node_ip: str
    temp_dir: Path
    storage_path: Path
    start_seconds: float


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """Start a 2-CPU loopback-only Ray for the session; shut it down and delete its temp dir.

    The repository root is prepended to PYTHONPATH first: Ray workers do not see pytest's
    sys.path, only the driver's environment. Ray processes still alive a few seconds after
    ``ray.shutdown()`` are killed by PID and reported as a warning.
    """
    import ray

    setup_env()
    saved_pythonpath = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *([saved_pythonpath] if saved_pythonpath else [])]
    )
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    ray_pids: set[int] = set()
    started = time.perf_counter()
    try:
        context = start_ray(num_cpus=2, temp_dir=temp_dir)
        start_seconds = time.perf_counter() - started
        ray_pids = descendants(os.getpid())
        yield RayCluster(
            context=context,
            node_ip=str(context.address_info["node_ip_address"]),
            temp_dir=temp_dir,
            storage_path=tmp_path_factory.mktemp("ray_results"),
            start_seconds=start_seconds,
        )
    finally:
        ray.shutdown()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(pid) for pid in ray_pids):
            time.sleep(0.2)
        leftover = sorted(pid for pid in ray_pids if alive(pid))
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftover:
            warnings.warn(
                f"Ray processes survived ray.shutdown(), killed: {leftover}", stacklevel=2
            )
        shutil.rmtree(temp_dir, ignore_errors=True)
        if saved_pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_pythonpath
