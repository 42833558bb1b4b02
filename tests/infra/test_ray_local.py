"""The private Ray cluster from dino_ablate.launch.ray_local is loopback-only and runs tasks."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import ray

if TYPE_CHECKING:
    from tests.conftest import RayCluster

pytestmark = pytest.mark.ray


def test_node_ip_is_loopback(ray_cluster: RayCluster) -> None:
    assert ray_cluster.node_ip == "127.0.0.1"
    assert ray_cluster.context.address_info["gcs_address"].startswith("127.0.0.1:")
    alive = [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]]
    assert alive == ["127.0.0.1"]


def test_remote_task_runs_with_real_home(ray_cluster: RayCluster) -> None:
    @ray.remote(num_cpus=1)
    def square(x: int) -> tuple[int, str]:
        return x * x, os.environ.get("HOME", "")

    results = ray.get([square.remote(i) for i in range(4)], timeout=60)
    assert [value for value, _ in results] == [0, 1, 4, 9]
    # start_ray() hides HOME from the daemons (cloud-probe block) but gives it back to workers.
    assert {home for _, home in results} == {os.environ["HOME"]}


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) not installed")
def test_ray_listens_on_loopback_only(ray_cluster: RayCluster) -> None:
    """Every TCP listener of this session's Ray processes is bound to 127.0.0.1."""
    session_pids = _ray_session_pids(ray_cluster)
    assert session_pids, "found no Ray processes for this session"
    listeners = subprocess.run(
        ["ss", "-Hltnp"], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    ours = [
        line for line in listeners if set(map(int, re.findall(r"pid=(\d+)", line))) & session_pids
    ]
    assert ours, "Ray processes have no TCP listeners?"
    for line in ours:
        local = line.split()[3]  # 127.0.0.1:41233, [::ffff:127.0.0.1]:41233, *:41233
        host = local.rsplit(":", 1)[0].strip("[]")
        assert host not in {"*", "0.0.0.0", "::"}, f"Ray listens on all interfaces: {line}"
        address = ipaddress.ip_address(host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        assert address.is_loopback, f"Ray listens beyond loopback: {line}"


def _ray_session_pids(ray_cluster: RayCluster) -> set[int]:
    """PIDs whose command line mentions this session's Ray temp dir (gcs_server, raylet, ...)."""
    marker = str(ray_cluster.temp_dir).encode()
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if marker in cmdline.read():
                    pids.add(int(entry))
        except OSError:
            continue
    return pids


def test_connect_ray_attaches_second_driver(ray_cluster: RayCluster) -> None:
    """connect_ray() from another process joins this cluster instead of starting one."""
    gcs_address = ray_cluster.context.address_info["gcs_address"]
    script = (
        "import sys\n"
        "from dino_ablate.launch.ray_local import connect_ray\n"
        "context = connect_ray(sys.argv[1])\n"
        "import ray\n"
        "print(context.address_info['gcs_address'], ray.get(ray.remote(lambda: 6 * 7).remote()))\n"
        "ray.shutdown()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, gcs_address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [gcs_address, "42"]
