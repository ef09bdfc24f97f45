#!/usr/bin/env bash
# The GPU plan of the training issue, for ONE H100/H200 and about 6 minutes: the shared autoencoder (~0.5 min),
# then the three ablation arms of the small-gpu preset (epipolar bias / plain cross-view attention / no cross-view
# module) trained concurrently as three processes on the one GPU from the committed clip cache (capped at 4 min),
# each followed by its toy consistency measure; results.json, ablation.md, loss_arms.png and every arm's model
# folder (fp16, each file < 16 MiB), loss log and toy measure land in $OUT.
#
#   OUT=/path/to/results bash benchmarks/gpu_train.sh
#
# Needs: torch (CUDA), diffusers, transformers, accelerate, safetensors, numpy, pillow, pyyaml, tqdm (matplotlib
# for the plots). No network, no open3d/nerfstudio. Extra arguments go to benchmarks/train_ablation.py (e.g.
# --dry-run --device cpu for a check on a CPU).
set -euo pipefail
: "${OUT:?set OUT to the folder the results go to}"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
"$PY" - <<'PYCHECK'
import sys
try:
    import torch
except ImportError as e:
    sys.exit(f"gpu_train.sh: torch is not importable: {e}")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
PYCHECK
exec "$PY" benchmarks/train_ablation.py --preset small-gpu --device cuda --out "$OUT" --work "${WORK:-/tmp/cvd-train-work}" \
  --concurrent --timeout-min 5 --set optim.max_minutes=3.8 --set autoencoder.max_minutes=1.0 "$@"
