"""Run directories of a sweep: preparing them, locking them, and telling their state.

A sweep directory holds::

    sweep.json          name, file, profile, baseline, runs (in sweep order)
    submissions.jsonl   one record per submission: backend, time, host/pid, submitted/skipped
    runs/<run_id>/      the run directory (docs/run_directory.md) plus, from the launcher,
                        run.json, launch.json (backend and job id of the last launch) and .lock

The per-run lock (`.lock`, fcntl.flock) is held by whoever is acting on the run right now: a
submitter while it decides and submits, a SLURM job while it trains, the Ray driver while its
trial runs. The holder writes who it is into the lock file. flock locks die with their process,
so a killed holder never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from dino_ablate import config as cfgmod
from dino_ablate import contract, safeload
from dino_ablate.contract import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LAUNCH_FILE,
    LAUNCH_STATES,
    METRICS_FILE,
    RUN_FILE,
    RUNS_SUBDIR,
    STATUS_FILE,
    SUMMARY_FILE,
    SWEEP_FILE,
    rank_failures,
    read_json,
    write_atomic,
    write_json,
)
from dino_ablate.errors import ConfigError
from dino_ablate.identity import first_difference
from dino_ablate.sweep import RUN_ID_RE, Point, Sweep, SweepPlan

log = logging.getLogger("dino_ablate.runs")

#: every state `status` can show: pending and queued are the launcher's view, running, done,
#: diverged and failed are the trainer's (status.json), unknown is SLURM's silence
STATES = LAUNCH_STATES
FINAL = ("done", "diverged")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def run_dir_of(sweep_dir: Path, run_id: str) -> Path:
    """`sweep_dir/runs/<run_id>`, refusing ids that could leave the sweep directory."""
    if not RUN_ID_RE.match(run_id) or run_id in (".", ".."):
        raise ConfigError(f"run id {run_id!r} is not allowed; expected [A-Za-z0-9_.+-]",
                          key="run_id")
    path = sweep_dir / RUNS_SUBDIR / run_id
    if path.resolve().parent != (sweep_dir / RUNS_SUBDIR).resolve():
        raise ConfigError(f"run id {run_id!r} escapes {sweep_dir}/runs", key="run_id")
    return path


def resolve_sweep_dir(sweep: Sweep | SweepPlan, out_root: Path) -> Path:
    """`out_root/<output_dir>`; the sweep's output_dir was checked to be relative."""
    root = out_root.resolve()
    path = (root / sweep.output_dir).resolve()
    if path != root and root not in path.parents:
        raise ConfigError(f"output_dir: {sweep.output_dir!r} escapes the output root {root}",
                          source=str(sweep.file), key="output_dir")
    return path


# --------------------------------------------------------------------------------------------
# the lock


class RunLock:
    """An exclusive flock on `<run_dir>/.lock` with the holder recorded in the file."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self._fd: int | None = None

    def acquire(self, purpose: str, timeout_s: float = 0.0, poll_s: float = 0.2) -> bool:
        """Take the lock, waiting up to `timeout_s`; False if someone else holds it."""
        assert self._fd is None, "lock already held by this object"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(poll_s)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                  "since": now_iso()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now, or None when it is free."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = self.path.read_text(errors="replace")
                try:
                    info = safeload.parse_json(text) if text.strip() else {}
                except ValueError:
                    info = {}
                return info if isinstance(info, dict) else {}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def hold(self, purpose: str, timeout_s: float) -> Iterator[bool]:
        got = self.acquire(purpose, timeout_s)
        try:
            yield got
        finally:
            if got:
                self.release()


# --------------------------------------------------------------------------------------------
# run directories


def prepare_run_dir(run_dir: Path, sweep: Sweep, point: Point) -> None:
    """Write config.yaml (once) and run.json. Refuses a directory holding another config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfgmod.to_dict(point.config)
    cfg_file = run_dir / CONFIG_FILE
    if cfg_file.exists():
        try:
            existing = safeload.read_yaml(cfg_file)
        except ConfigError:  # damaged: refused below as "a different config"
            existing = None
        if existing != cfg:
            diff = first_difference(existing, cfg) if isinstance(existing, dict) \
                else "not a config mapping"
            if diff is not None:
                raise ConfigError(f"{cfg_file} holds a different config than point "
                                  f"{point.index} ({diff}); refusing to mix runs",
                                  key=CONFIG_FILE)
            # only keys that do not define the run changed (identity.NOT_DEFINING: threads,
            # workers, data root): record the new ones; the trainer resumes from the checkpoint
            write_atomic(cfg_file, yaml.safe_dump(cfg, sort_keys=False))
    else:
        write_atomic(cfg_file, yaml.safe_dump(cfg, sort_keys=False))
    write_json(run_dir / RUN_FILE, {
        "run_id": point.run_id, "sweep": sweep.name, "profile": sweep.profile,
        "varied": point.varied, "seed": point.config.seed, "reference": point.reference,
        "reference_source": point.reference_source,
    })


