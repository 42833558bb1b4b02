"""The ablation sweeps of issue 4: their `paper` profiles hold the paper's hyper-parameters.

The expected run configs are written here from the paper (reference DINO.md §1-2 and Sec. 3.2
of Caron et al. 2021), not from `config.py`'s defaults nor from the sweep files: the paper's
ViT-S/16 recipe (:data:`PAPER_RECIPE`), then what the ablation fixes for the whole study
(epochs, multi-crop), then what each point varies. A paper point must equal that exactly, key
by key, so nothing of the digits base the sweep files start from can leak into a paper run.
The `local` profiles are checked to run the same points on the unchanged digits recipe, and
every file and profile must pass `dino-ablate sweep --dry-run` on both backends without
creating anything.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dino_ablate import config as cfgmod
from dino_ablate.contract.points import SEED
from dino_ablate.launch.cost import estimate
from dino_ablate.sweep import Sweep, load_sweep

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = ROOT / "sweeps"

#: The paper's ViT-S/16 ImageNet recipe (DINO.md §2.1 and the paper's Sec. 3.2: batch 1024 on
#: 16 GPUs, tau_t warmed up 0.04 -> 0.07 over 30 epochs), for every training hyper-parameter.
#: Multi-crop is 2x224^2 + 10x96^2: Table 7 rows 1 and 4 are Table 8's 300-epoch rows with 10
#: and 0 local crops (linear 76.1 and 72.5).
PAPER_RECIPE: dict[str, Any] = {
    "seed": 0,
    "data.dataset": "imagefolder",
    "data.root": "${IMAGENET_ROOT}",
    "data.image_size": 224,
    "data.global_crop_size": 224,
    "data.local_crop_size": 96,
    "data.num_local_crops": 10,
    "data.global_crop_scale": [0.4, 1.0],
    "data.local_crop_scale": [0.05, 0.4],
    "data.flip_prob": 0.5,
    "data.color_jitter_prob": 0.8,
    "data.grayscale_prob": 0.2,
    "data.blur_prob_global": [1.0, 0.1],
    "data.blur_prob_local": 0.5,
    "data.solarize_prob": 0.2,
    "data.train_limit": None,           # all of ImageNet train
    "data.knn_train_limit": None,       # kNN over all of ImageNet train and val
    "data.val_limit": None,
    "model.arch": "vit_small_patch16_224",
    "model.patch_size": 16,
    "model.drop_path_rate": 0.1,
    "model.embed_dim": None,            # ViT-S: 384 wide, 12 blocks, 6 heads
    "model.depth": None,
    "model.num_heads": None,
    "head.out_dim": 65536,
    "head.hidden_dim": 2048,
    "head.bottleneck_dim": 256,
    "head.num_layers": 3,
    "head.norm_last_layer": True,
    "head.use_bn": False,
    "head.l2_bottleneck": True,
    "head.predictor": False,
    "loss.kind": "cross_entropy",
    "loss.student_temp": 0.1,
    "loss.teacher_temp": 0.07,
    "loss.warmup_teacher_temp": 0.04,
    "loss.warmup_teacher_temp_epochs": 30,
    "loss.sharpening": True,
    "loss.normalization": "centering",
    "loss.center_momentum": 0.9,
    "loss.sinkhorn_iterations": 3,      # SwAV's; the paper does not state DINO's
    "teacher.update": "ema",
    "teacher.momentum": 0.996,
    "teacher.momentum_end": 1.0,
    "optim.batch_size": 1024,
    "optim.lr": 5e-4,                   # per 256 images: 2e-3 at batch 1024
    "optim.min_lr": 1e-6,
    "optim.warmup_epochs": 10,
    "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4,
    "optim.clip_grad": 3.0,
    "optim.freeze_last_layer_epochs": 1,
    "eval.knn_k": 20,
    "eval.knn_temperature": 0.07,
    # The official linear evaluation (App. F.2, DINO.md §2.12); test_paper_linear_protocol.py
    # checks what these resolve to for every paper point.
    "eval.linear_protocol": "auto",
    "eval.linear_features": "auto",
    "eval.linear_epochs": 100,
    "eval.linear_lr": 1e-3,
    "eval.linear_batch_size": 1024,
}

#: Keys that do not change what a run learns; the paper profiles may set them freely (kNN
#: every 10 epochs instead of every epoch, loader workers, device, logging).
NON_TRAINING_KEYS = {"epochs", "data.train_split", "data.val_split", "data.num_workers",
                     "eval.every_epochs", "eval.batch_size", "eval.linear_every_epochs",
                     "eval.linear_l2", "eval.linear_steps", "eval.attention_images"}


@dataclass(frozen=True)
class PaperPoint:
    """One point of a paper ablation: what it changes and the paper's numbers for it."""

    changes: dict[str, Any]
    reference: dict[str, float]
    gpus: int = 16


