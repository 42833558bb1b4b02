"""Ray backend: Ray Tune schedules the points of a sweep on this machine or an existing cluster.

Each point is one Tune trial of a function trainable (:func:`run_point_trial`) with a
placement group of one bundle per node (`tasks x cpus_per_task` CPUs and `gpus_per_node`
GPUs each; :class:`~dino_ablate.launch.ray_ranks.Placement`). On one node the trial starts
the trainer as child processes: one `python -m dino_ablate train` per rank, with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT - what `torchrun
--nproc_per_node N` would set for a single node, without its agent. On N nodes the bundles
are STRICT_SPREAD and the trial starts one rank-launcher actor per bundle
(:class:`~dino_ablate.launch.ray_ranks.NodeRanks`), which starts its node's ranks with
MASTER_ADDR = the node IP of bundle 0 and a port free there. The ranks get PR_SET_PDEATHSIG,
so when Ray kills or loses the process that started them (trial ended or cancelled, actor
killed, node lost) they die with it and a retry never trains the run twice at the same time
(torchrun's agent gives no such guarantee: its ranks outlive a SIGKILLed agent).

The trial reports each new metrics record to Tune while the ranks run. Bounded retries
(`FailureConfig(max_failures)`) start the trial again; the trainer resumes from the run's own
checkpoints. Run directories are exactly those of the SLURM backend; Tune's bookkeeping and
the ranks' logs live under `<sweep_dir>/ray/` (on a cluster: a file system every node mounts).

`--ray-address ADDR` (or `RAY_ADDRESS`) joins an existing cluster; without it a private
loopback-only Ray is started for the submission (:mod:`dino_ablate.launch.ray_local`).

The Ray driver holds every launched run's lock until its trial has ended for good (done, or
failed with no retry left), so a concurrent submission of the same sweep skips these runs.
While it waits, a Tune callback prints one progress line at most every few seconds
(:class:`Progress`); Tune's own "may be a performance bottleneck" warnings are silenced, as a
trial report here is a few numbers per epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from dino_ablate.contract import STATUS_FILE, rank_failures, read_json
from dino_ablate.errors import ConfigError
from dino_ablate.launch import ray_local
from dino_ablate.launch.base import LaunchItem, LaunchOutcome, record_launch
from dino_ablate.launch.ray_ranks import (
    Placement,
    forwarded_env,
    rank_commands,
    run_on_nodes,
    started_ranks,
    wait_ranks,
)
from dino_ablate.runs import FINAL, read_metrics
from dino_ablate.sweep import Sweep

log = logging.getLogger("dino_ablate.launch.ray")

DEFAULT_MAX_FAILURES = 2
POLL_S = 0.5
#: Seconds a multi-node trial waits for its rank-launcher actors to start.
ACTOR_START_S = 300.0
#: Seconds between two progress lines (trial ends are printed at once).
PROGRESS_EVERY_S = 5.0
#: The logger of Tune's `warn_if_slow` ("The `callbacks.on_trial_result` operation took
#: 0.575 s, which may be a performance bottleneck"): noise on a loaded machine, not a fault.
TUNE_SLOW_LOGGER = "ray.tune.utils.util"

__all__ = ["Progress", "RayBackend", "rank_commands", "run_point_trial"]


def _numeric(record: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class _Reporter:
    """Reports each metrics record of the run directory to Tune once."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.reported = len(read_metrics(run_dir))

    def __call__(self) -> None:
        from ray import tune

        records = read_metrics(self.run_dir)
        for rec in records[self.reported:]:
            tune.report(_numeric(rec))
        self.reported = max(self.reported, len(records))


def run_point_trial(config: dict[str, Any]) -> None:
    """Tune function trainable: train one run directory to its end, reporting each epoch."""
    spec = config["run"]
    run_dir = Path(spec["run_dir"])
    report = _Reporter(run_dir)
    if spec["placement"]["nodes"] == 1:
        commands = rank_commands(run_dir, int(spec["nproc"]), int(spec["cpus_per_task"]),
                                 spec["env"])
        with started_ranks(commands, Path(spec["log_file"]), run_dir.name) as procs:
            codes = wait_ranks(procs, POLL_S, report)
    else:
        codes = run_on_nodes(spec, report, POLL_S, ACTOR_START_S)
    report()
    status = read_json(run_dir / STATUS_FILE) or {}
    state = status.get("state")
    if state in FINAL:
        return
    why = rank_failures.first_failure(run_dir, run_dir / STATUS_FILE) or status.get("reason")
    raise RuntimeError(f"{run_dir.name}: trainer exited with codes {codes}, state {state!r}: "
                       f"{why} (log: {spec['log_file']})")



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