def write_launch(run_dir: Path, backend: str, job_id: str | None, submission: str,
                 **extra: Any) -> None:
    write_json(run_dir / LAUNCH_FILE, {"backend": backend, "job_id": job_id,
                                         "submission": submission, "time": now_iso(), **extra})


def has_results(run_dir: Path) -> bool:
    """Whether training has written anything into `run_dir` (metrics or a checkpoint)."""
    ckpt = run_dir / CHECKPOINTS_DIR
    return (run_dir / METRICS_FILE).exists() or (ckpt.is_dir() and any(ckpt.iterdir()))


def find_finished_twin(sweep_dir: Path, sweep: Sweep, point: Point) -> Path | None:
    """A `done` run directory of the same run in another sweep under the same output root.

    The same run means the same semantic hash (the run id's suffix: the config without
    resources, paths and runtime settings), checked again against the twin's config.yaml.
    Sweeps that share points (momentum.yaml's two are teacher_update.yaml's) then train each
    once per output root. A twin stopped early on a detected collapse is copied only into a
    point that stops on a collapse too (`runtime.collapse_stop` is a runtime setting, outside
    the hash: without it the point trains all its epochs), and a twin without summary.json
    (killed between its last two writes) is not copied.
    """
    from dino_ablate.sweep import semantic_hash

    depth = len(PurePosixPath(sweep.output_dir).parts)
    out_root = sweep_dir.parents[depth - 1]
    digest = point.digest
    own = (sweep_dir / RUNS_SUBDIR).resolve()
    pattern = "/".join(["*"] * depth) + f"/runs/*_{digest}"
    for cand in sorted(out_root.glob(pattern)):
        if cand.parent.resolve() == own or not cand.is_dir():
            continue
        status = read_json(cand / STATUS_FILE) or {}
        if status.get("state") != "done" or not (cand / SUMMARY_FILE).is_file():
            continue
        if status.get("epoch") != status.get("epochs") and not point.config.runtime.collapse_stop:
            continue
        try:
            cfg = safeload.read_yaml(cand / CONFIG_FILE)
        except ConfigError:  # missing or damaged: not a twin to copy from
            continue
        if isinstance(cfg, dict) and semantic_hash(cfg) == digest:
            return cand
    return None


#: launcher files of the twin that describe the twin's sweep, not the run's results (and the
#: twin's rank failures: its attempts', not this run's)
_NOT_ADOPTED = (".lock", RUN_FILE, LAUNCH_FILE, STATUS_FILE, contract.FAILED_RANKS_DIR)
#: where a twin's files are copied before they are renamed into place; while it exists the
#: adoption is unfinished (`adoption_unfinished`) and the next submission adopts again
ADOPTING = ".adopting"


def adoption_unfinished(run_dir: Path) -> bool:
    return (run_dir / ADOPTING).is_dir()


def abandon_adoption(run_dir: Path) -> None:
    """The run is launched instead (no twin now): what an interrupted adoption left stays as
    the run's own start (the trainer sets aside what it cannot use), no longer adoptable."""
    shutil.rmtree(run_dir / ADOPTING, ignore_errors=True)


