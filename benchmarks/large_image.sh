#!/usr/bin/env bash
# An 8000x8000 smear through `hemaseg segment` (issue 7: very large images are tiled, memory stays bounded):
# 64 copies of one painted 1000x1000 white-cell field, segmented with the bundled model under /usr/bin/time.
#   bash benchmarks/large_image.sh [WORK]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/big}
.venv/bin/python - "$W" <<'PY'
import sys
from pathlib import Path
import numpy as np
from hemaseg.data.io import read_image, write_image
from hemaseg.data.synthetic import SynthConfig, write_dataset
w = Path(sys.argv[1])
d = write_dataset(w / "field", 1, SynthConfig.wbc_field(1000, 1000), seed=7, annotate={"white_cell": "cell"})
field = read_image(next((d / "images").glob("*.png")))
write_image(w / "big 8000.png", np.tile(field, (8, 8, 1))[:8000, :8000])
PY
/usr/bin/time -v .venv/bin/hemaseg segment "$W/big 8000.png" --out "$W/out" --no-types --no-progress --overwrite 2>&1 \
  | grep -E "segmented|Elapsed|Maximum resident"
