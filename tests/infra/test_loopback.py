"""scripts/check_loopback.sh passes a loopback-only pytest run and fails one that reaches out.

Each test writes a one-test pytest project into tmp_path and runs it through the same script
CI uses (network sandbox + strace), so a check that cannot fail would show up here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECK_LOOPBACK = REPO_ROOT / "scripts" / "check_loopback.sh"


def _tracer_pid() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


@pytest.fixture
def probe_project(tmp_path: Path) -> Path:
    """An isolated pytest project (own ini, so the repository's conftest is not loaded)."""
    if _tracer_pid() != 0:
        pytest.skip("already under strace (this run is itself a check_loopback.sh run)")
    missing = [tool for tool in ("strace", "unshare", "ip") if shutil.which(tool) is None]
    reason = None
    if os.geteuid() != 0:
        reason = "the network sandbox needs root (unshare --net)"
    elif missing:
        reason = f"missing {missing}; run scripts/install_system_deps.sh net"
    if reason:
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(f"{reason} (CI=true: the loopback check must run)", pytrace=False)
        pytest.skip(reason)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    return tmp_path


def _run_check(project: Path, test_body: str) -> subprocess.CompletedProcess[str]:
    (project / "test_probe.py").write_text(test_body)
    return subprocess.run(
        [CHECK_LOOPBACK, "-q", "-p", "no:cacheprovider", "test_probe.py"],
        cwd=project,
        env={**os.environ, "LOOPBACK_TRACE": str(project / "strace.out")},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_outward_connect_fails_the_check(probe_project: Path) -> None:
    result = _run_check(
        probe_project,
        "import socket\n\n"
        "def test_reaches_out():\n"
        "    try:\n"
        "        socket.create_connection(('198.51.100.1', 80), timeout=1)\n"
        "    except OSError:\n"
        "        pass  # nothing answers inside the sandbox; the attempt is what counts\n",
    )
    assert "1 passed" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 3, result.stdout + result.stderr
    assert "connect 198.51.100.1 port 80" in result.stderr


def test_loopback_only_run_passes_the_check(probe_project: Path) -> None:
    result = _run_check(
        probe_project,
        "import socket\n\n"
        "def test_stays_local():\n"
        "    for family, host in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):\n"
        "        with socket.socket(family) as server:\n"
        "            server.bind((host, 0))\n"
        "            server.listen()\n"
        "            socket.create_connection(server.getsockname()[:2], timeout=1).close()\n",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "no non-loopback" in result.stderr
