#!/usr/bin/env bash
# The README's "Long videos" table: SynthME long videos (photo and painted identities, 30 and 200 fps),
# the spotter tuned on the training subjects' videos and scored on the held-out subjects' ones.
# Then a second, larger check no setting saw: 6 new subjects per set (seeds 31 / 32; the blink grid of
# --tune was chosen looking at seeds 21 / 22), scored with the recipes tuned above (FRESH=0 skips it).
# Usage: scripts/long-videos.sh [OUT]   (default .cache/long; about 20 minutes on 2 CPU cores)
set -euo pipefail
OUT=${1:-.cache/long}
MEVQA=${MEVQA:-.venv/bin/mevqa}
blink_fp() {  # LABEL INTERVALS SHEET BLINKS: the false positives, and how many of them lie on a blink
  "$(dirname "$MEVQA")/python" -c "import sys; from pathlib import Path; from mevqa.bench_spot import blink_false_positives as b
print(sys.argv[1], b(*map(Path, sys.argv[2:])))" "$@"
}
for id in photo procedural; do
  $MEVQA data synth --long --out "$OUT/$id-30" --subjects 6 --videos-per-subject 1 --seconds 40 --fps 30 \
    --identity $id --seed 11 --test-fraction 0.34
  $MEVQA data synth --long --out "$OUT/$id-200" --subjects 6 --videos-per-subject 1 --seconds 15 --fps 200 \
    --identity $id --seed 12 --test-fraction 0.34
done
for s in photo-30 photo-200 procedural-30 procedural-200; do
  $MEVQA spot --tune --data "$OUT/$s/annotations_train.csv" --root "$OUT/$s/videos" --out "$OUT/results/$s-tune"
  $MEVQA spot --config "$OUT/results/$s-tune/spot_recipe.yaml" --data "$OUT/$s/annotations_test.csv" \
    --root "$OUT/$s/videos" --out "$OUT/results/$s-test"
done
for s in photo-30 photo-200 procedural-30 procedural-200; do
  blink_fp "$s" "$OUT/results/$s-test/intervals.jsonl" "$OUT/$s/annotations_test.csv" "$OUT/$s/blinks.csv"
done
[[ ${FRESH:-1} == 1 ]] || exit 0
for id in photo procedural; do
  $MEVQA data synth --long --out "$OUT/fresh/$id-30" --subjects 6 --videos-per-subject 1 --seconds 40 --fps 30 \
    --identity $id --seed 31
  $MEVQA data synth --long --out "$OUT/fresh/$id-200" --subjects 6 --videos-per-subject 1 --seconds 15 --fps 200 \
    --identity $id --seed 32
done
for s in photo-30 photo-200 procedural-30 procedural-200; do
  $MEVQA spot --config "$OUT/results/$s-tune/spot_recipe.yaml" --data "$OUT/fresh/$s/annotations.csv" \
    --root "$OUT/fresh/$s/videos" --out "$OUT/results/$s-fresh"
  blink_fp "$s fresh" "$OUT/results/$s-fresh/intervals.jsonl" "$OUT/fresh/$s/annotations.csv" \
    "$OUT/fresh/$s/blinks.csv"
done
