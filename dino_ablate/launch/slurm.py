"""SLURM backend through submitit: one job array per resource shape, requeue-safe jobs.

Each point becomes one array task running :class:`TrainJob`. A task runs `nodes` x
`tasks_per_node` ranks (one per GPU; on CPU, `resources.tasks_per_node` ranks for gloo DDP);
the trainer reads the torch.distributed environment submitit derives from SLURM. On a time
limit or preemption SLURM sends USR2 (`signal_delay_s` before the limit); submitit calls
`TrainJob.checkpoint()`, which returns the same job, and requeues it. The requeued job resumes
from the run directory's last checkpoint (the trainer checkpoints every epoch), so the job
carries no state of its own and an external `scontrol requeue` (SIGKILL, no checkpoint call)
resumes just as well.

Points of one submission that need different resources cannot share an sbatch header, so they
go into one array per distinct resource set (usually a single array).

No shell sees the parameters: submitit writes them as quoted `#SBATCH` lines and calls
`sbatch FILE` without a shell, and the sweep validation refuses shell metacharacters in names.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import submitit

from dino_ablate.errors import ConfigError, env_number
from dino_ablate.launch.base import LaunchItem, LaunchOutcome, record_launch
from dino_ablate.runs import RunLock
from dino_ablate.sweep import Resources, Sweep

log = logging.getLogger("dino_ablate.launch.slurm")

#: how long a starting job waits for the run's lock (its submitter may still hold it), in s;
#: `DINO_ABLATE_JOB_LOCK_WAIT_S` in the submitter's environment (which sbatch passes on) sets
#: another wait (`job_lock_wait_s`)
JOB_LOCK_WAIT_S = 600.0
JOB_LOCK_WAIT_ENV = "DINO_ABLATE_JOB_LOCK_WAIT_S"


def job_lock_wait_s() -> float:
    """`JOB_LOCK_WAIT_S`, or the number of seconds `DINO_ABLATE_JOB_LOCK_WAIT_S` gives."""
    value = env_number(JOB_LOCK_WAIT_ENV, "a number of seconds >= 0", lambda v: v >= 0)
    return JOB_LOCK_WAIT_S if value is None else value
#: srun ends every task of a job once one exits with an error: a rank that fails (rank 0
#: refused the run's lock, a crash) would leave the others waiting at the rendezvous or in a
#: collective for the process group's 30-minute timeout, holding every node of the job
SRUN_ARGS = ("--kill-on-bad-exit=1",)


class TrainJob(submitit.helpers.Checkpointable):
    """The callable submitit runs in each task: train (or resume) one run directory."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def __call__(self) -> str:
        from dino_ablate import dist
        from dino_ablate.train import train_run_dir

        run_dir = Path(self.run_dir)
        rank = dist.detect().rank
        logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
        lock = RunLock(run_dir)
        if rank == 0:
            env = submitit.JobEnvironment()
            if not lock.acquire(f"train slurm job {env.job_id}", timeout_s=job_lock_wait_s()):
                holder = lock.holder()
                raise RuntimeError(f"{run_dir} is locked by {holder}; not training it twice")
        try:
            return train_run_dir(run_dir)
        finally:
            lock.release()

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue this same job: all state lives in the run directory's checkpoints."""
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def sbatch_parameters(res: Resources, job_name: str, max_parallel: int | None,
                      setup: Sequence[str] = ()) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters (sbatch names) for these resources."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": res.time_min,
        "nodes": res.nodes,
        "ntasks_per_node": res.tasks,
        "cpus_per_task": res.cpus_per_task,
        "signal_delay_s": res.signal_delay_s,
        "srun_args": list(SRUN_ARGS),
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb is not None:
        mem = res.mem_gb
        params["mem"] = f"{int(mem)}GB" if mem == int(mem) else f"{int(mem * 1024)}MB"
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(res, key)
        if value is not None:
            params[key] = value
    if max_parallel is not None:
        params["array_parallelism"] = max_parallel
    if setup:
        params["setup"] = list(setup)
    return params


def render_sbatch(res: Resources, job_name: str, folder: Path | str, array_size: int,
                  max_parallel: int | None, python: str = sys.executable) -> str:
    """The sbatch script submitit would write for this array, without submitting it."""
    import shlex

    from submitit.slurm.slurm import _make_sbatch_string

    params = sbatch_parameters(res, job_name, max_parallel)
    command = " ".join([shlex.quote(python), "-u -m submitit.core._submit",
                        shlex.quote(str(folder))])
    return str(_make_sbatch_string(command=command, folder=folder,
                                   map_count=array_size if array_size > 1 else None, **params))


def _job_name(sweep: Sweep) -> str:
    return f"dino-{sweep.name}"


