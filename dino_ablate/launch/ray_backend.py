"""Ray backend: Ray Tune schedules the points of a sweep on this machine or an existing cluster.

Each point is one Tune trial of a function trainable (:func:`run_point_trial`) asking for
`tasks x cpus_per_task` CPUs and `gpus_per_node` GPUs. The trial starts the trainer as child
processes: one `python -m dino_ablate train` per rank, with the torch.distributed variables
set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, a free MASTER_PORT) - what
`torchrun --nproc_per_node N` would set for a single node, without its agent. The ranks get
PR_SET_PDEATHSIG, so when Ray kills or loses the trial's worker the ranks die with it and a
retry never trains the run twice at the same time (torchrun's agent gives no such guarantee:
its ranks outlive a SIGKILLed agent).

The trial reports each new metrics record to Tune while the ranks run. Bounded retries
(`FailureConfig(max_failures)`) start the trial again; the trainer resumes from the run's own
checkpoints. Run directories are exactly those of the SLURM backend; Tune's bookkeeping and
the ranks' logs live under `<sweep_dir>/ray/`.

The Ray driver holds every launched run's lock for the whole `fit()`, so a concurrent
submission of the same sweep skips these runs. While it waits, a Tune callback prints one
progress line at most every few seconds (:class:`Progress`); Tune's own "may be a performance
bottleneck" warnings are silenced, as a trial report here is a few numbers per epoch.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from dino_ablate.contract import CONFIG_FILE, STATUS_FILE, read_json
from dino_ablate.errors import ConfigError
from dino_ablate.launch import ray_local
from dino_ablate.launch.base import LaunchItem, LaunchOutcome, record_launch
from dino_ablate.runs import FINAL, read_metrics
from dino_ablate.sweep import Sweep

log = logging.getLogger("dino_ablate.launch.ray")

DEFAULT_MAX_FAILURES = 2
POLL_S = 0.5
#: Seconds between two progress lines (trial ends are printed at once).
PROGRESS_EVERY_S = 5.0
#: The logger of Tune's `warn_if_slow` ("The `callbacks.on_trial_result` operation took
#: 0.575 s, which may be a performance bottleneck"): noise on a loaded machine, not a fault.
TUNE_SLOW_LOGGER = "ray.tune.utils.util"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_commands(run_dir: Path, nproc: int, threads: int
                  ) -> list[tuple[list[str], dict[str, str]]]:
    """The command and environment of each rank (one process per rank, single node)."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                         "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
            and not k.startswith("SLURM_")}
    base.setdefault("GLOO_SOCKET_IFNAME", "lo")
    base["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "dino_ablate", "train", str(run_dir / CONFIG_FILE),
           "--out", str(run_dir)]
    if nproc == 1:
        return [(cmd, base)]
    port = str(free_port())
    out = []
    for rank in range(nproc):
        env = dict(base, RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        out.append((cmd, env))
    return out


@contextlib.contextmanager
def _ranks(run_dir: Path, nproc: int, threads: int, log_file: Path
           ) -> Iterator[list[subprocess.Popen[bytes]]]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    with log_file.open("ab") as fh:
        commands = rank_commands(run_dir, nproc, threads)
        fh.write(f"== {time.strftime('%H:%M:%S')} ray trial: starting {nproc} rank(s) of "
                 f"{run_dir.name} (MASTER_PORT {commands[0][1].get('MASTER_PORT', '-')})\n"
                 .encode())
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
            fh.write(f"== {time.strftime('%H:%M:%S')} ray trial: {nproc} rank(s) ended, exit "
                     f"codes {codes}\n".encode())


def _numeric(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_point_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: train one run directory to its end, reporting each epoch."""
    from ray import tune

    spec = config["run"]
    run_dir = Path(spec["run_dir"])
    nproc = int(spec["nproc"])
    reported = len(read_metrics(run_dir))
    with _ranks(run_dir, nproc, int(spec["cpus_per_task"]), Path(spec["log_file"])) as procs:
        while any(p.poll() is None for p in procs):
            time.sleep(POLL_S)
            if any(p.returncode not in (None, 0) for p in procs):
                break  # one rank failed: the others would wait in a collective for 30 min
            records = read_metrics(run_dir)
            for rec in records[reported:]:
                tune.report(_numeric(rec))
            reported = max(reported, len(records))
        codes = [p.poll() for p in procs]
    for rec in read_metrics(run_dir)[reported:]:
        tune.report(_numeric(rec))
    status = read_json(run_dir / STATUS_FILE) or {}
    state = status.get("state")
    if state in FINAL:
        return
    raise RuntimeError(f"{run_dir.name}: trainer exited with codes {codes}, state {state!r}: "
                       f"{status.get('reason')} (log: {spec['log_file']})")


class Progress:
    """Concise progress of a Ray submission, one line at most every `every_s` seconds.

    `[12:01:33] 2/7 done, 2 running | normalization-none_… epoch 14/60 loss 6.21 kl 0.013
    knn 50.9%`: the counts over the submission's trials, then the trial that just reported
    (its last k-NN, which is measured every `eval.every_epochs` only). Plain Python, fed by the
    Tune callback :func:`_tune_callback`.
    """

    def __init__(self, total: int, out: TextIO, every_s: float = PROGRESS_EVERY_S,
                 clock: Any = time.monotonic) -> None:
        self.total = total
        self.out = out
        self.every_s = every_s
        self.clock = clock
        self.running: set[str] = set()
        self.ended: dict[str, str] = {}
        self.knn: dict[str, float] = {}
        self._last = -float("inf")

    def started(self, run_id: str) -> None:
        self.running.add(run_id)

    def result(self, run_id: str, epochs: int | None, result: dict[str, Any]) -> None:
        self.running.add(run_id)
        if isinstance(result.get("knn_teacher"), (int, float)):
            self.knn[run_id] = float(result["knn_teacher"])
        now = self.clock()
        if now - self._last < self.every_s:
            return
        self._last = now
        epoch = result.get("epoch")  # Tune results hold floats (see _numeric)
        parts = [f"epoch {int(epoch) if isinstance(epoch, (int, float)) else '?'}/"
                 f"{epochs or '?'}"]
        if isinstance(result.get("loss"), (int, float)):
            parts.append(f"loss {result['loss']:.2f}")
        if isinstance(result.get("kl_teacher_student"), (int, float)):
            parts.append(f"kl {result['kl_teacher_student']:.3f}")
        if run_id in self.knn:
            parts.append(f"knn {100 * self.knn[run_id]:.1f}%")
        self._write(f"{_short(run_id)} {' '.join(parts)}")

    def ended_as(self, run_id: str, outcome: str) -> None:
        """`outcome`: `done` or `error` (Tune may retry an errored trial: it runs again)."""
        self.running.discard(run_id)
        self.ended[run_id] = outcome
        self._write(f"{_short(run_id)} {'finished' if outcome == 'done' else 'failed'}")

    def _write(self, what: str) -> None:
        done = sum(1 for o in self.ended.values() if o == "done")
        failed = len(self.ended) - done
        counts = f"{done}/{self.total} done, {len(self.running)} running"
        if failed:
            counts += f", {failed} failed"
        self.out.write(f"[{time.strftime('%H:%M:%S')}] {counts} | {what}\n")
        self.out.flush()


def _short(run_id: str, width: int = 40) -> str:
    return run_id if len(run_id) <= width else run_id[:width - 1] + "\u2026"


def _tune_callback(progress: Progress) -> Any:
    """A Tune callback feeding `progress` (built here: ray is imported only after setup)."""
    from ray import tune

    def run_of(trial: Any) -> tuple[str, int | None]:
        spec = trial.config["run"]
        return str(spec["run_id"]), spec.get("epochs")

    class _Callback(tune.Callback):  # type: ignore[misc]
        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any,
                           **info: Any) -> None:
            progress.started(run_of(trial)[0])

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                            result: dict[str, Any], **info: Any) -> None:
            progress.result(*run_of(trial), result)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                              **info: Any) -> None:
            progress.ended_as(run_of(trial)[0], "done")

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                           **info: Any) -> None:
            progress.ended_as(run_of(trial)[0], "error")

    return _Callback()


class RayBackend:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 max_failures: int = DEFAULT_MAX_FAILURES, progress: TextIO | None = None
                 ) -> None:
        """`progress`: where to print progress lines while the trials run (None: silent)."""
        self.address = address
        self.num_cpus = num_cpus
        self.max_failures = max_failures
        self.progress = progress

    def check(self, sweep: Sweep) -> None:
        for point in sweep.points:
            if point.resources.nodes != 1:
                raise ConfigError(
                    f"point {point.index} ({point.label}): resources.nodes: "
                    f"{point.resources.nodes} is not allowed with --backend ray; allowed: 1 (a "
                    "trial runs its ranks on one node)", source=str(sweep.file),
                    key="resources.nodes")

    def job_states(self, job_ids: Iterable[str]) -> dict[str, str]:
        return {}  # a Ray submission blocks until its trials end; the run locks tell the rest

    @contextlib.contextmanager
    def _ray(self) -> Iterator[None]:
        ray_local.setup_env()
        import ray

        if ray.is_initialized():
            yield
            return
        if self.address:
            ray_local.connect_ray(self.address)
            try:
                yield
            finally:
                ray.shutdown()
            return
        temp_dir = Path(tempfile.mkdtemp(prefix="dray-", dir="/tmp"))
        try:
            ray_local.start_ray(num_cpus=self.num_cpus or os.cpu_count() or 1, temp_dir=temp_dir)
            try:
                yield
            finally:
                ray.shutdown()
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)

    def launch(self, items: Sequence[LaunchItem], sweep: Sweep, sweep_dir: Path,
               submission_id: str, max_parallel: int | None) -> LaunchOutcome:
        outcome = LaunchOutcome()
        for item in items:
            record_launch(item, self.name, submission_id, submission_id)
            outcome.job_ids[item.point.run_id] = submission_id
        with self._ray():
            import ray
            from ray import tune

            available = ray.cluster_resources()
            specs = []
            for item in items:
                res = item.point.resources
                need = {"CPU": float(res.tasks * res.cpus_per_task),
                        "GPU": float(res.gpus_per_node)}
                for kind, amount in need.items():
                    if amount > available.get(kind, 0.0):
                        raise ConfigError(
                            f"point {item.point.index} ({item.point.label}) needs {amount:g} "
                            f"{kind} but the Ray cluster has {available.get(kind, 0.0):g}; "
                            "lower its resources or use a bigger cluster")
                specs.append({
                    "run_id": item.point.run_id, "run_dir": str(item.run_dir.resolve()),
                    "nproc": res.tasks, "cpus_per_task": res.cpus_per_task,
                    "epochs": item.point.config.epochs,
                    "cpus": need["CPU"], "gpus": need["GPU"],
                    "log_file": str((sweep_dir / "ray" / "logs" /
                                     f"{item.point.run_id}.log").resolve()),
                })

            def resources(config: dict[str, Any]) -> Any:
                spec = config["run"]
                bundle = {"CPU": spec["cpus"]}
                if spec["gpus"]:
                    bundle["GPU"] = spec["gpus"]
                return tune.PlacementGroupFactory([bundle])

            logging.getLogger(TUNE_SLOW_LOGGER).setLevel(logging.ERROR)
            callbacks = ([_tune_callback(Progress(len(specs), self.progress))]
                         if self.progress is not None else [])
            tuner = tune.Tuner(
                tune.with_resources(run_point_trial, resources),
                param_space={"run": tune.grid_search(specs)},
                tune_config=tune.TuneConfig(max_concurrent_trials=max_parallel,
                                            reuse_actors=False,
                                            trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(
                    name=submission_id, storage_path=str((sweep_dir / "ray").resolve()),
                    verbose=0, callbacks=callbacks,
                    failure_config=tune.FailureConfig(max_failures=self.max_failures)),
            )
            started = time.perf_counter()
            grid = tuner.fit()
            log.info("ray: %d trial(s) in %.1f s, %d error(s)", len(specs),
                     time.perf_counter() - started, grid.num_errors)
        for item in items:
            status = read_json(item.run_dir / STATUS_FILE) or {}
            if status.get("state") not in FINAL:
                outcome.failed[item.point.run_id] = (
                    f"state {status.get('state')!r}: {status.get('reason')}")
        return outcome


def _trial_dirname(trial: Any) -> str:
    return str(trial.config["run"]["run_id"])
