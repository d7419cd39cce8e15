#!/usr/bin/env bash
# Issue 20: the refactor changes no output. Runs a fixed set of commands (bundled models, built-in images,
# painted smears) into OUT and prints the SHA-256 of every deterministic file they write; run it at two
# commits and compare:   bash benchmarks/same_outputs.sh /tmp/a > a.txt; (other commit) ...; diff a.txt b.txt
# Left out: files that hold times (summary.json "seconds", HTML with timings); OUT is written as "OUT" in
# the tables hashed without their seconds column, so two OUT folders compare.
set -euo pipefail
OUT=${1:?usage: same_outputs.sh OUT}
H=${HEMASEG:-.venv/bin/hemaseg}
rm -rf "$OUT"; mkdir -p "$OUT"
DEMO=src/hemaseg/demo_data/bccd
$H segment "$DEMO" --out "$OUT/seg" --no-progress --export qupath --export imagej --export tiff >/dev/null 2>&1
# --min-size: the old name of --min-area (issue 20), so that older commits run this script too
$H segment "$DEMO/BloodImage_00003.jpg" --out "$OUT/seg-px" --pixel-size 0.1 --min-size 200 --no-types --no-progress >/dev/null 2>&1
$H synth --out "$OUT/synth" -n 4 --size 160 --seed 3 >/dev/null
$H evaluate --data "$OUT/synth" --out "$OUT/eval" --method otsu --no-progress >/dev/null 2>&1
$H evaluate --data "$OUT/synth" --out "$OUT/eval-mrcnn" --no-progress >/dev/null 2>&1
$H report "$OUT/seg" >/dev/null
cd "$OUT"
find . -type f \( -name "*.png" -o -name "*.tif" -o -name "*.csv" -o -name "*_result.json" -o -name "predictions_coco.json" \
  -o -name "*.geojson" -o -name "*.roi" -o -name "*.zip" -o -name "differential.json" -o -name "differential.csv" \) \
  ! -name "per_image.csv" ! -name "compare.csv" ! -name "summary.csv" | sort | xargs sha256sum
# tables whose seconds column varies: hash them without it
for f in eval/per_image.csv eval-mrcnn/per_image.csv seg/summary.csv seg-px/summary.csv; do
  python3 -c "import csv,sys; r=list(csv.DictReader(open('$f'))); k=[c for c in r[0] if 'second' not in c]; print(*(','.join(str(x[c]) for c in k) for x in r), sep='\n')" | sed "s|$OUT|OUT|g" | sha256sum | sed "s|-|./$f (no seconds)|"
done
# evaluation summaries without their time
for f in eval/summary.json eval-mrcnn/summary.json; do
  python3 -c "import json; d=json.load(open('$f')); d.pop('seconds_per_image'); print(json.dumps(d, sort_keys=True))" | sha256sum | sed "s|-|./$f (no seconds)|"
done
