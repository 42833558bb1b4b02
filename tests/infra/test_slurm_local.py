"""submitit against the real local SLURM cluster (scripts/slurm/start_slurm.sh).

These check what the SLURM launcher relies on: jobs run and return, a 2-task job forms a
gloo process group through submitit's TorchDistributedEnvironment, a job that dies without a
result is reported as failed (needs the sacct shim), and a requeued job runs again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
import pytest
import submitit
from submitit.core.utils import UncompletedJobError

if TYPE_CHECKING:
    from tests.conftest import SlurmCluster

pytestmark = pytest.mark.slurm

# submitit pickles the job function with cloudpickle, by reference when its module is
# importable. This test module is not importable inside the job (pytest put its directory on
# sys.path, the job's python does not), so pickle its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Slurm's own time limit for every job: a job that hangs is killed, and then (thanks to the
# sacct shim) job.result() raises instead of blocking the test session.
JOB_TIMEOUT_MIN = 5


def _executor(folder: Path, cluster: SlurmCluster, **params: Any) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    settings: dict[str, Any] = {
        "timeout_min": JOB_TIMEOUT_MIN,
        "slurm_partition": cluster.partition,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": 1,
        "mem_gb": 1,
    }
    settings.update(params)
    executor.update_parameters(**settings)
    assert executor.cluster == "slurm"
    return executor


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.2)


# ---------------------------------------------------------------- job functions
def add(a: int, b: int) -> dict[str, Any]:
    return {
        "sum": a + b,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "node": os.environ.get("SLURMD_NODENAME"),
    }


def gloo_all_reduce() -> dict[str, Any]:
    import datetime

    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    try:
        value = torch.tensor([float(env.rank + 1)])
        dist.all_reduce(value)  # sum over ranks: 1 + 2
        return {
            "rank": env.rank,
            "world_size": env.world_size,
            "master_addr": env.master_addr,
            "all_reduce": value.item(),
        }
    finally:
        dist.destroy_process_group()


def sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # dies without writing a result pickle


def run_until_released(marker_dir: str) -> dict[str, int]:
    """Record each (re)start, then wait until the test creates ``release``."""
    restart_count = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    Path(marker_dir, f"started_{restart_count}").touch()
    deadline = time.monotonic() + 90
    while not Path(marker_dir, "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("release file never appeared")
        time.sleep(0.2)
    return {"restart_count": restart_count}


# ---------------------------------------------------------------- tests
def test_job_runs_and_returns(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = _executor(tmp_path, slurm_cluster).submit(add, 2, 3)
    result = job.result()
    assert result == {"sum": 5, "job_id": job.job_id, "node": "localhost"}
    # The state comes from sacct, i.e. the shim, since there is no accounting database. The
    # result pickle is written before SLURM's epilogue ends the job, so the state may still
    # read RUNNING for a moment: poll it (bounded) until it settles.
    deadline = time.monotonic() + 60
    state = job.get_info(mode="force").get("State")
    while state != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(1)
        state = job.get_info(mode="force").get("State")
    assert state == "COMPLETED"


def test_two_task_job_forms_gloo_group(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    executor = _executor(tmp_path, slurm_cluster, tasks_per_node=2, mem_gb=2)
    job = executor.submit(gloo_all_reduce)
    results = job.results()  # one per task; result() refuses multi-task jobs
    assert sorted(r["rank"] for r in results) == [0, 1]
    for result in results:
        assert result["world_size"] == 2
        assert result["all_reduce"] == 3.0
        assert result["master_addr"] == "localhost"


def test_killed_job_raises_instead_of_hanging(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job = _executor(tmp_path, slurm_cluster).submit(sigkill_self)
    # result() waits this long for a result pickle that a slow shared filesystem may show
    # late (default 15 s); on local disk there is nothing to wait for. submitit's own tests
    # set it the same way.
    job._results_timeout_s = 0
    # force_check asks sacct on every poll instead of submitit's back-off (2, 4, 8 ... s).
    # Without a working sacct this never becomes True: no result pickle is ever written.
    _wait_for(lambda: job.done(force_check=True), timeout_s=60, what="job.done()")
    assert job.state == "FAILED"
    with pytest.raises(UncompletedJobError, match="FAILED"):
        job.result()


@pytest.mark.slow
def test_scontrol_requeue_restarts_running_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    job = _executor(tmp_path, slurm_cluster).submit(run_until_released, str(markers))
    _wait_for((markers / "started_0").exists, timeout_s=60, what="first start")

    subprocess.run(["scontrol", "requeue", job.job_id], check=True, capture_output=True)
    # SIGTERM is ignored by submitit, SIGKILL follows after KillWait (5 s); the job may start
    # again after cred_expire (5 s) at the next scheduler pass.
    _wait_for((markers / "started_1").exists, timeout_s=60, what="restart after requeue")
    (markers / "release").touch()
    assert job.result() == {"restart_count": 1}
