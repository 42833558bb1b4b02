"""What every backend shares: deciding which points to launch, under the per-run locks.

A backend is thin: it turns a list of prepared run directories into jobs (`launch`) and tells
the state of jobs it launched earlier (`job_states`). It does not know DINO. The decision of what
to launch is here, the same for SLURM and Ray:

- `done` / `diverged` runs are skipped, except a run stopped early on a detected collapse whose
  point no longer stops so (`runtime.collapse_stop` off): it trains on to its planned epochs;
- a run whose recorded job is still queued or running is skipped (on Ray too when the job is a
  SLURM one: SLURM is asked where it can be);
- a run whose lock is held by someone else (a job training it, a Ray driver, another
  submitter still deciding) is skipped; a submitter's lock is waited for, briefly;
- a run never trained whose twin (the same semantic hash) is `done` in another sweep under the
  same output root is copied from it, not trained again (`runs.find_finished_twin`);
- everything else (new, failed, interrupted) is prepared and launched; the trainer resumes a
  partial run from its checkpoints.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dino_ablate.contract import RUNS_SUBDIR, STATUS_FILE, read_json, trains_on
from dino_ablate.runs import (
    FINAL,
    RunLock,
    abandon_adoption,
    adopt_finished_run,
    adoption_unfinished,
    append_submission,
    find_finished_twin,
    has_results,
    job_active,
    now_iso,
    prepare_run_dir,
    read_launch,
    run_dir_of,
    slurm_job_states,
    write_launch,
    write_sweep_json,
)
from dino_ablate.sweep import Point, Sweep

#: how long a submission waits, in all, for locks held by other *submitters*.
SUBMIT_LOCK_WAIT_S = 60.0


@dataclass
class LaunchItem:
    point: Point
    run_dir: Path
    lock: RunLock


@dataclass
class LaunchOutcome:
    """What a backend reports back: job ids, and the final state of runs it waited for."""

    job_ids: dict[str, str | None] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)   # run id -> reason (blocking backends)


class Backend(Protocol):
    name: str

    def check(self, sweep: Sweep) -> None:
        """Raise ConfigError when the sweep asks for something this backend cannot do."""

    def job_states(self, job_ids: Iterable[str]) -> dict[str, str]:
        """Scheduler state of previously launched jobs (`{}` where unknown)."""

    def launch(self, items: Sequence[LaunchItem], sweep: Sweep, sweep_dir: Path,
               submission_id: str, max_parallel: int | None) -> LaunchOutcome:
        """Start the runs. Called with every item's lock held; records its job ids."""


@dataclass
class Submission:
    submission_id: str
    launched: list[str]
    skipped: dict[str, str]
    outcome: LaunchOutcome
    copied: dict[str, str] = field(default_factory=dict)  # run id -> the finished twin copied


def recorded_job_ids(sweep: Sweep, sweep_dir: Path, backend: str) -> list[str]:
    ids = []
    for point in sweep.points:
        launch = read_launch(run_dir_of(sweep_dir, point.run_id)) or {}
        if launch.get("backend") == backend and launch.get("job_id"):
            ids.append(str(launch["job_id"]))
    return ids


def _slurm_states_for_other_backend(sweep: Sweep, sweep_dir: Path, backend: Backend
                                    ) -> dict[str, str] | None:
    """For a submission on another backend (Ray): the states of the SLURM jobs recorded for
    the sweep's runs, so that a run whose SLURM job is still queued or running is not launched
    beside it (and its launch.json, which `status` and SLURM submissions read, is kept).
    `{}` when no run records a SLURM job yet; None on SLURM itself (its own query covers
    them) and when SLURM cannot be asked from here (warned once: the per-run lock still keeps
    two trainers off one run)."""
    if backend.name == "slurm":
        return None
    return slurm_job_states([run_dir_of(sweep_dir, p.run_id) for p in sweep.points])


