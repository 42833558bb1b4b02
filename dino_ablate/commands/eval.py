"""`dino-ablate eval RUN_DIR [--knn] [--linear] [--attention] [--which last|best-knn]`.

Evaluates a checkpoint of an existing run directory (finished, or still training: the
checkpoint files are replaced atomically, so a read never sees half of one) without touching
its training files. Results go to `RUN_DIR/eval/<which>-epoch<NNN>/`: `eval.json`, and
`attention/` and `linear/` (the resumable paper probe) when asked for. The folder belongs to
one checkpoint file, by the sha256 of its bytes: a later evaluation of the same file adds to
it; another file under the same name (best_knn.pt or last.pt rewritten for the same epoch
after a fall-back to previous.pt), or a folder that recorded no digest, is first moved aside
as `<which>-epoch<NNN>.superseded-<UTC time>`.
"""

from __future__ import annotations

import argparse
import datetime
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("dino_ablate.eval")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "eval", help="evaluate a run directory's checkpoint (kNN, linear probe, attention)",
        description="Evaluate the teacher and student of RUN_DIR's last (or best-kNN) "
        "checkpoint with the run's own evaluation settings. Without --knn/--linear/--attention "
        "all three run. Writes RUN_DIR/eval/<which>-epoch<NNN>/ only.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--knn", action="store_true", help="weighted k-NN (the run's k and T)")
    p.add_argument("--linear", action="store_true",
                   help="linear probe with the run's protocol (eval.linear_protocol)")
    p.add_argument("--attention", action="store_true", help="last-block [CLS] attention maps")
    p.add_argument("--which", choices=("last", "best-knn"), default="last",
                   help="checkpoint to evaluate (default last)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dino_ablate.contract import read_json, write_json

    wanted = [name for name in ("knn", "linear", "attention") if getattr(args, name)]
    wanted = wanted or ["knn", "linear", "attention"]
    result, out_dir = evaluate_run(args.run_dir, args.which, wanted)
    # An earlier evaluation of the same checkpoint keeps the values this one did not compute.
    write_json(out_dir / "eval.json", {**(read_json(out_dir / "eval.json") or {}), **result})
    shown = ", ".join(f"{k} {100 * v:.1f}%" for k, v in result.items()
                      if k.startswith(("knn_", "linear_t", "linear_s")) and v is not None)
    print(f"epoch {result['epoch']} ({args.which}): {shown or 'attention only'} -> {out_dir}")
    return 0


def evaluate_run(run_dir: Path, which: str, wanted: list[str]) -> tuple[dict[str, Any], Path]:
    """Rebuild the run's networks from its checkpoint and evaluate them (module docstring)."""
    import torch

    from dino_ablate.data import load_data
    from dino_ablate.evaluate import Evaluator
    from dino_ablate.export import open_run_checkpoint
    from dino_ablate.model import build_networks, set_fused_attention
    from dino_ablate.train import autocast_dtype, fused_attention, pick_device

    cfg, _, source, state, digest = open_run_checkpoint(run_dir, which)
    device = pick_device(cfg)
    if cfg.runtime.threads:  # the trainer's thread count and attention path: same features
        torch.set_num_threads(cfg.runtime.threads)
    autocast = autocast_dtype(cfg, device)  # the trainer's precision: the same features
    data = load_data(cfg.data, device)
    student, teacher = build_networks(cfg.model, cfg.head, cfg.data.global_crop_size,
                                      data.channels)
    student.load_state_dict(state["student"])
    teacher.load_state_dict(state["teacher"])
    student.to(device)
    teacher.to(device)
    for network in (student, teacher):
        set_fused_attention(network, fused_attention(cfg, device))
    embed_dim = int(teacher.backbone.num_features)  # type: ignore[union-attr, arg-type]
    evaluator = Evaluator(cfg, data, embed_dim, device, autocast)
    epoch = int(state["epoch"])
    out_dir = run_dir / "eval" / f"{which}-epoch{epoch:03d}"
    result: dict[str, Any] = {"which": which, "epoch": epoch, "checkpoint": str(source),
                              "checkpoint_sha256": digest}
    _open_eval_dir(out_dir, result)
    result["evaluated"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if "knn" in wanted:
        result["knn_teacher"], result["knn_student"] = evaluator.knn(teacher), \
            evaluator.knn(student)
    if "linear" in wanted and evaluator.proto.protocol != "off":
        result["linear_protocol"] = evaluator.proto.protocol
        if evaluator.proto.protocol == "paper":
            probe = evaluator.paper_linear(teacher, student, out_dir / "linear")
            result["linear_teacher"], result["linear_student"] = probe["teacher"], \
                probe["student"]
        else:
            result["linear_teacher"] = evaluator.linear(teacher)
            result["linear_student"] = evaluator.linear(student)
    if "attention" in wanted:
        from dino_ablate.attention import save_attention

        save_attention(out_dir / "attention", teacher.backbone, student.backbone,
                       evaluator.queries, n_images=max(cfg.eval.attention_images, 1),
                       seed=0, patch_size=cfg.model.patch_size, epoch=epoch,
                       mean=evaluator.display_mean, std=evaluator.display_std, device=device)
        result["attention"] = str(out_dir / "attention")
    return result, out_dir


def _open_eval_dir(out_dir: Path, identity: dict[str, Any]) -> None:
    """Make `out_dir` the folder of the checkpoint `identity` names (module docstring), and
    record that in eval.json before anything is evaluated, so that an interrupted paper probe
    resumes only on the same weights."""
    from dino_ablate.contract import read_json, write_json
    from dino_ablate.rundir import set_aside

    eval_json = out_dir / "eval.json"
    if out_dir.is_dir() and any(out_dir.iterdir()):
        prior = read_json(eval_json) or {}
        if prior.get("checkpoint_sha256") != identity["checkpoint_sha256"]:
            side = set_aside(out_dir, "superseded")
            log.warning("%s held the evaluations of another file (epoch %s of %s, sha256 %s); "
                        "moved to %s", out_dir, prior.get("epoch", "?"),
                        prior.get("checkpoint", "?"),
                        str(prior.get("checkpoint_sha256", "not recorded"))[:12], side)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(eval_json, {**(read_json(eval_json) or {}), **identity})
