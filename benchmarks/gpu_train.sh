#!/usr/bin/env bash
# The seeded ablation of the training issue on ONE H100/H200: the shared autoencoder (~0.5 min), then the three
# arms of the small-gpu preset (epipolar bias / plain cross-view attention / no cross-view module) x 3 seeds at a
# fixed 2000 optimiser steps each, three units trained at a time on the one GPU from the committed clip cache, the
# bias convention pinned to ours; each unit then gets its toy measure, the warp measure on two known scenes (with
# ceiling and floor) and the SIFT protocol (`evaluate`), and each arm a contact sheet. results.json, ablation.md
# (mean ± std over seeds), loss_arms.png, state.json and every unit's model folder (fp16, each file < 16 MiB), loss
# log and toy measure land in $OUT; checkpoints in $WORK.
#
#   OUT=/path/to/results bash benchmarks/gpu_train.sh
#
# Resumable: rerunning the same command (same OUT and WORK) skips the finished units, resumes a unit cut off by the
# time limit (or by an interruption) from its checkpoint and computes only the missing measurements.
# Needs: torch (CUDA), diffusers, transformers, accelerate, safetensors, numpy, pillow, pyyaml, tqdm (matplotlib
# for the plots; pycolmap for the protocol). No network, no open3d/nerfstudio. Extra arguments go to
# benchmarks/train_ablation.py (e.g. STEPS=3 ... --dry-run --device cpu --jobs 1 for a check on a CPU; --seeds 0 1
# for fewer units).
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
exec "$PY" benchmarks/train_ablation.py --preset small-gpu --device cuda --out "$OUT" --work "${WORK:-$OUT-work}" \
  --seeds 0 1 2 --steps "${STEPS:-2000}" --jobs 3 --timeout-min 8 --warp-seeds 0 1 --protocol \
  --set autoencoder.max_minutes=1.0 "$@"
