"""Session fixtures of the two-host test clusters on this machine (marker `multinode`).

``ray_two_nodes``: a Ray head on 127.0.0.2 and a worker node on 127.0.0.3, one
``scripts/ray/ray_node.py`` process (``ray start --block``) each, one CPU each, so a
STRICT_SPREAD placement group of two one-CPU bundles puts one bundle on each node.
``slurm_two_nodes``: a SLURM of two nodes, mnode1 on 127.0.0.2 and mnode2 on 127.0.0.3
(``scripts/slurm/start_slurm.sh`` with ``SLURM_NODES=2``): one slurmd each with its own port,
spool and log files and, through a UTS namespace, its own hostname. The node names must
resolve to their addresses, which the network sandbox (scripts/netns_sandbox.sh) arranges;
elsewhere the fixture skips (fails under CI=true).

Both bind only 127.x addresses: on the host's loopback, or on the sandbox's private one when
the suite runs under scripts/check_loopback.sh. Imported by tests/conftest.py.
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
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RAY_NODE = REPO_ROOT / "scripts" / "ray" / "ray_node.py"
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
NODE_START_S = 120.0


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> set[int]:
    """PIDs of all live descendants of ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class RayNode:
    ip: str
    temp_dir: Path
    proc: subprocess.Popen[bytes]
    pids: set[int] = field(default_factory=set)  # the node's processes, seen while it ran

    def remember_pids(self) -> None:
        self.pids |= descendants(self.proc.pid)


@dataclass
class RayTwoNodes:
    """The running two-node Ray cluster.

    Attributes:
        address: the head's GCS address (``127.0.0.2:PORT``), for ``--ray-address``.
        root: temp dirs and the nodes' console logs (``head.out``, ``worker*.out``).
        head, worker: the node processes (``ray_node.py``, i.e. ``ray start --block``).
    """

    address: str
    root: Path
    head: RayNode
    worker: RayNode
    restarts: int = 0

    def alive_nodes(self) -> list[str]:
        """Node IPs the GCS reports alive (asked directly, without a driver)."""
        from ray._raylet import GcsClient

        client = GcsClient(address=self.address)
        infos = client.get_all_node_info(timeout=10).values()
        return sorted(info.node_manager_address for info in infos if info.state == 0)

    def wait_alive(self, ips: list[str], timeout: float = NODE_START_S) -> None:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                seen = self.alive_nodes()
                if seen == sorted(ips):
                    self.head.remember_pids()
                    self.worker.remember_pids()
                    return
            for node in (self.head, self.worker):
                if node.proc.poll() is not None:
                    raise RuntimeError(f"ray node {node.ip} exited ({node.proc.returncode}); "
                                       f"see {self.root}")
            time.sleep(0.5)
        raise RuntimeError(f"alive Ray nodes {seen}, expected {sorted(ips)} within {timeout} s")

    def worker_raylet(self) -> int:
        raylets = [p for p in descendants(self.worker.proc.pid) if comm(p) == "raylet"]
        assert len(raylets) == 1, raylets
        return raylets[0]

    def kill_worker_raylet(self) -> None:
        """The worker host lost: SIGKILL its raylet; `ray start --block` then kills the node's
        other processes (its Ray workers, hence the ranks they started) and exits."""
        self.worker.remember_pids()
        os.kill(self.worker_raylet(), signal.SIGKILL)
        self.worker.proc.wait(timeout=60)

    def restart_worker(self) -> None:
        """The lost host comes back: a fresh worker node on the same IP (a new node id)."""
        self.restarts += 1
        self.worker = start_ray_node(self.root, WORKER_IP, f"w{self.restarts}",
                                     address=self.address)
        self.wait_alive([HEAD_IP, WORKER_IP])


def start_ray_node(root: Path, ip: str, name: str, *, address: str | None = None,
                   port: int | None = None) -> RayNode:
    temp_dir = root / name
    role = ["--head", "--port", str(port)] if address is None else ["--address", address]
    with (root / f"{name}.out").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, str(RAY_NODE), "--node-ip", ip, *role, "--num-cpus", "1",
             "--temp-dir", str(temp_dir)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])})
    return RayNode(ip, temp_dir, proc)


def stop_ray_node(node: RayNode) -> list[int]:
    """SIGTERM the node process (it stops its node), then SIGKILL what is left, by PID."""
    node.remember_pids()
    if node.proc.poll() is None:
        node.proc.terminate()
        try:
            node.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in node.pids):
        time.sleep(0.2)
    leftover = sorted(p for p in node.pids if alive(p))
    for pid in leftover:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return leftover


