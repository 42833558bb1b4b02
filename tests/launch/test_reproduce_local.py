"""scripts/reproduce_local.py (`make reproduce-local`): phases of sweeps on one loopback Ray.

The slow test runs three tiny sweeps the way the Makefile runs files 1-5: one in a first phase,
then two at once that each copy its finished run and train one point of their own, all on the
one head the script starts (on 127.0.0.1) and stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from dino_ablate.contract import LAUNCH_FILE
from tests.multinode import alive

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "reproduce_local.py"


def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_an_unknown_sweep_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = run_script("--out", str(tmp_path), "momentum,no_such_sweep")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "'no_such_sweep'" in proc.stderr, proc.stderr
    assert "no_such_sweep.yaml is not a file" in proc.stderr and not list(tmp_path.iterdir())


def _sweep(path: Path, seeds: list[int]) -> str:
    from launch_helpers import one_point_sweep

    one_point_sweep(path, path.stem, 2)
    raw = yaml.safe_load(path.read_text())
    raw["seeds"] = seeds
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


@pytest.mark.ray
@pytest.mark.slow
def test_phases_share_one_ray_and_later_sweeps_copy_earlier_runs(tmp_path: Path) -> None:
    first = _sweep(tmp_path / "phase_a.yaml", [0])
    second = _sweep(tmp_path / "phase_b.yaml", [0, 1])
    third = _sweep(tmp_path / "phase_c.yaml", [0, 2])
    out = tmp_path / "out"
    proc = run_script("--out", str(out), "--label", "a-c", "--num-cpus", "2", first,
                      f"{second},{third}")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    lines = proc.stdout.splitlines()
    (head,) = [line for line in lines if line.startswith("ray: one loopback-only head at")]
    assert "127.0.0.1:" in head and "with 2 CPU(s)" in head, head
    assert "[phase_a] submission" in text and "1 launched, 0 skipped, 0 failed" in text
    for name in ("phase_b", "phase_c"):
        (summary,) = [line for line in lines if line.startswith(f"[{name}] submission")]
        assert "1 launched, 0 skipped, 1 copied from finished twins, 0 failed" in summary, text
        assert f"[{name}] " in text and "joined the cluster at 127.0.0.1:" in text
    assert lines[-1].startswith("wall time of the local profiles of files a-c "
                                "(phase_a phase_b phase_c): "), lines[-1]
    for name, seeds in (("phase_a", [0]), ("phase_b", [0, 1]), ("phase_c", [0, 2])):
        runs = sorted((out / name / "local" / "runs").iterdir())
        assert len(runs) == len(seeds), runs
        for run in runs:
            assert '"state": "done"' in (run / "status.json").read_text(), run
    # phase_b's and phase_c's own runs (seeds 1 and 2) trained at the same time
    spans = []
    for name in ("phase_b", "phase_c"):
        (own,) = [r for r in (out / name / "local" / "runs").iterdir() if "seed-0" not in r.name]
        spans.append((datetime.fromisoformat(json.loads((own / LAUNCH_FILE).read_text())["time"]),
                      datetime.fromisoformat(json.loads((own / "status.json").read_text())
                                             ["updated"])))
    (b_start, b_end), (c_start, c_end) = spans
    assert c_start < b_end and b_start < c_end, spans
    # the head is gone with its temp dir and log (kept only on failure)
    log = head.rsplit("(log ", 1)[1].rstrip(")")
    assert not Path(log).exists() and not Path(log).with_suffix("").exists()
    leftover = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if alive(pid)
                and Path(log).with_suffix("").name in _cmdline(pid)]
    assert not leftover, leftover


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
