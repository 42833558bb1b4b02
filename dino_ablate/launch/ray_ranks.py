"""The rank processes of a Ray trial: where they run, their torch.distributed variables, and
the per-node actors that start them on multi-node trials.

A point asking for `nodes x tasks` ranks becomes one Tune trial whose placement group has one
bundle per node (`tasks x cpus_per_task` CPUs, `gpus_per_node` GPUs):

- one node: the bundle is the trial's own; the trial function starts the ranks itself, with
  MASTER_ADDR 127.0.0.1 (what `torchrun --nproc_per_node N` sets, without its agent);
- N nodes: the bundles are STRICT_SPREAD (never two on one node) and the trial function holds
  none of them (an empty head bundle, placed with bundle 0). It starts one :class:`NodeRanks`
  actor in each bundle; each actor starts its node's ranks. MASTER_ADDR is the node IP of
  bundle 0 (global ranks 0..tasks-1) and MASTER_PORT a port free there.

Every rank process gets PR_SET_PDEATHSIG (SIGKILL): when Ray kills or loses the worker that
started it (the trial ends or is cancelled, an actor is killed, a node's raylet dies), the
ranks die with it, so a retry never trains the run twice at the same time. This module never
imports ray at module level.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import ipaddress
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dino_ablate.contract import CONFIG_FILE
from dino_ablate.sweep import Resources

#: variables of the submitting shell that every rank gets, whatever its node's environment:
#: the interface and transport choices of gloo/NCCL, and the project's own settings
#: (data/cache roots, fault injection). Everything else comes from the node's Ray worker.
FORWARD_PREFIXES = ("DINO_ABLATE_", "GLOO_", "NCCL_", "TORCH_NCCL_", "TORCH_DISTRIBUTED_")
#: torch.distributed variables a rank must not inherit from the process that starts it.
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
             "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
#: set in every rank of a multi-node trial: which Ray node it runs on (for the trainer's log).
NODE_ENV = "DINO_ABLATE_NODE"
LOOPBACK_IP = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


@dataclass(frozen=True)
class Placement:
    """What one trial asks Ray for: a placement group of one bundle per node."""

    nodes: int
    tasks: int          # ranks per node
    cpus_per_task: int
    gpus_per_node: int

    @classmethod
    def of(cls, res: Resources) -> Placement:
        return cls(res.nodes, res.tasks, res.cpus_per_task, res.gpus_per_node)

    @property
    def bundle(self) -> dict[str, float]:
        """One node's share: CPUs for all its ranks, and its GPUs (omitted when none)."""
        out = {"CPU": float(self.tasks * self.cpus_per_task)}
        if self.gpus_per_node:
            out["GPU"] = float(self.gpus_per_node)
        return out

    @property
    def strategy(self) -> str:
        return "PACK" if self.nodes == 1 else "STRICT_SPREAD"

    def tune_bundles(self) -> list[dict[str, float]]:
        """Tune's PlacementGroupFactory bundles: the first is the trial function's own. On one
        node it holds the ranks' resources (the function starts them); on several it is empty
        and the node bundles follow (Tune then places the function with bundle 0)."""
        if self.nodes == 1:
            return [self.bundle]
        return [{}] + [self.bundle] * self.nodes

    def describe(self) -> str:
        """`2 bundles {CPU: 80, GPU: 8} STRICT_SPREAD, 8 ranks per bundle`."""
        res = ", ".join(f"{k}: {v:g}" for k, v in self.bundle.items())
        if self.nodes == 1:
            return f"1 bundle {{{res}}}, {self.tasks} rank(s) started by the trial"
        return (f"{self.nodes} bundles {{{res}}} {self.strategy}, one NodeRanks actor and "
                f"{self.tasks} rank(s) per bundle; MASTER_ADDR = bundle 0's node")


