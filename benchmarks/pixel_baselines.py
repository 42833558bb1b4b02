"""The raw-pixel baselines of a config, as a run would record them, without training.

    python benchmarks/pixel_baselines.py [--config fashion_mnist] [--set key=value ...]

Loads the config's data and evaluation split the way the trainer does (`data.load_data`,
`knn_sets`, the run's probe settings) and computes `baselines.compute` afresh (the cache is
neither read nor written), printing the k-NN and linear top-1 with the bank and query sizes and
the seconds each part took.
"""

from __future__ import annotations

import argparse
import time

import torch

from dino_ablate import baselines
from dino_ablate.config import load_config
from dino_ablate.data import load_data
from dino_ablate.launch.cost import backbone_dims
from dino_ablate.linear import resolve_protocol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="fashion_mnist")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    device = torch.device("cpu")
    t0 = time.perf_counter()
    data = load_data(cfg.data, device)
    bank, queries = data.knn_sets(cfg.seed)
    t1 = time.perf_counter()
    proto = resolve_protocol(cfg, backbone_dims(cfg)[0])  # the width only picks features
    result = baselines.compute(cfg, bank, queries, data.num_classes, proto, device)
    t2 = time.perf_counter()
    d = cfg.data
    print(f"{d.dataset} image_size {d.image_size} train_limit {d.train_limit} knn_train_limit "
          f"{d.knn_train_limit} val_limit {d.val_limit}: bank {result['pixels_bank']}, queries "
          f"{result['pixels_queries']}; raw pixels {cfg.eval.knn_k}-NN "
          f"{100 * result['knn_pixels']:.2f} %, linear {100 * result['linear_pixels']:.2f} % "
          f"(load {t1 - t0:.1f} s, baselines {t2 - t1:.1f} s, {torch.get_num_threads()} "
          "thread(s))")


if __name__ == "__main__":
    main()
