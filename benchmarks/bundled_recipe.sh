#!/usr/bin/env bash
# The bundled models of issue 17 from the shared data, in one command (2-core CPU; times in MODEL_CARD.md):
#
#   benchmarks/bundled_recipe.sh            # D=../shared/data W=runs/bundled by default
#
# 1. the scale model (hemaseg fit-scale) on every source at its known pixel size (benchmarks/real_sources.py);
# 2. stage A: the previous bundled model (issue 6, commit 2f61b02) fine-tuned on Zheng's dataset1 and dataset2,
#    the BCCD fields and painted smears, each brought to 0.16 um/px;
# 3. white-cell masks for the PBC crops from stage A, kept where they match the experts' boxes
#    (benchmarks/pbc_pseudo_masks.py), and hard negatives: Chula crops around red cells (red-cell points)
#    that stage A took for white cells (benchmarks/chula_negatives.py);
# 4. stage B: stage A fine-tuned with a third of the PBC crops and the Chula negatives added;
# 5. stage C: stage B fine-tuned 2 epochs with PBC's platelet crops added as negatives;
# 6. the 8-bit files that ship: src/hemaseg/models/default.pt (stage C's last epoch) and models/scale.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${D:-../shared/data}
W=${W:-runs/bundled}
H=.venv/bin/hemaseg
P=.venv/bin/python
Z=$D/wbc-zheng2018
mkdir -p "$W"
SECONDS=0

$H fit-scale --no-progress --steps 5000 --out "$W/scale.pt" \
  --data "$D/bccd-wbc" --pixel-size 0.0731 --data "$D/pbc/train" --pixel-size 0.1005 \
  --data "$D/chula-rbc12" --pixel-size 0.1887 --data "$Z/dataset1" --pixel-size 0.170 --data "$Z/dataset2" --pixel-size 0.0869
echo "scale model: $((SECONDS / 60)) min"

git show 2f61b02:src/hemaseg/models/default.pt > "$W/previous.pt"
$P -c "from hemaseg.data.synthetic import SynthConfig, write_dataset; write_dataset('$W/synthetic-white', 40, SynthConfig.wbc_field(256, 256, white=(1, 2)), seed=0, annotate={'white_cell': 'cell'})"

COMMON=(--pixel-size 0.16 --fields 0.25 --outline 16 --no-progress)
$H train --data "$Z/dataset1" --data "$Z/dataset2" --data "$D/bccd-wbc" --data "$W/synthetic-white" \
  --data-pixel-size 0.170 --data-pixel-size 0.0869 --data-pixel-size 0.0731 --data-pixel-size 0.1974 \
  --repeat 0.6 --repeat 3 --repeat 1 --repeat 1 --epochs 8 --weights "$W/previous.pt" "${COMMON[@]}" --out "$W/stageA"
echo "stage A: $((SECONDS / 60)) min"

$P benchmarks/pbc_pseudo_masks.py --model "$W/stageA/best.pt" --data "$D" --out "$W/pbc-pseudo"
# every third crop in name order (the types stay balanced): a validation split of ~280 crops, not ~840
mkdir -p "$W/pbc-third/images" "$W/pbc-third/labels" "$W/pbc-third/nuclei"
ls "$W/pbc-pseudo/labels" | grep '\.png$' | sort | awk 'NR % 3 == 1' | while read -r f; do n=${f%.png}
  ln -sf "$(readlink -f "$W/pbc-pseudo/images/$n.jpg")" "$W/pbc-third/images/$n.jpg"
  for x in labels/$n.png labels/$n.csv nuclei/$n.png; do ln -sf "$(readlink -f "$W/pbc-pseudo/$x")" "$W/pbc-third/$x"; done
done
$P benchmarks/chula_negatives.py --model "$W/stageA/best.pt" --data "$D" --out "$W/chula-neg"
echo "PBC masks, Chula negatives: $((SECONDS / 60)) min"

$H train --data "$Z/dataset1" --data "$Z/dataset2" --data "$D/bccd-wbc" --data "$W/synthetic-white" --data "$W/pbc-third" \
  --data "$W/chula-neg" --data-pixel-size 0.170 --data-pixel-size 0.0869 --data-pixel-size 0.0731 --data-pixel-size 0.1974 \
  --data-pixel-size 0.1005 --data-pixel-size 0.1887 --repeat 0.6 --repeat 3 --repeat 1 --repeat 1 --repeat 0.3 --repeat 1 \
  --epochs 5 --weights "$W/stageA/best.pt" "${COMMON[@]}" --out "$W/stageB"
echo "stage B: $((SECONDS / 60)) min"

# stage C: the PBC platelet crops not in the third (266, no white cell in them) added as negatives, 2 epochs:
# stage B took the platelet clump at the centre of half of PBC's held-out platelet crops for a white cell
mkdir -p "$W/pbc-platelets/images" "$W/pbc-platelets/labels" "$W/pbc-platelets/nuclei"
ls "$W/pbc-pseudo/labels" | grep '^PLATELET.*\.png$' | while read -r f; do n=${f%.png}
  [ -e "$W/pbc-third/labels/$n.png" ] && continue
  ln -sf "$(readlink -f "$W/pbc-pseudo/images/$n.jpg")" "$W/pbc-platelets/images/$n.jpg"
  for x in labels/$n.png labels/$n.csv nuclei/$n.png; do ln -sf "$(readlink -f "$W/pbc-pseudo/$x")" "$W/pbc-platelets/$x"; done
done
$H train --data "$Z/dataset1" --data "$Z/dataset2" --data "$D/bccd-wbc" --data "$W/synthetic-white" --data "$W/pbc-third" \
  --data "$W/chula-neg" --data "$W/pbc-platelets" --data-pixel-size 0.170 --data-pixel-size 0.0869 --data-pixel-size 0.0731 \
  --data-pixel-size 0.1974 --data-pixel-size 0.1005 --data-pixel-size 0.1887 --data-pixel-size 0.1005 \
  --repeat 0.6 --repeat 3 --repeat 1 --repeat 1 --repeat 0.3 --repeat 1 --repeat 1 \
  --epochs 2 --weights "$W/stageB/last.pt" "${COMMON[@]}" --out "$W/stageC"
echo "stage C: $((SECONDS / 60)) min"

# the last epoch ships (not one chosen on the held-out images), its weights in 8 bits
$P -c "
from hemaseg.model import compress_checkpoint, load_model, read_checkpoint, save_checkpoint
model, cfg = load_model('$W/stageC/last.pt')
save_checkpoint('$W/last-float.pt', model, cfg, epoch=read_checkpoint('$W/stageC/last.pt')['epoch'],
                data_diameters=read_checkpoint('$W/stageC/best.pt').get('data_diameters', {}))
compress_checkpoint('$W/last-float.pt', '$W/default.pt')"
$P -c "
from hemaseg.scale import load_scale_net, save_scale_net
import torch
ck = torch.load('$W/scale.pt', weights_only=True)
save_scale_net('$W/scale-8bit.pt', load_scale_net('$W/scale.pt'), compress=True, report=ck['report'], history=ck['history'])"
echo "done in $((SECONDS / 60)) min: $W/default.pt and $W/scale-8bit.pt (copy them to src/hemaseg/models/default.pt and scale.pt)"
