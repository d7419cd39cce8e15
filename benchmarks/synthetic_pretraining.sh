#!/usr/bin/env bash
# Offline pretraining on images we generate (issue 6, item 3): pretrain on painted white-cell smears, then
# fine-tune on Zheng dataset1, against the same fine-tuning from random weights, scored the same way
# (benchmarks/ablation.py: held-out dataset1 crops). Everything on this CPU, one step after the other.
#   bash benchmarks/synthetic_pretraining.sh [WORK]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/synth-pretrain}
HEAD="--mask-roi 28 --mask-channels 64 --device cpu"
.venv/bin/python - "$W" <<'PY'
import sys
from pathlib import Path
from hemaseg.data.synthetic import SynthConfig, write_dataset
write_dataset(Path(sys.argv[1]) / "smears", 160, SynthConfig.wbc_field(192, 192, white=(1, 2)), seed=1,
              annotate={"white_cell": "cell"})
PY
start=$(date +%s)
.venv/bin/hemaseg train --data "$W/smears" --out "$W/pretrain" $HEAD --epochs 4 --no-progress
echo "pretraining: $(( $(date +%s) - start )) s"
.venv/bin/python benchmarks/ablation.py --work "$W/ablation" --datasets dataset1 --synthetic 0 --results "$W/results" \
  --run "scratch=$HEAD --epochs 6" --run "pretrained=--weights $W/pretrain/best.pt $HEAD --epochs 6"