@pytest.fixture(scope="session")
def ray_two_nodes() -> Iterator[RayTwoNodes]:
    """Start the two-node Ray for the session; stop both nodes (by PID) at the end."""
    # short: Ray's unix socket paths live under each node's temp dir
    root = Path(tempfile.mkdtemp(prefix="rmn-", dir="/tmp"))
    port = free_port(HEAD_IP)
    address = f"{HEAD_IP}:{port}"
    started = time.perf_counter()
    nodes = [start_ray_node(root, HEAD_IP, "h", port=port)]
    try:
        # the worker registers with the head's GCS: wait for the head alone first
        RayTwoNodes(address, root, nodes[0], nodes[0]).wait_alive([HEAD_IP])
        nodes.append(start_ray_node(root, WORKER_IP, "w0", address=address))
        cluster = RayTwoNodes(address, root, *nodes)
        cluster.wait_alive([HEAD_IP, WORKER_IP])
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        for node in reversed(nodes):
            stop_ray_node(node)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}"
                         for p in sorted(root.glob("*.out")))
        pytest.fail(f"two-node Ray did not start: {exc}\n{logs}", pytrace=False)
    print(f"two-node Ray up in {time.perf_counter() - started:.1f} s at {address}")
    try:
        yield cluster
    finally:
        leftover = stop_ray_node(cluster.worker) + stop_ray_node(cluster.head)
        if leftover:
            warnings.warn(f"Ray node processes survived their node, killed: {leftover}",
                          stacklevel=2)
        shutil.rmtree(root, ignore_errors=True)


SLURM_SCRIPTS = REPO_ROOT / "scripts" / "slurm"
SLURM_NODES = {"mnode1": "127.0.0.2", "mnode2": "127.0.0.3"}
#: seconds a silent slurmd may take before its node is DOWN (and its jobs are requeued)
SLURMD_TIMEOUT_S = 10


@dataclass(frozen=True)
class SlurmTwoNodes:
    """The running two-node SLURM.

    Attributes:
        root: SLURM_ROOT (config, state, ``log/slurmd.mnode1.log`` ..., ``pids``).
        env: ``SLURM_ROOT``, ``SLURM_CONF`` and ``PATH`` (sacct shim first) of this cluster.
            Not put in ``os.environ`` (the one-node ``slurm_cluster`` does that for itself):
            tests set them for their own duration (``monkeypatch``).
        nodes: node name -> NodeAddr.
    """

    root: Path
    env: dict[str, str]
    nodes: dict[str, str]
    partition: str = "debug"

    def restart_slurmd(self, node: str, down: int | str = "down") -> str:
        """Stop one node's slurmd for `down` seconds (or, with "down", until slurmctld has
        marked the node DOWN), then start it again; the script's log."""
        proc = subprocess.run([str(SLURM_SCRIPTS / "restart_slurmd.sh"), str(down)],
                              env={**os.environ, **self.env, "SLURM_NODE": node},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout


@pytest.fixture(scope="session")
def slurm_two_nodes() -> Iterator[SlurmTwoNodes]:
    """Start munged + slurmctld (127.0.0.1) + two slurmd (mnode1, mnode2) for the session."""
    from tests.conftest import _read_env_sh, _stop_slurm, _unavailable

    if os.geteuid() != 0:
        _unavailable("the two-node SLURM needs root (daemons run as root)")
    for name, addr in SLURM_NODES.items():
        try:
            resolved = socket.gethostbyname(name)
        except OSError:
            resolved = None
        if resolved != addr:
            _unavailable(f"node name {name} resolves to {resolved}, not {addr}: run the tests "
                         "in scripts/netns_sandbox.sh (scripts/check_loopback.sh), whose "
                         "/etc/hosts names the two test hosts")
    root = Path(tempfile.mkdtemp(prefix="slurm2-", dir="/tmp"))  # munged wants o+x above
    ports = [free_port("") for _ in range(3)]  # the slurmds listen on all addresses
    proc = subprocess.run(
        [SLURM_SCRIPTS / "start_slurm.sh"],
        env={**os.environ, "SLURM_ROOT": str(root), "SLURM_NODES": "2",
             "SLURM_CTLD_PORT": str(ports[0]), "SLURM_SLURMD_PORTS": f"{ports[1]} {ports[2]}",
             "SLURM_SLURMD_TIMEOUT": str(SLURMD_TIMEOUT_S)},
        capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        _stop_slurm(root)
        _unavailable(f"start_slurm.sh (2 nodes) failed (rc={proc.returncode}):\n{tail}")
    print(proc.stdout.strip().splitlines()[-3])
    try:
        yield SlurmTwoNodes(root=root, env=_read_env_sh(root / "env.sh"), nodes=SLURM_NODES)
    finally:
        if _stop_slurm(root):
            shutil.rmtree(root, ignore_errors=True)