def free_port(host: str = "") -> int:
    """A TCP port free on every address now (torch's TCPStore listens on all of them)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def interface_of(ip: str) -> str | None:
    """The network interface whose IPv4 address (or subnet) holds `ip`, or None.

    `127.0.0.3` -> `lo` (127.0.0.1/8); a cluster node's `10.1.2.3` -> e.g. `eth0`. Used as the
    default GLOO_SOCKET_IFNAME of a multi-node trial: gloo binds the interface carrying the
    address the other nodes reach this one by, not whatever the hostname resolves to.
    """
    target = ipaddress.ip_address(ip)
    subnet_match = None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            packed = struct.pack("256s", name.encode()[:15])
            try:
                addr = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, packed)[20:24])
                mask = socket.inet_ntoa(
                    fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, packed)[20:24])
            except OSError:  # no IPv4 address on this interface
                continue
            if ipaddress.ip_address(addr) == target:
                return name
            if subnet_match is None and target in ipaddress.ip_network(f"{addr}/{mask}",
                                                                      strict=False):
                subnet_match = name
    return subnet_match


def forwarded_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The submitting shell's variables every rank gets (see FORWARD_PREFIXES)."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if k.startswith(FORWARD_PREFIXES)}


def base_env(threads: int, forwarded: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without torch.distributed and SLURM variables, plus
    `forwarded`, with OMP_NUM_THREADS = the reserved cores per rank."""
    base = {k: v for k, v in os.environ.items()
            if k not in DIST_VARS and not k.startswith("SLURM_")}
    base.update(forwarded or {})
    base["OMP_NUM_THREADS"] = str(threads)
    return base


def train_command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "dino_ablate", "train", str(run_dir / CONFIG_FILE),
            "--out", str(run_dir)]


def rank_commands(run_dir: Path, nproc: int, threads: int,
                  forwarded: Mapping[str, str] | None = None
                  ) -> list[tuple[list[str], dict[str, str]]]:
    """The command and environment of each rank of a single-node trial."""
    base = base_env(threads, forwarded)
    base.setdefault("GLOO_SOCKET_IFNAME", "lo")  # all ranks on this node: loopback is right
    cmd = train_command(run_dir)
    if nproc == 1:
        return [(cmd, base)]
    port = str(free_port(LOOPBACK_IP))
    return [(cmd, dict(base, RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                       LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR=LOOPBACK_IP, MASTER_PORT=port))
            for rank in range(nproc)]


def node_rank_commands(run_dir: Path, node_rank: int, placement: Placement, master_addr: str,
                       master_port: int, node_ip: str, threads: int,
                       forwarded: Mapping[str, str] | None = None
                       ) -> list[tuple[list[str], dict[str, str]]]:
    """The ranks of node `node_rank` of a multi-node trial (global rank = node x tasks + local).

    GLOO_SOCKET_IFNAME, unless the submitter or the node sets it, is the interface carrying
    this node's Ray IP (:func:`interface_of`).
    """
    base = base_env(threads, forwarded)
    if "GLOO_SOCKET_IFNAME" not in base:
        ifname = interface_of(node_ip)
        if ifname:
            base["GLOO_SOCKET_IFNAME"] = ifname
    base[NODE_ENV] = f"ray node {node_rank} {node_ip}"
    world = placement.nodes * placement.tasks
    cmd = train_command(run_dir)
    return [(cmd, dict(base, RANK=str(node_rank * placement.tasks + local), WORLD_SIZE=str(world),
                       LOCAL_RANK=str(local), LOCAL_WORLD_SIZE=str(placement.tasks),
                       GROUP_RANK=str(node_rank), MASTER_ADDR=master_addr,
                       MASTER_PORT=str(master_port)))
            for local in range(placement.tasks)]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@contextlib.contextmanager
def started_ranks(commands: list[tuple[list[str], dict[str, str]]], log_file: Path, what: str
                  ) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start the ranks with their output appended to `log_file`; kill the ones still running
    on exit. Must be entered and left on one thread: PR_SET_PDEATHSIG fires when the thread
    that started a rank ends."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    with log_file.open("ab") as fh:
        fh.write(f"== {time.strftime('%H:%M:%S')} ray trial: starting {len(commands)} rank(s) "
                 f"of {what} (MASTER_PORT {commands[0][1].get('MASTER_PORT', '-')})\n".encode())
        fh.flush()
        try:
            for cmd, env in commands:
                procs.append(subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL,
                                              preexec_fn=_die_with_parent))  # noqa: PLW1509
            yield procs
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            codes = [proc.wait() for proc in procs]
            fh.write(f"== {time.strftime('%H:%M:%S')} ray trial: {len(commands)} rank(s) ended, "
                     f"exit codes {codes}\n".encode())


def wait_ranks(procs: list[subprocess.Popen[bytes]], poll_s: float,
               tick: Any = None) -> list[int | None]:
    """Wait until every rank has exited or one has failed (the others would wait in a
    collective for the 30-minute timeout); call `tick()` every `poll_s`. The exit codes."""
    while any(p.poll() is None for p in procs):
        time.sleep(poll_s)
        if any(p.returncode not in (None, 0) for p in procs):
            break
        if tick is not None:
            tick()
    return [p.poll() for p in procs]


