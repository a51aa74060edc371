#!/usr/bin/env bash
# The README's "Learning from long videos" table: on SynthME long (photo identity, 30 fps, 16 subjects:
# 12 train, 4 held out), train a LoRA adapter on the per-event rows of the training subjects' videos,
# tune the spotter on the same training videos, then ME-STR and ME-LVQA on the held-out subjects' videos,
# for the untrained base and for base + adapter.
# Usage: scripts/long-videos-learn.sh [OUT]   (default .cache/lv; needs the demo's stage-1 base:
# `make demo` builds .cache/demo/tiny-base; about 20 minutes on 2 idle CPU cores)
set -euo pipefail
OUT=${1:-.cache/lv}
BASE=${BASE:-.cache/demo/tiny-base}
MEVQA=${MEVQA:-.venv/bin/mevqa}
D=$OUT/photo30
[ -f "$BASE/config.json" ] || { echo "error: $BASE — no base model; run make demo first" >&2; exit 2; }
[ -f "$D/annotations.csv" ] || $MEVQA data synth --long --out "$D" --subjects 16 --videos-per-subject 1 \
  --seconds 60 --fps 30 --identity photo --seed 21 --test-fraction 0.25
$MEVQA data convert --long --dataset synthme --annotations "$D/annotations_train.csv" --out "$D/train"
$MEVQA data convert --long --dataset synthme --annotations "$D/annotations_test.csv" --out "$D/test"
cp "$D/test/lvqa.jsonl" "$D/test/me_lvqa_synthme_test_to_answer.jsonl"
$MEVQA spot --tune --data "$D/annotations_train.csv" --root "$D/videos" --out "$D/results/tune"
$MEVQA train --config adapters/recipes/tiny_synthme.yaml --data "$D/train/events.jsonl" \
  --eval-data "$D/test/events.jsonl" --root "$D/videos" --model "$BASE" --face crop \
  --max-steps 1500 --eval-every 500 --save-every 500 --out "$D/lora" --overwrite
for who in base lora; do
  adapter=(); [ "$who" = lora ] && adapter=(--adapter "$D/lora")
  common=(--root "$D/videos" --model "$BASE" "${adapter[@]}" --face crop --input flow \
          --spot-recipe "$D/results/tune/spot_recipe.yaml" --max-new-tokens 48)
  $MEVQA eval --task str --data "$D/annotations_test.csv" "${common[@]}" --out "$D/results/str-$who"
  $MEVQA eval --task lvqa --data "$D/test/me_lvqa_synthme_test_to_answer.jsonl" "${common[@]}" \
    --out "$D/results/lvqa-$who"
done