@dataclass(frozen=True)
class Ablation:
    """A sweep file's study as the paper ran it."""

    file: str
    epochs: int
    points: list[PaperPoint]
    study: dict[str, Any] = field(default_factory=dict)  # fixed for the whole study


def _fixed(tau: float) -> dict[str, Any]:
    """A fixed teacher temperature: no warm-up."""
    return {"loss.teacher_temp": tau, "loss.warmup_teacher_temp": tau,
            "loss.warmup_teacher_temp_epochs": 0}


ABLATIONS = [
    # DINO Table 7 rows 1-2 (ViT-S/16, 300 epochs); no momentum = a copy of the student.
    Ablation("momentum", 300, [
        PaperPoint({"teacher.update": "ema"}, {"knn": 72.8, "linear": 76.1}),
        PaperPoint({"teacher.update": "student_copy"}, {"knn": 0.1, "linear": 0.1}),
    ]),
    # Fig. 7: model and length not given by the paper; ViT-S/16 at the appendix length.
    Ablation("centering_sharpening", 100, [
        PaperPoint({}, {"knn": 69.7}),
        PaperPoint({"loss.sharpening": False},
                   {"teacher_entropy": 11.09, "kl_teacher_student": 0.0}),
        PaperPoint({"loss.normalization": "none"},
                   {"teacher_entropy": 0.0, "kl_teacher_student": 0.0}),
    ]),
    # Fig. 6 right (ViT-S/16, 300 epochs).
    Ablation("teacher_update", 300, [
        PaperPoint({"teacher.update": "student_copy"}, {"knn": 0.1}),
        PaperPoint({"teacher.update": "previous_iteration"}, {"knn": 0.1}),
        PaperPoint({"teacher.update": "previous_epoch"}, {"knn": 66.6}),
        PaperPoint({"teacher.update": "ema"}, {"knn": 72.8, "linear": 76.1}),
    ]),
    # Fig. 5 (ViT-S, 300 epochs): smaller patches on more GPUs (ViT-S/8: 64 GPUs, dino#104).
    Ablation("patch_size", 300, [
        PaperPoint({"model.patch_size": 16}, {"knn": 72.8, "images_per_s_v100_inference": 1007},
                   gpus=16),
        PaperPoint({"model.patch_size": 8}, {"images_per_s_v100_inference": 180}, gpus=64),
        PaperPoint({"model.patch_size": 5}, {"images_per_s_v100_inference": 44}, gpus=128),
    ]),
    # Table 9 (ViT-S/16, 100 epochs, no multi-crop, lr scaled linearly; bs 128 on 1 GPU).
    Ablation("batch_size", 100, [
        PaperPoint({"optim.batch_size": 128}, {"knn": 57.9}, gpus=1),
        PaperPoint({"optim.batch_size": 256}, {"knn": 59.1}, gpus=4),
        PaperPoint({"optim.batch_size": 512}, {"knn": 59.6}, gpus=8),
        PaperPoint({"optim.batch_size": 1024}, {"knn": 59.9, "linear": 67.8}, gpus=16),
    ], study={"data.num_local_crops": 0}),
    # Table 7 rows 1, 3, 4, 5, 6 (ViT-S/16, 300 epochs); no sharpening with MSE (Table 14).
    Ablation("components", 300, [
        PaperPoint({}, {"knn": 72.8, "linear": 76.1}),
        PaperPoint({"loss.normalization": "sinkhorn"}, {"knn": 72.2, "linear": 76.0}),
        PaperPoint({"data.num_local_crops": 0}, {"knn": 67.9, "linear": 72.5}),
        PaperPoint({"loss.kind": "mse", "loss.sharpening": False},
                   {"knn": 52.6, "linear": 62.4}),
        PaperPoint({"head.predictor": True}, {"knn": 71.8, "linear": 75.6}),
    ]),
    # App. D, Sharpening (ViT-S/16, 100 epochs); tau_t = 0 is not expressible (teacher_temp > 0).
    Ablation("teacher_temperature", 100, [
        PaperPoint(_fixed(0.02), {"knn": 66.7}),
        PaperPoint(_fixed(0.04), {"knn": 69.6}),
        PaperPoint(_fixed(0.06), {"knn": 68.7}),
        PaperPoint(_fixed(0.08), {"knn": 0.1}),
        PaperPoint({}, {"knn": 69.7}),  # the default warm-up 0.04 -> 0.07 over 30 epochs
    ]),
    # App. C, output dimension (ViT-S/16, 100 epochs).
    Ablation("output_dim", 100, [
        PaperPoint({"head.out_dim": k}, {"knn": knn})
        for k, knn in ((1024, 67.8), (4096, 69.3), (16384, 69.2), (65536, 69.7),
                       (262144, 69.1))
    ]),
    # App. D, Online centering (ViT-S/16, 100 epochs).
    Ablation("center_momentum", 100, [
        PaperPoint({"loss.center_momentum": m}, {"knn": knn})
        for m, knn in ((0.0, 69.1), (0.9, 69.7), (0.99, 69.4), (0.999, 0.1))
    ]),
]
FILES = [a.file for a in ABLATIONS]
BY_FILE = {a.file: a for a in ABLATIONS}

