"""A tiny digits recipe for integration tests: seconds per run on 2 CPU cores."""

import os
import subprocess
import sys
from pathlib import Path

TINY = [
    "epochs=3", "model.depth=2", "model.embed_dim=32", "model.num_heads=2",
    "head.out_dim=64", "head.hidden_dim=64", "head.bottleneck_dim=32", "optim.batch_size=128",
    "optim.warmup_epochs=1", "runtime.threads=1", "runtime.log_every_steps=5",
    "data.knn_train_limit=400", "data.val_limit=200", "eval.every_epochs=1",
]


def sets(*extra: str) -> list[str]:
    out: list[str] = []
    for item in [*TINY, *extra]:
        out += ["--set", item]
    return out


def run_train(out: Path, *extra: str, env: dict[str, str] | None = None,
              nproc: int = 1, port: int = 0, check: bool = True,
              timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`dino-ablate train digits` in a fresh process (under torchrun when nproc > 1)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if nproc == 1:
        cmd = [sys.executable, "-m", "dino_ablate", "train", "digits", "--out", str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
               "--master_port", str(port), "-m", "dino_ablate", "train", "digits",
               "--out", str(out)]
        full_env["GLOO_SOCKET_IFNAME"] = "lo"
    res = subprocess.run(cmd + sets(*extra), capture_output=True, text=True, env=full_env,
                         timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"exit {res.returncode}\n{res.stdout}\n{res.stderr[-4000:]}")
    return res
