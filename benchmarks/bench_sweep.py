"""Sweep benchmarks: expansion + validation of a 10,000-point sweep, and Ray's per-trial cost.

    python benchmarks/bench_sweep.py                 # both
    python benchmarks/bench_sweep.py --skip-ray      # expansion only (seconds)

1. Expansion: a 10 x 10 x 10 x 10 grid over `sweeps/local_smoke.yaml`'s `local` profile, read,
   expanded, validated (RunConfig per point), hashed and identified. Target < 2 s.
2. Ray overhead: the same tiny point trained (a) by a bare `dino-ablate train` subprocess and
   (b) as Tune trials through the Ray backend on an already started private Ray cluster, one
   trial at a time. Overhead per trial = (Tune fit time - bare time x trials) / trials. Ray's
   own start-up is printed separately.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dino_ablate.launch import ray_local  # noqa: E402

ray_local.setup_env()

from dino_ablate.config import to_dict  # noqa: E402
from dino_ablate.sweep import load_sweep  # noqa: E402


def big_sweep(path: Path, side: int) -> Path:
    raw = yaml.safe_load((ROOT / "sweeps" / "local_smoke.yaml").read_text())
    sweep = {
        "name": "bench", "base": {}, "profiles": {"local": raw["profiles"]["local"]},
        "grid": {"loss.student_temp": [round(0.05 + 0.01 * i, 3) for i in range(side)],
                 "teacher.momentum": [round(0.9 + 0.009 * i, 4) for i in range(side)],
                 "optim.lr": [round(1e-4 * (i + 1), 6) for i in range(side)]},
        "seeds": list(range(side)),
    }
    path.write_text(yaml.safe_dump(sweep))
    return path


def bench_expansion(side: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        file = big_sweep(Path(tmp) / "bench.yaml", side)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            sweep = load_sweep(file, "local")
            times.append(time.perf_counter() - started)
        n = len(sweep.points)
        best = min(times)
        print(f"expansion + validation of {n} points: best {best:.2f} s of {repeats} "
              f"({best / n * 1e6:.0f} us/point), all: {', '.join(f'{t:.2f}' for t in times)} s; "
              f"target < 2 s: {'OK' if best < 2 else 'MISSED'} "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


def bench_ray(trials: int) -> None:
    import ray

    from dino_ablate.launch.base import submit_sweep
    from dino_ablate.launch.ray_backend import RayBackend

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        raw = yaml.safe_load((ROOT / "sweeps" / "local_smoke.yaml").read_text())
        sweep_file = tmp_path / "ray_bench.yaml"
        sweep_file.write_text(yaml.safe_dump({
            "name": "raybench", "base": {}, "profiles": {"local": raw["profiles"]["local"]},
            "seeds": list(range(trials))}))
        sweep = load_sweep(sweep_file, "local")

        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        bare = []
        # the first run warms the file cache and is not counted
        for i, point in enumerate([sweep.points[0], *sweep.points]):
            cfg = tmp_path / f"bare{i}.yaml"
            cfg.write_text(yaml.safe_dump(to_dict(point.config)))
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dino_ablate", "-q", "train", str(cfg),
                            "--out", str(tmp_path / f"bare{i}")], check=True, env=env,
                           capture_output=True)
            if i:
                bare.append(time.perf_counter() - started)

        ray_tmp = Path(tempfile.mkdtemp(prefix="dray-", dir="/tmp"))
        started = time.perf_counter()
        ray_local.start_ray(num_cpus=2, temp_dir=ray_tmp)
        ray_start = time.perf_counter() - started
        try:
            started = time.perf_counter()
            result = submit_sweep(sweep, tmp_path / "sweep", RayBackend(), max_parallel=1)
            fit = time.perf_counter() - started
        finally:
            ray.shutdown()
            subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)
        assert not result.outcome.failed, result.outcome.failed
        median_bare = sorted(bare)[len(bare) // 2]
        per_trial = fit / trials
        print(f"bare `dino-ablate train` of one point: median {median_bare:.1f} s "
              f"({', '.join(f'{b:.1f}' for b in bare)})")
        print(f"ray backend, {trials} trial(s) one at a time: {fit:.1f} s = {per_trial:.1f} s per "
              f"trial -> overhead {per_trial - median_bare:+.1f} s per trial beyond the bare "
              f"train (Ray start-up {ray_start:.1f} s not included; load average "
              f"{os.getloadavg()[0]:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=10, help="values per axis (4 axes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray-trials", type=int, default=3)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    bench_expansion(args.side, args.repeats)
    if not args.skip_ray:
        bench_ray(args.ray_trials)


if __name__ == "__main__":
    main()
