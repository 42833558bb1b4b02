#!/usr/bin/env bash
# The GPU check (under 5 minutes on an H100/H200): images/s and utilisation against the bf16
# matmul peak measured in the same run, for ViT-S/16 (2x224 + 10x96 crops, batch 64) and ViT-S/8.
# Usage: scripts/gpu_check.sh [OUT_DIR]     (writes one JSON line per model there, if given)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for spec in "vits16:" "vits8:--set model.patch_size=8 --set model.arch=vit_small_patch8_224"; do
  name=${spec%%:*}; extra=${spec#*:}
  # shellcheck disable=SC2086
  line=$($PY -m dino_ablate bench vits16_gpu_bench --steps 20 --warmup 5 --no-eval --json $extra)
  echo "$name $line"
  if [[ -n "$OUT" ]]; then mkdir -p "$OUT"; echo "$line" > "$OUT/$name.json"; fi
  $PY - "$name" "$line" <<'PYEOF'
import json, sys
r = json.loads(sys.argv[2])
print(f"{sys.argv[1]}: {r['images_per_s']:.0f} images/s, utilisation {100*r['utilisation']:.1f} % "
      f"of the {r['peak_matmul_flops_per_s']/1e12:.0f} TFLOP/s bf16 matmul peak, "
      f"step/backbone {r['step_over_backbone']:.3f}, peak memory {r['peak_memory_mb']:.0f} MB")
PYEOF
done