def _skip_reason(run_dir: Path, point: Point, backend: Backend, states: Mapping[str, str],
                 slurm_states: Mapping[str, str] | None) -> str | None:
    """Why this run must not be launched now (its lock is held by us), or None."""
    status = read_json(run_dir / STATUS_FILE) or {}
    if status.get("state") in FINAL and not trains_on(status, point.config.runtime.collapse_stop):
        return f"{status['state']} (epoch {status.get('epoch')}/{status.get('epochs')})"
    launch = read_launch(run_dir) or {}
    job_id = launch.get("job_id")
    if launch.get("backend") == backend.name and job_id:
        state = states.get(str(job_id))
        if state is None:  # recorded after our first query (a concurrent submitter)
            state = backend.job_states([str(job_id)]).get(str(job_id))
        if job_active(state):
            return f"job {job_id} is {state}"
    elif launch.get("backend") == "slurm" and job_id and slurm_states is not None:
        state = slurm_states.get(str(job_id))
        if state is None:  # recorded after our first query (a concurrent SLURM submitter)
            state = (slurm_job_states([run_dir]) or {}).get(str(job_id))
        if job_active(state):
            return f"SLURM job {job_id} is {state} (submission {launch.get('submission')})"
    return None


def submit_sweep(sweep: Sweep, sweep_dir: Path, backend: Backend,
                 max_parallel: int | None = None, only: Sequence[str] | None = None,
                 lock_wait_s: float = SUBMIT_LOCK_WAIT_S) -> Submission:
    """Launch every point that needs it. The sweep must already be validated."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / RUNS_SUBDIR).mkdir(exist_ok=True)
    write_sweep_json(sweep_dir, sweep)
    submission_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    states = backend.job_states(recorded_job_ids(sweep, sweep_dir, backend.name))
    slurm_states = _slurm_states_for_other_backend(sweep, sweep_dir, backend)
    deadline = time.monotonic() + lock_wait_s
    items: list[LaunchItem] = []
    skipped: dict[str, str] = {}
    copied: dict[str, str] = {}
    try:
        for point in sweep.points:
            if only is not None and point.run_id not in only:
                continue
            run_dir = run_dir_of(sweep_dir, point.run_id)
            run_dir.mkdir(exist_ok=True)
            lock = RunLock(run_dir)
            purpose = f"submit {submission_id} ({backend.name})"
            got = lock.acquire(purpose)
            while not got:
                holder = lock.holder() or {}
                if not str(holder.get("purpose", "submit")).startswith("submit") or \
                        time.monotonic() >= deadline:
                    break
                got = lock.acquire(purpose, timeout_s=min(1.0, deadline - time.monotonic()))
            if not got:
                holder = lock.holder() or {}
                skipped[point.run_id] = (f"locked by {holder.get('purpose', '?')} "
                                         f"(pid {holder.get('pid')} on {holder.get('host')})")
                continue
            try:
                reason = _skip_reason(run_dir, point, backend, states, slurm_states)
                fresh = not has_results(run_dir) or adoption_unfinished(run_dir)
                twin = find_finished_twin(sweep_dir, sweep, point) \
                    if reason is None and fresh else None
                if twin is not None:
                    adopt_finished_run(twin, run_dir, sweep, point, submission_id)
                elif reason is None:
                    prepare_run_dir(run_dir, sweep, point)
                    abandon_adoption(run_dir)  # trained here now: not to be adopted over
            except BaseException:
                lock.release()  # not yet an item: the finally below would not release it
                raise
            if reason is not None:
                lock.release()
                skipped[point.run_id] = reason
            elif twin is not None:
                lock.release()
                copied[point.run_id] = str(twin)
            else:
                items.append(LaunchItem(point, run_dir, lock))
        outcome = LaunchOutcome()
        if items:
            outcome = backend.launch(items, sweep, sweep_dir, submission_id, max_parallel)
    finally:
        for item in items:
            item.lock.release()
    append_submission(sweep_dir, {
        "submission": submission_id, "time": now_iso(), "backend": backend.name,
        "profile": sweep.profile, "file": str(sweep.file.resolve()),
        "host": socket.gethostname(), "pid": os.getpid(), "user": os.environ.get("USER"),
        "max_parallel": max_parallel,
        "launched": {i.point.run_id: outcome.job_ids.get(i.point.run_id) for i in items},
        "skipped": skipped, "copied": copied, "failed": outcome.failed,
    })
    return Submission(submission_id, [i.point.run_id for i in items], skipped, outcome, copied)


def record_launch(item: LaunchItem, backend: str, job_id: str | None, submission: str) -> None:
    write_launch(item.run_dir, backend, job_id, submission)
