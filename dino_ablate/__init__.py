"""dino_ablate: reproduce the DINO paper's ablation studies on SLURM or Ray."""

__version__ = "0.1.0"