class SlurmBackend:
    name = "slurm"

    def check(self, sweep: Sweep) -> None:
        job_lock_wait_s()  # a bad value is refused here, not in every job
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise ConfigError("--backend slurm: sbatch/srun not found on PATH; is this a SLURM "
                              "login node?")

    def job_states(self, job_ids: Iterable[str]) -> dict[str, str]:
        return query_job_states(job_ids)

    def launch(self, items: Sequence[LaunchItem], sweep: Sweep, sweep_dir: Path,
               submission_id: str, max_parallel: int | None) -> LaunchOutcome:
        outcome = LaunchOutcome()
        groups: dict[Resources, list[LaunchItem]] = {}
        for item in items:
            groups.setdefault(item.point.resources, []).append(item)
        folder = sweep_dir / "slurm" / "%j"
        for res, group in groups.items():
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=res.max_requeues)
            executor.update_parameters(**sbatch_parameters(res, _job_name(sweep), max_parallel))
            jobs = executor.submit_array([TrainJob(str(i.run_dir)) for i in group])
            for item, job in zip(group, jobs, strict=True):
                record_launch(item, self.name, str(job.job_id), submission_id)
                outcome.job_ids[item.point.run_id] = str(job.job_id)
            log.info("submitted %d run(s) as job %s", len(group),
                     str(jobs[0].job_id).split("_")[0])
        return outcome


def _expand(job_id: str) -> list[str]:
    """`12_[3-5%2]` -> [12_3, 12_4, 12_5]; other ids unchanged."""
    if "_[" not in job_id:
        return [job_id]
    main, rest = job_id.split("_[", 1)
    ranges = rest.rstrip("]").split("%")[0]
    out = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        out += [f"{main}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


#: pseudo-state of a job SLURM no longer knows: an array element cancelled while still part of
#: its pending array record leaves no record at all, and finished jobs are purged after
#: MinJobAge.
GONE = "GONE"


def recorded_job_states(run_dirs: Iterable[Path]) -> dict[str, str]:
    """SLURM state of the jobs that the run directories' launch.json record (`{}` when none
    records a SLURM job, and SLURM is not asked). Raises RuntimeError as `query_job_states`."""
    from dino_ablate.runs import read_launch

    ids = []
    for run_dir in run_dirs:
        launch = read_launch(run_dir) or {}
        if launch.get("backend") == "slurm" and launch.get("job_id"):
            ids.append(str(launch["job_id"]))
    return query_job_states(ids) if ids else {}


#: seconds a squeue/sacct call may take (SLURM retries an unanswered RPC itself: a stopped
#: slurmctld costs squeue 2 x MessageTimeout, 20 s with the default 10 s)
QUERY_TIMEOUT_S = 60
#: seconds after which a query still waiting says so (a `status` silent for 20 s looks hung)
SLOW_QUERY_S = 3.0


def _query(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a scheduler query (no shell), warning once if it is slow to answer."""
    daemon = "slurmdbd" if cmd[0] == "sacct" else "slurmctld"
    timer = threading.Timer(SLOW_QUERY_S, log.warning, args=(
        "%s has not answered in %g s; waiting up to %d s (%s busy or down?)",
        cmd[0], SLOW_QUERY_S, QUERY_TIMEOUT_S, daemon))
    timer.daemon = True
    timer.start()
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S,
                              check=False)
    finally:
        timer.cancel()


def query_job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """State of each job id (`123`, `123_4`): squeue, then sacct for what squeue forgot.

    Arguments go to squeue/sacct as a list (no shell). An id neither knows is reported as
    :data:`GONE`. Raises RuntimeError when squeue itself fails: deciding what to resubmit from
    a blind scheduler query would run points twice.
    """
    wanted = sorted({str(j) for j in job_ids if j})
    if not wanted:
        return {}
    mains = sorted({j.split("_")[0] for j in wanted})
    states: dict[str, str] = {}
    try:
        proc = _query(["squeue", "-h", "-t", "all", "-j", ",".join(mains), "-o", "%i|%T"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"squeue failed: {exc}") from exc
    # squeue exits 1 with "Invalid job id specified" when none of the ids is known any more
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        raise RuntimeError(f"squeue failed ({proc.returncode}): {proc.stderr.strip()}")
    for line in proc.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        for one in _expand(jid):
            states[one] = state.strip()
    missing = [j for j in wanted if j not in states]
    if missing and shutil.which("sacct"):
        # the form submitit uses, so a `sacct` shim (clusters without slurmdbd) answers it
        cmd = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
        for jid in sorted({j.split("_")[0] for j in missing}):
            cmd += ["-j", jid]
        try:
            out = _query(cmd).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        for line in out.splitlines():
            jid, _, rest = line.strip().partition("|")
            state = rest.split("|")[0].split()[0] if rest.strip("|") else "UNKNOWN"
            if jid and jid != "JobID" and "." not in jid:
                for one in _expand(jid):
                    states.setdefault(one, state)
    return {j: states.get(j, GONE) for j in wanted}