def adopt_finished_run(source: Path, run_dir: Path, sweep: Sweep, point: Point,
                       submission: str) -> None:
    """Copy a finished twin's results into the fresh `run_dir` and make it this sweep's run.

    The files are copied into `run_dir/.adopting/` first and renamed into place once all are
    copied; the folder goes last. An interrupted copy (a kill, a full disk) leaves no partial
    file under a final name (a truncated `last.pt` the trainer would set aside), and while the
    folder is there the next submission adopts the twin again over what was moved.
    status.json is written last: a copy interrupted before it leaves an unfinished run with a
    final checkpoint, which the next submission launches and the trainer completes at once.
    """
    staging = run_dir / ADOPTING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for entry in sorted(source.iterdir()):
        if entry.name in _NOT_ADOPTED or entry.name.startswith((".fault_", ".adopting")):
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name)
        else:
            shutil.copy2(entry, staging / entry.name)
    for entry in sorted(staging.iterdir()):
        target = run_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()
    prepare_run_dir(run_dir, sweep, point)
    write_launch(run_dir, "copy", None, submission, source=str(source))
    write_atomic(run_dir / STATUS_FILE, (source / STATUS_FILE).read_text())


def read_launch(run_dir: Path) -> dict[str, Any] | None:
    return read_json(run_dir / LAUNCH_FILE)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records, by the contract's reader (a truncated last line is skipped)."""
    return contract.read_metrics(run_dir / METRICS_FILE).records


@dataclass(frozen=True)
class RunState:
    """What `status` shows for one run."""

    run_id: str
    state: str
    epoch: int | None
    epochs: int | None
    reason: str | None
    job_id: str | None
    job_state: str | None
    latest: dict[str, Any]


#: SLURM job states meaning "not started yet" and "executing".
SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                "RESV_DEL_HOLD", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT"}
SLURM_RUNNING = {"RUNNING", "COMPLETING"}


def job_active(job_state: str | None) -> bool:
    return job_state is not None and (job_state in SLURM_QUEUED or job_state in SLURM_RUNNING)


def slurm_job_states(run_dirs: list[Path]) -> dict[str, str] | None:
    """The SLURM states of the jobs the run directories' launch.json record: `{}` when none
    records a SLURM job (SLURM is not asked, submitit not imported); None when SLURM cannot be
    asked from here (warned), and the run directories' own records must do."""
    states, error = ask_slurm(run_dirs)
    return None if error else states


def ask_slurm(run_dirs: list[Path]) -> tuple[dict[str, str], str | None]:
    """`slurm_job_states` for the read-only views (`status`, the dry run): the states, and why
    SLURM could not be asked (None when it answered or was not needed), for `run_state`.
    Finished runs are left out: their status.json decides them whatever their job says."""
    run_dirs = [d for d in run_dirs
                if (read_json(d / STATUS_FILE) or {}).get("state") not in FINAL]
    if not any((read_launch(d) or {}).get("backend") == "slurm" for d in run_dirs):
        return {}, None
    from dino_ablate.launch.slurm import recorded_job_states

    try:
        return recorded_job_states(run_dirs), None
    except RuntimeError as exc:
        log.warning("%s; SLURM job states unknown", exc)
        return {}, str(exc)


def _job_end(job_id: Any, job_state: str) -> str:
    if job_state == "GONE":
        return (f"job {job_id} is gone from SLURM (cancelled while pending, or purged after "
                "MinJobAge)")
    return f"job {job_id} ended ({job_state})"


