#!/usr/bin/env bash
# The comparison of docs/benchmarks.md: Mask R-CNN vs the semantic U-Net vs classical baselines,
# on Zheng dataset1's held-out split and on synthetic dense smears. About 45 min on a 2-core CPU.
#   bash benchmarks/compare.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/compare}
B=.venv/bin/hemaseg
D1=../shared/data/wbc-zheng2018/dataset1
mkdir -p "$R"
# 1. Zheng dataset1: both models with the default split (seed 0, 20% held out)
[ -f "$R/d1-maskrcnn/best.pt" ] || $B train --data $D1 --out "$R/d1-maskrcnn" --no-progress
[ -f "$R/d1-unet/best.pt" ] || $B train --arch unet --data $D1 --out "$R/d1-unet" --no-progress
$B compare --data $D1 --model "$R/d1-maskrcnn/best.pt" --unet "$R/d1-unet/best.pt" --method maskrcnn --method unet --method otsu --method edges \
  --split "$R/d1-maskrcnn/split.json" --run "$R/d1-maskrcnn" --out "$R/compare-d1" --no-progress
# 2. synthetic dense smears (the demo's data): touching and overlapping cells
$B synth --out "$R/synth" --count 48 --size 160 --seed 0
[ -f "$R/synth-maskrcnn/best.pt" ] || $B train --data "$R/synth" --out "$R/synth-maskrcnn" --epochs 24 --no-progress
[ -f "$R/synth-unet/best.pt" ] || $B train --arch unet --data "$R/synth" --out "$R/synth-unet" --epochs 24 --no-progress
$B compare --data "$R/synth" --model "$R/synth-maskrcnn/best.pt" --unet "$R/synth-unet/best.pt" --method maskrcnn --method unet --method otsu --method edges \
  --split "$R/synth-maskrcnn/split.json" --run "$R/synth-maskrcnn" --out "$R/compare-synth" --no-progress
