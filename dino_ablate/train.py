"""The training run: set-up, the outer loop (log, evaluate, checkpoint) and resume.

The step itself is `step.train_step`; this module decides when to log, evaluate, checkpoint and
stop, and owns the run directory (rank 0 writes it).
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from dino_ablate import checkpoint, dist, faults
from dino_ablate.config import ConfigError, RunConfig, from_dict, to_dict
from dino_ablate.contract import (
    ATTENTION_DIR,
    CONFIG_FILE,
    LINEAR_DIR,
    STATUS_FILE,
    STOPPED_ON_COLLAPSE,
    SUMMARY_FILE,
    rank_failures,
    trains_on,
)
from dino_ablate.data import TrainData, load_data
from dino_ablate.epoch import Loop, epoch_record, run_steps
from dino_ablate.errors import AnotherRun
from dino_ablate.evaluate import Evaluator
from dino_ablate.identity import first_difference
from dino_ablate.model import (
    build_networks,
    num_tokens,
    set_fused_attention,
    teacher_pairs,
)
from dino_ablate.rundir import RunDir, set_aside
from dino_ablate.schedules import Schedules
from dino_ablate.step import TrainState, param_groups
from dino_ablate.teacher import make_teacher_rule

log = logging.getLogger("dino_ablate.train")


def pick_device(cfg: RunConfig) -> torch.device:
    want = cfg.runtime.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device: 'cuda' but no GPU is visible; allowed here: cpu, auto",
                          key="runtime.device")
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", dist.detect().local_rank % max(torch.cuda.device_count(), 1))


def check_world_size(cfg: RunConfig, world_size: int) -> None:
    """The global batch must split evenly over the ranks."""
    if cfg.optim.batch_size % world_size:
        raise ConfigError(f"optim.batch_size: {cfg.optim.batch_size} is not divisible by the "
                          f"world size {world_size}; allowed: a multiple of {world_size}",
                          key="optim.batch_size")


def check_run_dir(cfg: RunConfig, run_dir: Path) -> RunDir:
    """Check that an existing run directory holds the same run (`identity`); writes nothing.

    A config that differs only in keys that do not define the run (`identity.NOT_DEFINING`:
    runtime, data root, workers) is the same run: it resumes, and config.yaml records the new
    values once the checkpoints agree. Any other difference is refused before anything changes,
    naming the first differing key. Never overwrites a different run's results.
    """
    rd = RunDir(run_dir)
    existing = rd.read_config()
    if existing is not None:
        try:
            old = from_dict(existing, source=str(run_dir / CONFIG_FILE))
        except ConfigError as exc:
            raise AnotherRun(f"{run_dir} holds an unreadable config ({exc}); refusing to "
                              "overwrite it: choose another --out") from exc
        diff = first_difference(to_dict(old), to_dict(cfg))
        if diff is not None:
            raise AnotherRun(f"{run_dir} already holds a run with a different config "
                              f"({diff}); refusing to overwrite it: choose another --out",
                              key=diff.split(":", 1)[0])
    return rd


def fused_attention(cfg: RunConfig, device: torch.device) -> bool:
    """Whether the networks use fused SDPA (`runtime.fused_attention`; auto = on GPU, or above
    64 tokens): the trainer's choice, which evaluations of its checkpoints repeat, so that their
    features (and kNN votes) are the same to the last bit."""
    return cfg.runtime.fused_attention == "on" or (
        cfg.runtime.fused_attention == "auto"
        and (device.type == "cuda" or num_tokens(cfg.model, cfg.data.global_crop_size) > 64))


def build_state(cfg: RunConfig, channels: int, device: torch.device,
                autocast_dtype: torch.dtype | None) -> TrainState:
    """Fresh student, teacher (equal weights), optimizer, center and teacher rule."""
    student, teacher = build_networks(cfg.model, cfg.head, cfg.data.global_crop_size, channels)
    student.to(device)
    teacher.to(device)
    fused = fused_attention(cfg, device)
    set_fused_attention(student, fused)
    set_fused_attention(teacher, fused)
    if cfg.runtime.compile:
        # In place (nn.Module.compile), so state_dict keys stay those of the plain modules.
        student.backbone.compile()
        teacher.backbone.compile()
    fused_adamw = device.type == "cuda"
    optimizer = torch.optim.AdamW(param_groups(student), lr=0.0, fused=fused_adamw,
                                  foreach=None if fused_adamw else True)
    center = torch.zeros(1, cfg.head.out_dim, device=device)
    s_params, t_params = teacher_pairs(student, teacher)
    rule = make_teacher_rule(cfg.teacher.update, s_params, t_params)
    last_layer = [p for n, p in student.named_parameters()
                  if n.startswith("head.last_layer") and p.requires_grad]
    return TrainState(student, teacher, optimizer, center, rule, last_layer, autocast_dtype)


def train(cfg: RunConfig, run_dir: Path) -> str:
    """Train (or resume) the run in `run_dir`; returns the final state.

    Works in one process, under torchrun or under SLURM/submitit (see `dist`).
    """
    device = pick_device(cfg)
    info = dist.init(device.type)
    check_world_size(cfg, info.world_size)
    autocast_dtype = _set_up_torch(cfg, info, device)
    # The data first: a missing data folder is a config error, raised before the run directory
    # exists.
    data = load_data(cfg.data, device)
    steps_per_epoch = _steps_per_epoch(cfg, data)
    rd = check_run_dir(cfg, run_dir)
    status = rd.status()
    if status and status.get("state") in ("done", "diverged"):
        if not trains_on(status, cfg.runtime.collapse_stop):
            log.info("%s is already %s; nothing to do", run_dir, status["state"])
            return str(status["state"])
        _train_on_after_collapse_stop(rd, cfg, status, info.rank == 0)

    loop = _start(cfg, rd, data, info, device, autocast_dtype)
    is_main = info.rank == 0
    start_epoch = loop.start_step // steps_per_epoch
    if is_main:
        rd.write_status("running", start_epoch, cfg.epochs, loop.start_step)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        steps = run_steps(loop, epoch)
        if steps.diverged_at is not None:
            return _diverge(rd, cfg, epoch, steps.diverged_at, is_main)
        record = epoch_record(loop, epoch, steps.sums, t0)
        loop.history.append(record)
        if is_main:
            _save_epoch(rd, checkpoint.pack(loop.state, loop.student, step=record["step"],
                                            epoch=epoch + 1, metrics=loop.history,
                                            config=loop.config, device=device), record)
            _save_best_knn(rd, loop.history, loop.student, loop.state.teacher)
            rd.write_status("running", epoch + 1, cfg.epochs, record["step"])
            _log_epoch(cfg, record)
        dist.barrier()
        if cfg.runtime.collapse_stop and _collapsed(loop.history, cfg):
            return _finish(loop, rd, epoch + 1, record["step"],
                           reason=STOPPED_ON_COLLAPSE)
    return _finish(loop, rd, cfg.epochs, loop.sched.total_steps)


def _train_on_after_collapse_stop(rd: RunDir, cfg: RunConfig, status: dict[str, Any],
                                  is_main: bool) -> None:
    """A run `runtime.collapse_stop` ended early, now trained with the stop off: it resumes
    from its last checkpoint to its planned epochs. status.json says `running` first (a kill
    from here on leaves an interrupted run, resumed by the next submission, not a `done` one
    without its summary); then what the early end wrote (summary.json, the attention maps, the
    paper probe's folder) is set aside, kept beside the new files."""
    log.info("%s stopped early at epoch %s of %s on a detected collapse; runtime.collapse_stop "
             "is off now, so it trains on from its last checkpoint", rd.path,
             status.get("epoch"), status.get("epochs"))
    if is_main:
        rd.write_status("running", int(status.get("epoch") or 0), cfg.epochs,
                        int(status.get("step") or 0),
                        reason="training on after a collapse stop (runtime.collapse_stop off)")
        ended = [rd.path / name for name in (SUMMARY_FILE, ATTENTION_DIR, LINEAR_DIR)
                 if (rd.path / name).exists()]
        _set_aside(ended, "stopped-early", "written when the run stopped on the collapse")


def _set_up_torch(cfg: RunConfig, info: dist.DistEnv, device: torch.device
                  ) -> torch.dtype | None:
    """Threads, determinism and the seed; returns the autocast dtype (None: fp32)."""
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    hosts = dist.rank_hosts() if info.world_size > 1 else []
    if info.rank == 0 and hosts:
        log.info("ranks on hosts: %s", ", ".join(f"{r} {h}" for r, h in enumerate(hosts)))
    if info.rank == 0:
        log.info("world size %d (%s), device %s, %d images per rank per step, %d thread(s) per "
                 "rank", info.world_size, info.launcher, device,
                 cfg.optim.batch_size // info.world_size, torch.get_num_threads())
    if cfg.runtime.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)  # the same on every rank, as the official code
    return autocast_dtype(cfg, device)


def autocast_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast when `runtime.precision` is bf16, or auto on a GPU; None: fp32. The
    trainer's choice, which evaluations of its checkpoints repeat (`dino-ablate eval`)."""
    return torch.bfloat16 if (
        cfg.runtime.precision == "bf16"
        or (cfg.runtime.precision == "auto" and device.type == "cuda")) else None


def _steps_per_epoch(cfg: RunConfig, data: TrainData) -> int:
    batch = cfg.optim.batch_size
    steps_per_epoch = data.steps_per_epoch(batch)
    if steps_per_epoch == 0:
        raise ConfigError(f"optim.batch_size: {batch} exceeds the {data.num_train} training "
                          "images; allowed: at most the training set size",
                          key="optim.batch_size")
    return steps_per_epoch


def _start(cfg: RunConfig, rd: RunDir, data: TrainData, info: dist.DistEnv,
           device: torch.device, autocast_dtype: torch.dtype | None) -> Loop:
    """Build the state, restore the newest checkpoint (or record the baselines), wrap in DDP.

    The order matters for bit-exact resumes: the networks, then the Evaluator, then the
    restore (which sets the RNG state) or the random-init evaluation.
    """
    is_main = info.rank == 0
    sched = Schedules(cfg, data.steps_per_epoch(cfg.optim.batch_size))
    state = build_state(cfg, data.channels, device, autocast_dtype)
    config = to_dict(cfg)
    # Before anything is written: a checkpoint of another run is refused like config.yaml.
    saved, unusable = checkpoint.latest_usable(rd.checkpoints, config)
    if is_main:
        rd.write_config(config)  # the same run: record this config's runtime, root, workers
    embed_dim = int(state.teacher.backbone.num_features)  # type: ignore[union-attr, arg-type]
    evaluator = Evaluator(cfg, data, embed_dim, device, autocast_dtype)
    start_step, history = _restore(rd, saved, state, evaluator, device, is_main)
    if is_main:
        _set_aside(unusable, "unusable", "it is not loadable")
        _reconcile_best(rd, history, state)
    if is_main and saved is not None:
        log.info("resuming %s at epoch %d (step %d)", rd.path,
                 start_step // sched.steps_per_epoch, start_step)
    student = state.student
    model: torch.nn.Module = student
    if info.world_size > 1:
        # After the checkpoint is loaded: DDP broadcasts rank 0's weights at construction.
        model = DistributedDataParallel(student, device_ids=[device.index]
                                        if device.type == "cuda" else None)
        state.student = model
    return Loop(cfg=cfg, data=data, state=state, sched=sched, evaluator=evaluator, info=info,
                device=device, run_dir=rd.path, model=model, student=student, config=config,
                history=history, start_step=start_step, run_start=time.perf_counter(),
                nan_step=faults.nan_step(rd.path))


def _restore(rd: RunDir, saved: dict[str, Any] | None, state: TrainState,
             evaluator: Evaluator, device: torch.device, is_main: bool
             ) -> tuple[int, list[dict[str, Any]]]:
    """The step to start at and the metrics records so far; metrics.jsonl is made to match.

    Without a checkpoint the random-init and raw-pixel baselines are evaluated (once: init.json).
    """
    if saved is not None:
        start_step, history = checkpoint.unpack(saved, state, device)
    else:
        start_step, history = 0, []
        init = rd.read_init()
        if init is None:
            init = evaluator.init_record(state.teacher, state.student)
            if is_main:
                rd.write_init(init)
            log.info("random-init kNN top-1: teacher %.4f student %.4f; raw pixels: kNN %s "
                     "linear %s", init["knn_teacher_init"], init["knn_student_init"],
                     _pct(init.get("knn_pixels")), _pct(init.get("linear_pixels")))
    if is_main:
        _restore_metrics(rd, history)  # exactly the checkpointed epochs, the rest set aside
    return start_step, history


def _log_epoch(cfg: RunConfig, record: dict[str, Any]) -> None:
    log.info("epoch %d/%d loss %.4f entropy %.3f kl %.3f knn teacher %s student %s (%.1fs)",
             record["epoch"], cfg.epochs, record["loss"], record["teacher_entropy"],
             record["kl_teacher_student"], _pct(record["knn_teacher"]),
             _pct(record["knn_student"]), record["epoch_seconds"])


def _finish(loop: Loop, rd: RunDir, epoch: int, step: int, reason: str | None = None) -> str:
    """The end-of-run evaluations, status `done` and summary.json."""
    is_main = loop.info.rank == 0
    final = _end_of_run(rd, loop.evaluator, loop.state.teacher, loop.student, loop.history,
                        is_main)
    if is_main:  # summary.json first: a run `done` in status.json always has its summary
        _write_summary(rd, loop.cfg, loop.history, loop.run_start, "done", final)
        rd.write_status("done", epoch, loop.cfg.epochs, step, reason=reason)
    return "done"


def _save_epoch(rd: RunDir, state: dict[str, Any], record: dict[str, Any]) -> None:
    """Write the epoch's checkpoint and append its metrics record: both or neither.

    The record is appended once the checkpoint's temporary file is written, just before the
    renames that make it `last.pt`. A failed write (a full disk, a read-only directory) before
    or during them removes the temporary file and cuts the record off again, so `last.pt`,
    `previous.pt` and metrics.jsonl keep the previous epoch, exactly. A SIGKILL between the
    append and the renames leaves one record more than the checkpoint: the resume sets it
    aside (`_restore_metrics`).
    """
    epoch = int(record["epoch"])
    appended_at: list[int] = []

    def before_rename() -> None:
        faults.maybe_kill("kill_checkpoint", epoch, rd.path)
        faults.maybe_fail_write("checkpoint", epoch, rd.path, rd.checkpoints / checkpoint.LAST)
        appended_at.append(rd.append_metrics(record, mid_write=functools.partial(
            faults.maybe_fail_write, "metrics", epoch, rd.path, rd.metrics)))

    try:
        checkpoint.save(rd.checkpoints, state, mid_write=before_rename)
    except BaseException:
        if appended_at:
            rd.truncate_metrics(appended_at[0])
        raise


def _restore_metrics(rd: RunDir, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl := the restored checkpoint's records; lines beyond them are moved aside."""
    side = rd.restore_metrics(history)
    if side is not None:
        log.warning("metrics.jsonl held records beyond the %d epoch(s) of the checkpoint "
                    "resumed from; they are kept in %s", len(history), side)


def _save_best_knn(rd: RunDir, history: list[dict[str, Any]], student: torch.nn.Module,
                   teacher: torch.nn.Module) -> None:
    """Keep the weights of the epoch with the best teacher kNN so far (`export --which`)."""
    value = history[-1]["knn_teacher"]
    earlier = _knns(history[:-1])
    if value is None or not math.isfinite(value) or (earlier and value <= max(earlier)):
        return
    _write_best(rd, student, teacher, history[-1])


def _knns(history: list[dict[str, Any]]) -> list[float]:
    return [r["knn_teacher"] for r in history
            if r.get("knn_teacher") is not None and math.isfinite(r["knn_teacher"])]


def _write_best(rd: RunDir, student: torch.nn.Module, teacher: torch.nn.Module,
                record: dict[str, Any]) -> None:
    checkpoint.save_best(rd.checkpoints, {"student": student.state_dict(),
                                          "teacher": teacher.state_dict(),
                                          "epoch": record["epoch"],
                                          "knn_teacher": record["knn_teacher"]})


def _set_aside(paths: list[Path], why: str, because: str) -> None:
    """Rename each file to `<name>.<why>-<UTC time>` beside it: kept, never overwritten."""
    for path in paths:
        side = set_aside(path, why)
        log.warning("%s is set aside as %s: %s", path.name, side, because)


def _reconcile_best(rd: RunDir, history: list[dict[str, Any]], state: TrainState) -> None:
    """Make best_knn.pt agree with the epochs resumed (`history`).

    A best_knn.pt of an epoch the resumed checkpoint does not hold (after a fall-back to
    previous.pt, or a restart without a checkpoint), one whose kNN differs from that epoch's
    record, or one that cannot be read is set aside as `best_knn.pt.orphaned-<UTC time>`: it
    is never overwritten. When the resumed epoch itself is the best so far and best_knn.pt does
    not hold it (a kill between the two writes of an epoch, or the file set aside), it is
    written from the restored weights. Otherwise, when the best epoch's weights are gone,
    there is no best_knn.pt until an epoch beats it: best_knn.pt only ever holds the best
    epoch of metrics.jsonl.
    """
    try:
        stored = checkpoint.read_best(rd.checkpoints)
        problem = None
    except ValueError as exc:
        stored, problem = None, str(exc)
    if stored is not None:
        epoch, value = stored
        record = history[epoch - 1] if 1 <= epoch <= len(history) else None
        if record is None:
            problem = (f"it holds epoch {epoch} (teacher kNN {value:.4f}), which the "
                       f"checkpoint resumed from (epoch {len(history)}) does not")
        elif record.get("knn_teacher") != value:
            problem = (f"its teacher kNN {value:.4f} differs from epoch {epoch}'s record "
                       f"({record.get('knn_teacher')})")
        if problem is not None:
            stored = None
    if problem is not None:
        _set_aside([rd.checkpoints / checkpoint.BEST_KNN], "orphaned", problem)
    knns = _knns(history)
    last = history[-1].get("knn_teacher") if history else None
    if last is not None and math.isfinite(last) and last == max(knns) and (
            stored is None or last > stored[1]):
        _write_best(rd, state.student, state.teacher, history[-1])


def _end_of_run(rd: RunDir, evaluator: Evaluator, teacher: torch.nn.Module,
                student: torch.nn.Module, history: list[dict[str, Any]],
                is_main: bool) -> dict[str, Any]:
    """The evaluations after the last epoch: the paper probe job and the attention maps.

    Returns the final linear-probe values for summary.json.
    """
    last = history[-1] if history else {}
    final: dict[str, Any] = {"linear_protocol": evaluator.proto.protocol,
                             "linear_teacher": last.get("linear_teacher"),
                             "linear_student": last.get("linear_student")}
    if evaluator.proto.protocol == "paper":
        result = evaluator.paper_linear(teacher, student, rd.path / "linear")
        final["linear_teacher"], final["linear_student"] = result["teacher"], result["student"]
    if is_main:
        evaluator.attention(teacher, student, rd.path / "attention", int(last.get("epoch", 0)))
    return final


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _diverge(rd: RunDir, cfg: RunConfig, epoch: int, step: int, is_main: bool) -> str:
    log.error("non-finite loss at step %d (epoch %d); the run stops as diverged, its last "
              "checkpoint is kept", step, epoch + 1)
    if is_main:
        rd.write_status("diverged", epoch, cfg.epochs, step,
                        reason=f"non-finite loss at step {step}")
    return "diverged"


def _collapsed(history: list[dict[str, Any]], cfg: RunConfig) -> bool:
    from dino_ablate.contract import detect

    result = detect([r["teacher_entropy"] for r in history],
                    [r["kl_teacher_student"] for r in history], math.log(cfg.head.out_dim))
    return bool(result.collapsed)


#: init.json keys copied into summary.json (the baselines beside the final values).
INIT_KEYS = ("knn_teacher_init", "knn_student_init", "linear_teacher_init",
             "linear_student_init", "knn_pixels", "linear_pixels")


def _write_summary(rd: RunDir, cfg: RunConfig, history: list[dict[str, Any]],
                   run_start: float, state: str, final: dict[str, Any]) -> None:
    init = rd.read_init() or {}
    rd.write_summary({
        "state": state, "epochs": history[-1]["epoch"] if history else 0,
        "steps": history[-1]["step"] if history else 0,
        "wall_seconds": sum(r["epoch_seconds"] for r in history),
        **{key: init.get(key) for key in INIT_KEYS}, **final,
        "final": history[-1] if history else None, "ln_k": math.log(cfg.head.out_dim),
    })


def train_run_dir(run_dir: Path) -> str:
    """Train the run whose resolved config is `run_dir/config.yaml` (the launchers' entry)."""
    raw = RunDir(run_dir).read_config()
    if raw is None:
        raise ConfigError(f"{run_dir} has no config.yaml")
    return run_guarded(from_dict(raw, source=str(run_dir / CONFIG_FILE)), run_dir)


def run_guarded(cfg: RunConfig, run_dir: Path) -> str:
    """`train`, recording an unexpected exception as state `failed` before re-raising.

    A failed write (`is_write_fault`: a full disk, a read-only run directory) is one of them:
    the checkpoints and metrics.jsonl still hold the last good epoch, and the same command
    resumes from it once the directory can be written again.

    Another rank of a multi-rank run records its own failure, a bad input (ConfigError) too,
    in `failed_ranks/` (`contract.rank_failures`): its launcher ends rank 0 before rank 0 can
    say why, and the run's state then names that rank, its host and its error. The rank is
    the launch environment's, so a rank that fails before joining the process group counts.
    """
    rank = dist.detect().rank
    try:
        return train(cfg, run_dir)
    except BaseException as exc:
        if rank != 0:
            record_rank_failure(run_dir, rank, exc)
        elif (run_dir / CONFIG_FILE).exists() and not isinstance(
                exc, (KeyboardInterrupt, SystemExit, ConfigError)):
            _record_failure(cfg, run_dir, exc)
        raise
    finally:
        dist.shutdown()


def record_rank_failure(run_dir: Path, rank: int, exc: BaseException) -> None:
    """A rank other than 0 failed: `failed_ranks/` says why (`contract.rank_failures`). Not
    for an interrupt, nor in a directory that holds another run (`AnotherRun`) or no run yet
    (no config.yaml)."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, AnotherRun)) \
            or not (run_dir / CONFIG_FILE).exists():
        return
    status = RunDir(run_dir).status() or {}
    epoch = status.get("epoch")
    path = rank_failures.write_rank_failure(
        run_dir, rank, dist.host_label(), f"{type(exc).__name__}: {exc}",
        "".join(traceback.format_exception(exc)), epoch if isinstance(epoch, int) else None)
    if path is not None:
        log.error("rank %d failed (recorded in %s): %s: %s", rank, path, type(exc).__name__,
                  exc)


#: errno values of a write that failed because of the storage, not of the program.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                          errno.EPERM})


def is_write_fault(exc: BaseException) -> bool:
    """A full disk or quota, or a read-only or unwritable file or directory."""
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS


def _record_failure(cfg: RunConfig, run_dir: Path, exc: BaseException) -> None:
    """status.json `failed` with the reason; when even that write fails, say so in the log."""
    rd = RunDir(run_dir)
    status = rd.status() or {}
    epoch = int(status.get("epoch", 0))
    reason = f"{type(exc).__name__}: {exc}"
    # Another rank failed first (rank 0's error is then often only the lost connection to it)
    first = rank_failures.first_failure(run_dir, rd.path / STATUS_FILE,
                                        attempt=rank_failures.attempt_id()) \
        if dist.detect().world_size > 1 else None
    if first:
        own = reason if len(reason) <= 160 else reason[:159] + "…"  # gloo's is ~300 chars
        reason = f"{first}; rank 0 then: {own}"
    if is_write_fault(exc):
        reason += (" (a write into the run directory failed; its last good checkpoint and "
                   "metrics are kept: free space or make it writable, then run the same command "
                   "to resume)")
    try:
        faults.maybe_fail_write("status", epoch, run_dir, rd.path / STATUS_FILE)
        rd.write_status("failed", epoch, cfg.epochs, int(status.get("step", 0)), reason=reason)
    except OSError as status_exc:
        log.error("run failed: %s; recording it in %s failed as well (%s), so status.json "
                  "still says %r", reason, rd.path / STATUS_FILE, status_exc,
                  status.get("state"))
    else:
        log.error("run failed (recorded in %s): %s", rd.path / STATUS_FILE, reason)