def run_state(run_dir: Path, job_states: Mapping[str, str] | None = None,
              slurm_error: str | None = None) -> RunState:
    """Combine status.json, the lock, and the scheduler's view of the recorded job.

    `job_states` maps SLURM job ids (`123_4`) to their state; None when not asked.
    `slurm_error`: why SLURM could not be asked (`ask_slurm`). A SLURM run whose files leave
    its state to its job (no final state, no live lock, no recorded failure) is then
    `unknown`, not `pending` or `failed`: its job may be queued, running or gone.
    """
    status = read_json(run_dir / STATUS_FILE) or {}
    launch = read_launch(run_dir) or {}
    metrics = read_metrics(run_dir)
    latest = metrics[-1] if metrics else {}
    job_id = launch.get("job_id")
    job_state = (job_states or {}).get(str(job_id)) if job_id else None
    trained = status.get("state")
    reason = status.get("reason")
    lock_holder = RunLock(run_dir).holder()
    slurm_job = str(job_id) if launch.get("backend") == "slurm" and job_id else None
    if trained in FINAL:
        state = trained
    elif job_active(job_state):
        state = "running" if job_state in SLURM_RUNNING else "queued"
    elif lock_holder is not None:
        state = "running" if trained == "running" else "queued"
    elif trained == "failed":
        state = "failed"
    elif failed_rank := rank_failures.first_failure(run_dir, run_dir / STATUS_FILE,
                                                    slurm_job=slurm_job):
        # another rank failed and its launcher ended rank 0 before it could record why
        state = "failed"
        where = f"at epoch {status.get('epoch')}" if trained == "running" else "at start"
        ended = f"; {_job_end(job_id, job_state)}" if job_id and job_state else ""
        reason = (f"interrupted {where}: {failed_rank}{ended}; "
                  "resubmit to resume")
    elif slurm_error and slurm_job:
        state = "unknown"
        said = (f"status.json says running at epoch {status.get('epoch')}"
                if trained == "running" else "the trainer has written no status yet")
        reason = (f"SLURM could not be asked ({slurm_error}): job {job_id} may be queued, "
                  f"running or ended; {said}")
    elif trained == "running":
        # the trainer said running but nobody is executing it any more
        state = "failed"
        ended = _job_end(job_id, job_state) if job_id and job_state else \
            "no live process or job holds it"
        reason = f"interrupted at epoch {status.get('epoch')}: {ended}; resubmit to resume"
    elif job_id and job_state and not job_active(job_state):
        state = "failed"
        reason = f"{_job_end(job_id, job_state)} before training started; resubmit to run it"
    elif launch.get("backend") == "ray" and trained is None:
        # its driver is gone (the lock is free) and the trainer never wrote status.json: it
        # failed at start (a missing data folder on the node, an import error) or never ran
        state = "failed"
        reason = (f"its Ray trial (submission {launch.get('submission')}) ended before the "
                  f"trainer wrote status.json; see ray/logs/{run_dir.name}.log in the sweep "
                  "directory; resubmit to run it")
    else:
        state = "pending"
    epoch = status.get("epoch")
    if epoch is None and latest:
        epoch = latest.get("epoch")
    return RunState(run_id=run_dir.name, state=state, epoch=epoch, epochs=status.get("epochs"),
                    reason=reason, job_id=str(job_id) if job_id else None, job_state=job_state,
                    latest=latest)


# --------------------------------------------------------------------------------------------
# sweep directory records


def write_sweep_json(sweep_dir: Path, sweep: Sweep) -> None:
    """sweep.json: what the sweep holds now (rewritten by each submission; last one wins)."""
    previous = read_json(sweep_dir / SWEEP_FILE) or {}
    current = [p.run_id for p in sweep.points]
    earlier = [r for r in previous.get("all_runs", []) if r not in current]
    write_json(sweep_dir / SWEEP_FILE, {
        "name": sweep.name, "file": str(sweep.file.resolve()), "profile": sweep.profile,
        "description": sweep.description, "baseline": list(sweep.baseline),
        "varied_keys": list(sweep.varied_keys),
        "runs": [{"run_id": p.run_id, "varied": p.varied, "resources": p.resources.as_dict(),
                  "reference": p.reference} for p in sweep.points],
        "all_runs": earlier + current,
        "updated": now_iso(),
    })


def append_submission(sweep_dir: Path, record: Mapping[str, Any]) -> None:
    """One line per submission in submissions.jsonl (O_APPEND: concurrent writers are safe)."""
    line = json.dumps(dict(record), sort_keys=True) + "\n"
    fd = os.open(sweep_dir / "submissions.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