#: The local profiles of sweep files 1-5 must fit 60 minutes on 2 cores (issue 15's budget; issue
#: 4 aimed at 45, before issue 15 asked for seeds where the claims compare close numbers).
LOCAL_BUDGET_CORE_HOURS = 2 * 60 / 60
CORE_FILES = ("momentum", "centering_sharpening", "teacher_update", "patch_size", "batch_size")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(_flat(value, path))
        else:
            out[path] = value
    return out


def _resolved(point_config: cfgmod.RunConfig) -> dict[str, Any]:
    return _flat(cfgmod.to_dict(point_config))


def _diff(actual: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    return [f"{key}: {actual.get(key)!r}, paper {expected.get(key)!r}"
            for key in sorted(set(actual) | set(expected))
            if actual.get(key) != expected.get(key)]


def _is_training_key(key: str) -> bool:
    return key not in NON_TRAINING_KEYS and not key.startswith("runtime.")


def _sweep(name: str, profile: str) -> Sweep:
    return load_sweep(SWEEPS / f"{name}.yaml", profile)


def test_the_recipe_names_every_training_hyper_parameter() -> None:
    """A new config key needs its paper value here before a paper profile can pass."""
    leaves = {row[0] for row in cfgmod.field_docs()}
    unnamed = leaves - set(PAPER_RECIPE) - NON_TRAINING_KEYS - {
        k for k in leaves if k.startswith("runtime.")}
    assert not unnamed, f"paper values missing for {sorted(unnamed)}"
    assert set(PAPER_RECIPE) <= leaves


def test_every_ablation_sweep_file_is_covered() -> None:
    present = {p.stem for p in SWEEPS.glob("*.yaml")} - {"local_smoke"}
    assert present == set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_paper_profile_is_the_papers_ablation(name: str) -> None:
    ablation = BY_FILE[name]
    sweep = _sweep(name, "paper")
    assert len(sweep.points) == len(ablation.points)
    study = {**PAPER_RECIPE, **ablation.study, "epochs": ablation.epochs}
    unmatched = list(sweep.points)
    for expected_point in ablation.points:
        expected = {**study, **expected_point.changes}
        matches = [p for p in unmatched
                   if all(_resolved(p.config)[k] == expected[k] for k in sweep.varied_keys)]
        assert len(matches) == 1, f"{name}: no single point for {expected_point.changes}"
        point = matches[0]
        unmatched.remove(point)
        actual = _resolved(point.config)
        problems = _diff(
            {k: v for k, v in actual.items() if _is_training_key(k)},
            {k: v for k, v in expected.items() if _is_training_key(k)})
        assert not problems, f"{name} {point.run_id} differs from the paper:\n  " + \
            "\n  ".join(problems)
        assert actual["epochs"] == ablation.epochs
        assert point.reference == expected_point.reference, point.run_id
        assert point.reference_source and "DINO" in point.reference_source
        res = point.resources
        assert res.nodes * res.gpus_per_node == expected_point.gpus, point.run_id
        assert res.world_size == expected_point.gpus
        assert res.gpus_per_node <= 8 and res.cpus_per_task == 10
    assert len(sweep.baseline) == 1


def test_table9_learning_rate_is_scaled_linearly() -> None:
    scaled = {p.config.optim.batch_size: p.config.scaled_lr
              for p in _sweep("batch_size", "paper").points}
    assert scaled == pytest.approx({128: 2.5e-4, 256: 5e-4, 512: 1e-3, 1024: 2e-3})


def test_paper_images_per_gpu_follow_the_paper() -> None:
    """64 images per GPU (official code), ViT-S/8 at 16 (dino#104), bs 128 on one GPU."""
    per_gpu = {}
    for name in ("momentum", "patch_size", "batch_size"):
        for p in _sweep(name, "paper").points:
            per_gpu[(name, p.run_id.rsplit("_", 1)[0])] = (
                p.config.optim.batch_size // p.resources.world_size)
    assert per_gpu[("momentum", "update-ema")] == 64
    assert per_gpu[("patch_size", "patch_size-8")] == 16
    assert per_gpu[("patch_size", "patch_size-5")] == 8
    assert per_gpu[("batch_size", "batch_size-128")] == 128
    assert per_gpu[("batch_size", "batch_size-512")] == 64


#: Local profiles with their own axes (`profiles.local.grid` / `zip`): point i stands for paper
#: point i: the paper's values scaled by one factor per axis (docs/sweeps.md, "Per-profile
#: axes").
LOCAL_AXES: dict[str, list[dict[str, Any]]] = {
    # the paper's / 64 (1024 there, 16 in digits.yaml)
    "batch_size": [{"optim.batch_size": b} for b in (2, 4, 8, 16)],
    # the paper's / 4 (16 there, 4 in digits.yaml); its /5 would be 1.25 here: no local point
    "patch_size": [{"model.patch_size": p} for p in (4, 2)],
    # the paper's / 2 (its fixed 0.04 against digits.yaml's 0.02)
    "teacher_temperature": [
        {"loss.teacher_temp": t, "loss.warmup_teacher_temp": w,
         "loss.warmup_teacher_temp_epochs": e}
        for t, w, e in ((0.01, 0.01, 0), (0.02, 0.02, 0), (0.03, 0.03, 0),
                        (0.04, 0.04, 0), (0.035, 0.02, 30))],
    # the paper's / 256 (65536 there, 256 in digits.yaml)
    "output_dim": [{"head.out_dim": k} for k in (4, 16, 64, 256, 1024)],
}
#: Where the local axis is the paper's times one factor (every varied value but epoch counts).
LOCAL_FACTOR = {"batch_size": 1 / 64, "teacher_temperature": 1 / 2, "output_dim": 1 / 256}


def _point_of(sweep: Sweep, run_id: str) -> dict[str, Any]:
    """The varied values of run `run_id` but for its seed."""
    return {k: v for k, v in sweep.point(run_id).varied.items() if k != SEED}


def _axis_points(sweep: Sweep) -> list[dict[str, Any]]:
    """The points' varied values but for the seeds, each point once, in sweep order."""
    out: list[dict[str, Any]] = []
    for varied in (_point_of(sweep, p.run_id) for p in sweep.points):
        if varied not in out:
            out.append(varied)
    return out


@pytest.mark.parametrize("name", sorted(LOCAL_FACTOR))
def test_local_axis_is_the_papers_scaled_by_one_factor(name: str) -> None:
    local, paper = _axis_points(_sweep(name, "local")), _axis_points(_sweep(name, "paper"))
    assert len(local) == len(paper)
    for lp, pp in zip(local, paper, strict=True):
        assert lp.keys() == pp.keys()
        for key, value in pp.items():
            expected = value if key.endswith("_epochs") else value * LOCAL_FACTOR[name]
            assert lp[key] == pytest.approx(expected), (name, key)


@pytest.mark.parametrize("name", FILES)
def test_local_profile_runs_the_same_points_on_the_unchanged_digits_recipe(name: str) -> None:
    digits = _flat(cfgmod.to_dict(cfgmod.load_config("digits")))
    local, paper = _sweep(name, "local"), _sweep(name, "paper")
    if name in LOCAL_AXES:
        assert _axis_points(local) == LOCAL_AXES[name]
        # the baseline is the local point standing for the paper's baseline (its seeds)
        base = _axis_points(paper).index(_point_of(paper, paper.baseline[0]))
        assert {_point_of(local, run_id) == LOCAL_AXES[name][base]
                for run_id in local.baseline} == {True}
    else:
        assert _axis_points(local) == _axis_points(paper)
    epochs = {p.config.epochs for p in local.points}
    assert len(epochs) == 1, "every point of a study trains equally long"
    for point in local.points:
        actual = _resolved(point.config)
        # Only the study's length, the thread count and the point's own values may differ.
        allowed = {"epochs", "runtime.threads", *point.varied}
        changed = {k for k in actual if actual[k] != digits[k]}
        assert changed <= allowed, f"{name} {point.run_id}: recipe changed at " \
                                   f"{sorted(changed - allowed)}"
        assert actual["runtime.device"] == "cpu" and actual["data.dataset"] == "digits"
        res = point.resources
        assert res.nodes == 1 and res.gpus_per_node == 0  # the private Ray is one CPU node
        # a trial never uses more threads than it reserves (patch_size reserves both cores
        # for one thread so that each point's throughput is measured alone); null follows
        # the reservation (Ray sets OMP_NUM_THREADS to cpus_per_task)
        threads = actual["runtime.threads"]
        assert threads is None or threads <= res.tasks * res.cpus_per_task
    # every seed of local point i carries paper point i's reference numbers
    local_axis = _axis_points(local)
    for local_point in local.points:
        paper_point = paper.points[local_axis.index(_point_of(local, local_point.run_id))]
        assert local_point.reference == paper_point.reference, local_point.run_id


@pytest.mark.parametrize("name", FILES)
def test_local_profile_is_accepted_by_the_ray_backend(name: str) -> None:
    from dino_ablate.launch.ray_backend import RayBackend

    RayBackend().check(_sweep(name, "local"))  # raises ConfigError for a shape it cannot place


def test_run_ids_name_the_varied_values() -> None:
    ids = {p.run_id for name in FILES for p in _sweep(name, "paper").points}
    for expected in ("update-student_copy_", "update-previous_epoch_", "patch_size-5_",
                     "batch_size-128_", "out_dim-262144_", "center_momentum-0.999_",
                     "normalization-none_sharpening-true_", "kind-mse_sharpening-false_",
                     "teacher_temp-0.07_warmup_teacher_temp-0.04_warmup_teacher_temp_epochs-30_"):
        assert any(expected in run_id for run_id in ids), expected


def test_local_profiles_of_files_1_to_5_fit_the_budget() -> None:
    """Files 1-5 on 2 cores in under 60 minutes, by the launcher's own CPU estimate. A run
    shared by two files (momentum.yaml's points are teacher_update.yaml's) is trained once
    per output root and counted once."""
    runs = {p.digest: p for name in CORE_FILES
            for p in _sweep(name, "local").points}
    assert len(runs) < sum(len(_sweep(name, "local").points) for name in CORE_FILES)
    core_hours = sum(estimate(p.config, p.resources).device_hours for p in runs.values())
    assert core_hours <= LOCAL_BUDGET_CORE_HOURS, f"{core_hours:.2f} core-hours"


def _dry_run(file: Path, profile: str, backend: str, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dino_ablate", "sweep", str(file), "--backend", backend,
         "--profile", profile, "--dry-run", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


@pytest.mark.parametrize("name", FILES)
def test_dry_run_succeeds_and_creates_nothing(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sweep_file = SWEEPS / f"{name}.yaml"
    cases = [(profile, backend) for profile in ("paper", "local")
             for backend in ("slurm", "ray")]
    procs = [(case, _dry_run(sweep_file, *case, out)) for case in cases]  # concurrently
    for (profile, backend), proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name} {profile} {backend}:\n{stdout}\n{stderr}"
        n_points = len(_sweep(name, profile).points)
        assert f"{n_points} run(s), profile '{profile}'" in stdout, stdout
        unit = "GPU-hours" if profile == "paper" else "CPU-hours"
        assert "estimated compute: " in stdout and unit in stdout, stdout
    assert not out.exists(), f"--dry-run created {sorted(out.rglob('*'))}"


def test_paper_cost_in_the_comment_matches_the_estimate() -> None:
    """Each file's comment quotes its paper-scale GPU-hours; keep it within 10 % of cost.py."""
    for name in FILES:
        text = (SWEEPS / f"{name}.yaml").read_text()
        total = sum(estimate(p.config, p.resources).device_hours
                    for p in _sweep(name, "paper").points)
        quoted = [line for line in text.splitlines()
                  if line.startswith("#") and "V100 GPU-hours" in line]
        assert quoted, f"{name}: no paper-scale cost in the comment"
        number = quoted[0].split("V100 GPU-hours")[0].split("~")[-1].replace(",", "").strip()
        assert math.isclose(float(number), total, rel_tol=0.1), (name, number, total)
