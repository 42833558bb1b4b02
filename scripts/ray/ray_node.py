#!/usr/bin/env python3
"""Start one node of a loopback-only multi-node Ray cluster on this machine (`ray start --block`).

The tests' two-host Ray cluster (tests/conftest.py, fixture ``ray_two_nodes``) is a head on
127.0.0.2 and a worker on 127.0.0.3, two `ray start` nodes with their own node IP, temp dir
and resources, so a STRICT_SPREAD placement group really puts one bundle on each. Three of
Ray's defaults would send traffic off the machine, and each is turned off here:

* ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``: with "1" (the Linux default) every Ray process that
  asks for "its" IP UDP-connects towards 8.8.8.8:53 (``node_ip_address_from_perspective``);
  with "0" ``ray start --address`` refuses to add a worker node. The daemons get "0"; this
  process (the CLI) passes its multi-node check, and its own IP probe returns ``--node-ip``.
* a cluster started by ``ray start`` (not ``ray.init``) with usage stats disabled still
  reports "disabled" to https://usage-stats.ray.io (dashboard UsageStatsHead):
  ``RAY_USAGE_STATS_REPORT_URL`` points it at a closed loopback port instead.
* the dashboard's cloud-metadata probe (169.254.169.254, metadata.google.internal) unless
  ``~/ray_bootstrap_config.yaml`` exists: HOME is a directory under the temp dir holding one.

Usage (one process per node; it blocks until SIGTERM, then stops its node's processes):
    ray_node.py --node-ip 127.0.0.2 --head --port 6391 --num-cpus 1 --temp-dir /tmp/rmn-a
    ray_node.py --node-ip 127.0.0.3 --address 127.0.0.2:6391 --num-cpus 1 --temp-dir /tmp/rmn-b
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

#: a port nothing listens on: the "usage disabled" report is refused at once, on loopback.
CLOSED_LOOPBACK_URL = "http://127.0.0.1:9/"


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--node-ip", required=True, help="a 127.x address of this node")
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start the head (GCS) here")
    role.add_argument("--address", help="the head's GCS address (worker node)")
    p.add_argument("--port", type=int, default=6379, help="GCS port (head only)")
    p.add_argument("--num-cpus", type=int, required=True)
    p.add_argument("--resources", default="{}", help="custom resources, JSON")
    p.add_argument("--temp-dir", required=True, type=Path,
                   help="short path (unix sockets live under it)")
    p.add_argument("--object-store-mb", type=int, default=128)
    args = p.parse_args(argv)
    if not args.node_ip.startswith("127."):
        p.error(f"--node-ip {args.node_ip}: must be a 127.x address (loopback only)")

    home = args.temp_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("{}\n")
    os.environ.update({
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # read by each daemon when it imports ray
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_USAGE_STATS_REPORT_URL": CLOSED_LOOPBACK_URL,
        "RAY_AUTH_MODE": "disabled",
        "HOME": str(home),
    })
    from ray._private import ray_constants, services

    ray_constants.ENABLE_RAY_CLUSTER = True  # this CLI only: allow `ray start --address`
    node_ip = args.node_ip
    services.node_ip_address_from_perspective = lambda address=None: node_ip

    from ray.scripts.scripts import main as ray_main

    cmd = ["start", "--block",
           # fixed defaults (8265, 52365) would clash with any other Ray on this machine
           f"--dashboard-agent-listen-port={_free_port(node_ip)}",
           f"--node-ip-address={node_ip}", f"--num-cpus={args.num_cpus}",
           "--num-gpus=0", f"--resources={args.resources}", f"--temp-dir={args.temp_dir}",
           f"--object-store-memory={args.object_store_mb * 2**20}", "--disable-usage-stats"]
    if args.head:
        cmd += ["--head", f"--port={args.port}", "--include-dashboard=false",
                f"--dashboard-port={_free_port('127.0.0.1')}"]
    else:
        cmd += [f"--address={args.address}"]
    sys.argv = ["ray", *cmd]
    return int(ray_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