def _tune_callback(progress: Progress | None, ended: Callable[[str], None]) -> Any:
    """A Tune callback feeding `progress` (None: silent) and calling `ended(run_id)` once a
    trial has ended for good, done or failed with no retry left (built here: ray is imported
    only after setup)."""
    from ray import tune

    def run_of(trial: Any) -> tuple[str, int | None]:
        spec = trial.config["run"]
        return str(spec["run_id"]), spec.get("epochs")

    class _Callback(tune.Callback):  # type: ignore[misc]
        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any,
                           **info: Any) -> None:
            if progress is not None:
                progress.started(run_of(trial)[0])

        def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                            result: dict[str, Any], **info: Any) -> None:
            if progress is not None:
                progress.result(*run_of(trial), result)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                              **info: Any) -> None:
            ended(run_of(trial)[0])
            if progress is not None:
                progress.ended_as(run_of(trial)[0], "done")

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                           **info: Any) -> None:
            # Tune calls on_trial_recover instead when the trial is retried
            ended(run_of(trial)[0])
            if progress is not None:
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
        """Every resource shape has a placement (multi-node points included); whether the
        cluster can hold it is known only once connected (:meth:`launch`)."""
        for point in sweep.points:
            Placement.of(point.resources)

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
            log.info("ray: joined the cluster at %s (%d node(s))", self.address,
                     len(_node_capacity()))
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
        with self._ray():
            from ray import tune

            capacity = _node_capacity()
            forwarded = forwarded_env()
            specs = []
            for item in items:
                res = item.point.resources
                placement = Placement.of(res)
                _check_fits(item, placement, capacity)
                specs.append({
                    "run_id": item.point.run_id, "run_dir": str(item.run_dir.resolve()),
                    "nproc": res.tasks, "cpus_per_task": res.cpus_per_task,
                    "epochs": item.point.config.epochs,
                    "placement": dataclasses.asdict(placement), "env": forwarded,
                    "log_file": str((sweep_dir / "ray" / "logs" /
                                     f"{item.point.run_id}.log").resolve()),
                })
            # Only once every point fits: a refused submission must not replace the record
            # of another launch (a queued SLURM job's id, which `status` and the next SLURM
            # submission go by). A submission that does launch replaces it: the run is Ray's.
            for item in items:
                record_launch(item, self.name, submission_id, submission_id)
                outcome.job_ids[item.point.run_id] = submission_id

            def resources(config: dict[str, Any]) -> Any:
                placement = Placement(**config["run"]["placement"])
                return tune.PlacementGroupFactory(placement.tune_bundles(),
                                                  strategy=placement.strategy)

            logging.getLogger(TUNE_SLOW_LOGGER).setLevel(logging.ERROR)
            # A run's lock is released as soon as its trial has ended for good, not when the
            # whole submission ends: a trial that failed with no retry left reads `failed`
            # while the others still run (it read `running`, the driver holding its lock).
            locks = {item.point.run_id: item.lock for item in items}
            progress = Progress(len(specs), self.progress) if self.progress is not None \
                else None
            callbacks = [_tune_callback(progress, lambda run_id: locks[run_id].release())]
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
            rank_failure = rank_failures.first_failure(item.run_dir,
                                                       item.run_dir / STATUS_FILE)
            if not status:
                cause = f": {rank_failure}" if rank_failure else ""
                outcome.failed[item.point.run_id] = (
                    f"the trainer wrote no status.json (it failed at start{cause}); see "
                    f"{sweep_dir / 'ray' / 'logs' / (item.point.run_id + '.log')}")
            elif status.get("state") not in FINAL:
                outcome.failed[item.point.run_id] = (
                    f"state {status.get('state')!r}: {rank_failure or status.get('reason')}")
        return outcome


def _node_capacity() -> list[dict[str, float]]:
    """The resources of each alive node of the connected cluster."""
    import ray

    return [{k: float(v) for k, v in node.get("Resources", {}).items()}
            for node in ray.nodes() if node.get("Alive")]


def _check_fits(item: LaunchItem, placement: Placement,
                capacity: list[dict[str, float]]) -> None:
    """Refuse a point no placement on this cluster can ever hold (Tune would wait forever)."""
    need = placement.bundle
    fitting = sum(1 for node in capacity
                  if all(node.get(kind, 0.0) >= amount for kind, amount in need.items()))
    if fitting >= placement.nodes:
        return
    shown = ", ".join(f"{amount:g} {kind}" for kind, amount in need.items())
    largest = ", ".join(
        f"{max((n.get(kind, 0.0) for n in capacity), default=0.0):g} {kind}" for kind in need)
    hint = ("; join a multi-node cluster with --ray-address" if placement.nodes > 1
            else "; lower its resources or use a bigger cluster")
    raise ConfigError(
        f"point {item.point.index} ({item.point.label}) needs {placement.nodes} node(s) with "
        f"{shown} each, but {fitting} of the Ray cluster's {len(capacity)} node(s) have that "
        f"much (largest node: {largest}){hint}")


def _trial_dirname(trial: Any) -> str:
    return str(trial.config["run"]["run_id"])
