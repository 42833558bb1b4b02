#!/usr/bin/env python3
"""`make reproduce-local`'s runner: the `local` profiles of sweep files on one loopback-only Ray.

    python scripts/reproduce_local.py --out DIR --label 1-5 \\
        momentum batch_size,patch_size,teacher_update,centering_sharpening

Each positional argument is a phase: its sweeps (comma-separated; a name means
`sweeps/NAME.yaml`, anything ending in `.yaml` is a path) run at once, sharing the cluster's
CPUs, and a phase starts when the one before it has ended. A sweep that copies a finished run
of another (a point two studies share, found by `runs.find_finished_twin`) must come in a later
phase than the sweep that trains it. Within a phase the sweeps start in the order given, a few
seconds apart, so that Ray queues the first one's trials first: put the longest first, and the
short runs of the others fill the cores at the end.

Why one Ray for all: with one private Ray per sweep, run one after another, a sweep whose last
run holds one core (patch_size's one run, batch_size's batch-2 run) leaves the other core idle
until it ends. The cluster is one `scripts/ray/ray_node.py` head on 127.0.0.1 with every CPU of
the machine (loopback only, as the tests' clusters), stopped at the end; each sweep joins it
with `--ray-address`. Every sweep's lines are printed prefixed with its name; the last line
gives the wall time. Exit status: 0 when every sweep succeeded, else 1 (a failed phase stops
the run).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY_NODE = ROOT / "scripts" / "ray" / "ray_node.py"
HEAD_IP = "127.0.0.1"
START_TIMEOUT_S = 120.0
STAGGER_S = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HEAD_IP, 0))
        return int(sock.getsockname()[1])


def wait_alive(address: str, head: subprocess.Popen[bytes], log: Path) -> None:
    """Until the head's GCS reports a live node; the head exiting first is an error."""
    sys.path.insert(0, str(ROOT))
    from dino_ablate.launch.ray_local import setup_env

    setup_env()  # before ray is imported: this process asks the GCS only, on loopback
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise SystemExit(f"error: the Ray head exited with {head.returncode}; see {log}")
        with contextlib.suppress(Exception):
            nodes = GcsClient(address=address).get_all_node_info(timeout=5).values()
            if any(node.state == 0 for node in nodes):
                return
        time.sleep(0.5)
    raise SystemExit(f"error: the Ray head at {address} was not up within "
                     f"{START_TIMEOUT_S:.0f} s; see {log}")


def stop(head: subprocess.Popen[bytes]) -> None:
    """SIGTERM: `ray start --block` stops the node's processes, then exits."""
    if head.poll() is None:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()


def relay(name: str, stream: object) -> None:
    for line in iter(stream.readline, b""):  # type: ignore[attr-defined]
        sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
        sys.stdout.flush()


def sweep_file(entry: str) -> Path:
    return Path(entry) if entry.endswith((".yaml", ".yml")) else ROOT / "sweeps" / f"{entry}.yaml"


def run_phase(entries: list[str], out: Path, address: str) -> list[str]:
    """The phase's sweeps at once; returns the names of those that failed."""
    procs: list[tuple[str, subprocess.Popen[bytes], threading.Thread]] = []
    for i, entry in enumerate(entries):
        if i:
            time.sleep(STAGGER_S)
        name = sweep_file(entry).stem
        proc = subprocess.Popen(
            [sys.executable, "-m", "dino_ablate", "sweep", str(sweep_file(entry)),
             "--backend", "ray", "--profile", "local", "--out", str(out),
             "--ray-address", address],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        thread = threading.Thread(target=relay, args=(name, proc.stdout), daemon=True)
        thread.start()
        procs.append((name, proc, thread))
    failed = []
    for name, proc, thread in procs:
        if proc.wait() != 0:
            failed.append(name)
        thread.join()
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the sweeps' output root")
    parser.add_argument("--label", default="", help="how the wall-time line names the files")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("phases", nargs="+", metavar="SWEEP[,SWEEP...]")
    args = parser.parse_args()
    phases = [[n for n in phase.split(",") if n] for phase in args.phases]
    for entry in (e for phase in phases for e in phase):
        if not sweep_file(entry).is_file():
            print(f"error: sweep {entry!r}: {sweep_file(entry)} is not a file; allowed: the "
                  f"name of a file in {ROOT / 'sweeps'} or a path ending in .yaml",
                  file=sys.stderr)
            return 2
    # The ranks get the Ray node's environment, whose HOME is a temporary directory
    # (ray_node.py), so the baseline cache is named here, where HOME is the user's.
    from_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dino_ablate"
    os.environ.setdefault("DINO_ABLATE_CACHE", str(from_home))
    temp_dir = Path(tempfile.mkdtemp(prefix="drl-", dir="/tmp"))  # short: unix sockets
    address = f"{HEAD_IP}:{free_port()}"
    log = temp_dir.with_suffix(".log")
    start = time.monotonic()
    with log.open("wb") as head_out:
        head = subprocess.Popen(
            [sys.executable, str(RAY_NODE), "--node-ip", HEAD_IP, "--head", "--port",
             address.rsplit(":", 1)[1], "--num-cpus", str(args.num_cpus),
             "--temp-dir", str(temp_dir)],
            stdout=head_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_alive(address, head, log)
        print(f"ray: one loopback-only head at {address} with {args.num_cpus} CPU(s) "
              f"(log {log})", flush=True)
        for phase in phases:
            failed = run_phase(phase, args.out, address)
            if failed:
                print(f"error: sweep(s) {', '.join(failed)} failed; the later phases were not "
                      "started", file=sys.stderr)
                return 1
    finally:
        stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    log.unlink()  # kept only when something failed
    el = int(time.monotonic() - start)
    names = " ".join(sweep_file(e).stem for phase in phases for e in phase)
    print(f"wall time of the local profiles of files {args.label} ({names}): "
          f"{el // 60} min {el % 60} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
