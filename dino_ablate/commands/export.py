"""`dino-ablate export RUN_DIR --out FILE [--which last|best-knn] [--force]`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "export", help="write a run's teacher and student in the official DINO layout",
        description="Write RUN_DIR's checkpoint as {'teacher', 'student'} state dicts named as "
        "the official DINO code names them (backbone.*, head.*), plus the timm arch and "
        "arguments that rebuild the backbone. The official eval_knn.py, eval_linear.py and "
        "visualize_attention.py load it with --pretrained_weights FILE --checkpoint_key "
        "teacher.")
    p.add_argument("run_dir", type=Path, help="run directory (holds config.yaml, checkpoints/)")
    p.add_argument("--out", required=True, type=Path, help="file to write (e.g. teacher.pth)")
    p.add_argument("--which", choices=("last", "best-knn"), default="last",
                   help="checkpoints/last.pt (default) or checkpoints/best_knn.pt (the epoch "
                   "with the best teacher kNN accuracy)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dino_ablate.export import export_run

    res = export_run(args.run_dir, args.out, which=args.which, force=args.force)
    print(f"wrote {res.path}: {res.which} checkpoint {res.source} (epoch {res.epoch}, "
          f"{res.num_tensors} tensors)")
    return 0
