#!/usr/bin/env bash
# How many LoRA steps the demo's recipe takes, chosen on the 9 TRAINING subjects only (the 3 held-out
# subjects the demo scores are never read): 3 folds of 3 subjects, train on 6 with
# adapters/recipes/tiny_synthme.yaml (seed 0, the demo's stage-1 base), score the other 3 at steps
# 1000 / 2000 / 3000 (the recipe's eval_every). Run after `make demo`; ~12 min on 2 cores.
# Usage: scripts/demo-steps-cv.sh [DEMO_DIR] [OUT] [TRAIN FLAGS...]  (defaults .cache/demo, .cache/demo-steps-cv;
# flags such as --lora-dropout 0 are passed to every fold's `mevqa train`, to compare a recipe change)
set -euo pipefail
DEMO=${1:-.cache/demo}
OUT=${2:-.cache/demo-steps-cv}
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
for f in 1 2 3; do
  "$PY" - "$DEMO/synthme/train.jsonl" "$OUT" "$f" <<'PY'
import json, sys
rows_file, out, f = sys.argv[1], sys.argv[2], int(sys.argv[3])
val = {f"s{3 * (f - 1) + i:02d}" for i in (1, 2, 3)}  # fold f scores s01-s03, s04-s06 or s07-s09
rows = [json.loads(line) for line in open(rows_file)]
open(f"{out}/train{f}.jsonl", "w").writelines(json.dumps(r) + "\n" for r in rows if r["subject"] not in val)
open(f"{out}/val{f}.jsonl", "w").writelines(json.dumps(r) + "\n" for r in rows if r["subject"] in val)
PY
  "$PY" -m mevqa train --config adapters/recipes/tiny_synthme.yaml --data "$OUT/train$f.jsonl" \
    --eval-data "$OUT/val$f.jsonl" --root "$DEMO/synthme" --model "$DEMO/tiny-base" \
    --out "$OUT/fold$f" --overwrite --save-every 0 "${@:3}" > "$OUT/fold$f.log" 2>&1
done
"$PY" - "$OUT" <<'PY'
import json, sys
folds = [json.load(open(f"{sys.argv[1]}/fold{f}/metrics.json"))["held_out"] for f in (1, 2, 3)]
for i, step in enumerate(e["step"] for e in folds[0]):
    scores = [fold[i]["coarse_uf1"] for fold in folds]
    print(f"step {step}: coarse UF1 per fold {' '.join(f'{s:.3f}' for s in scores)}, mean {sum(scores) / 3:.3f}")
PY