class NodeRanks:
    """Ray actor (made remote by the trial): one node's ranks of a multi-node trial.

    The trial creates one per bundle, asks each where it is, then calls :meth:`run` on all.
    Killing the actor (or losing its node) kills its ranks (PR_SET_PDEATHSIG). `run` starts
    and waits on the actor's one execution thread, which lives as long as the actor.
    """

    def where(self) -> dict[str, str]:
        import ray

        return {"ip": ray.util.get_node_ip_address(), "host": socket.gethostname(),
                "node_id": ray.get_runtime_context().get_node_id()}

    def free_port(self) -> int:
        return free_port()

    def run(self, run_dir: str, node_rank: int, placement: dict[str, int], master_addr: str,
            master_port: int, forwarded: dict[str, str], log_file: str,
            poll_s: float) -> list[int | None]:
        """Start this node's ranks (commands built here: this node's python and environment)
        and wait for them; their exit codes."""
        import ray

        place = Placement(**placement)
        commands = node_rank_commands(Path(run_dir), node_rank, place, master_addr,
                                      master_port, ray.util.get_node_ip_address(),
                                      place.cpus_per_task, forwarded)
        with started_ranks(commands, Path(log_file),
                           f"{Path(run_dir).name} on node {node_rank}") as procs:
            return wait_ranks(procs, poll_s)


def _log_line(log_file: Path, text: str) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as fh:
        fh.write(f"== {time.strftime('%H:%M:%S')} ray trial: {text}\n")


def node_log_file(log_file: Path, node_rank: int) -> Path:
    """`logs/<run_id>.node1.log`: one file per node (appends from several hosts to one file
    on a network file system may interleave)."""
    return log_file.with_name(f"{log_file.stem}.node{node_rank}{log_file.suffix}")


def run_on_nodes(spec: dict[str, Any], report: Callable[[], None], poll_s: float,
                 actor_start_s: float) -> list[int | None]:
    """A multi-node trial: one NodeRanks actor per bundle of this trial's placement group."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    placement = Placement(**spec["placement"])
    log_file = Path(spec["log_file"])
    group = ray.util.get_current_placement_group()
    if group is None:
        raise RuntimeError("a multi-node trial must run in its placement group")
    bundle = placement.bundle
    launcher: Any = ray.remote(NodeRanks)
    actors: list[Any] = [launcher.options(
        num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0.0), max_restarts=0,
        scheduling_strategy=PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=node)).remote()
        for node in range(placement.nodes)]
    try:
        where = ray.get([a.where.remote() for a in actors], timeout=actor_start_s)
        master_addr = where[0]["ip"]
        master_port = int(ray.get(actors[0].free_port.remote(), timeout=actor_start_s))
        nodes = "; ".join(
            f"node {i}: {w['ip']} ({w['host']}, ray node {w['node_id'][:12]}) ranks "
            f"{i * placement.tasks}-{(i + 1) * placement.tasks - 1}"
            for i, w in enumerate(where))
        _log_line(log_file, f"placement {placement.describe()}: {nodes}; MASTER_ADDR "
                  f"{master_addr}:{master_port}; rank output in "
                  f"{node_log_file(log_file, 0).name} ...")
        runs = {a.run.remote(spec["run_dir"], node, dataclasses.asdict(placement), master_addr,
                             master_port, spec["env"], str(node_log_file(log_file, node)),
                             poll_s): node
                for node, a in enumerate(actors)}
        codes: dict[int, list[int | None]] = {}
        pending = list(runs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
            report()
            for ref in ready:
                node = runs[ref]
                try:
                    codes[node] = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the actor or its node was lost
                    _log_line(log_file, f"node {node} lost: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}")
                    codes[node] = [None] * placement.tasks
                if any(c != 0 for c in codes[node]):
                    pending = []  # the other nodes' ranks would wait in a collective
        _log_line(log_file, f"{placement.nodes} node(s) ended, exit codes "
                  f"{[codes.get(n) for n in range(placement.nodes)]}")
        return [c for n in range(placement.nodes) for c in codes.get(n, [None] * placement.tasks)]
    finally:
        for actor in actors:  # kills the ranks still running (PR_SET_PDEATHSIG)
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
