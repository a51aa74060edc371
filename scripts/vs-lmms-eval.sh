#!/usr/bin/env bash
# eval/BENCHMARKS.md §10, rerunnable: mevqa vs lmms-eval 0.7.3 on the same tiny Qwen2.5-VL and the same
# SynthME questions (24 clips, 8 frames, 16 new tokens, greedy, one torch thread), runs alternating.
#
# Usage: scripts/vs-lmms-eval.sh [OUT]        (default .cache/vs-lmms-eval; run from the repo root)
# Settings (environment):
#   REPEATS=3            timed runs of each tool (and of each lmms-eval batch size), alternating
#   QUESTIONS=150        the first N questions of SynthME's 24 clips (fewer: a quick check of the script)
#   MEVQA_BATCH=150      mevqa eval --batch-size (its best here: all 150 questions in one batch; answering
#                        0.67-0.70 s at 150 vs 0.75-0.78 s at 32, back to back)
#   LMMS_BATCHES="1 8 32 150"  lmms-eval --batch_size values tried; the table compares against each, and the
#                        ratios line against the fastest
#   LMMS_VENV=/work/lmms-venv  lmms-eval's own environment; built here when missing (SETUP=1 rebuilds it)
#   MEVQA=.venv/bin/mevqa (the repo's)
# Needs no network: the model and the clips are built here (HF_HUB_OFFLINE=1), pip only for the venv.
#
# What makes the two tools' work the same (the input check below verifies it question by question):
#   - the same JSONL: the test file has no onset/offset, so mevqa's `uniform` sampling spans the whole clip
#     (with them it samples onset..offset; `--sampling whole` would ignore them), and the task's
#     doc_to_visual (scripts/lmms_task/utils.py) picks the same 8 frames by mevqa's rule and decodes them
#     the same way (PIL, the same Pillow release in both environments);
#   - `--model qwen2_5_vl` resolves to lmms-eval's chat wrapper, which hands PIL images to qwen_vl_utils
#     unchanged (224 px stays 224) and adds no system turn (the chat template's default one, as mevqa);
#     its processor is given the tiny checkpoint's own min/max pixels (the wrapper's defaults would
#     override them), so both processors resize 224 -> 112 alike;
#   - lmms-eval's wrapper always loads the model in bfloat16, so mevqa runs with --dtype bfloat16;
#   - lmms-eval is started through scripts/lmms_task/run_lmms.py, which only adds a timer around the
#     wrapper's generate_until (lmms-eval reports no answering time of its own) and, for the input check,
#     a record of the processor's outputs.
# Both run on the CPU (mevqa --device cpu, lmms-eval device=cpu). The input check runs first and is also
# the warm-up (file caches, lmms-eval's datasets cache of the JSONL); only the runs after it are timed.
# Timings: end to end is process start to exit (/usr/bin/time); answering is what each tool spent
# answering (mevqa: its own answering_seconds; lmms-eval: inside generate_until).
set -euo pipefail
OUT=${1:-.cache/vs-lmms-eval}
REPEATS=${REPEATS:-3}
QUESTIONS=${QUESTIONS:-150}
MEVQA_BATCH=${MEVQA_BATCH:-150}
LMMS_BATCHES=${LMMS_BATCHES:-"1 8 32 150"}
LMMS_VENV=${LMMS_VENV:-/work/lmms-venv}
HERE=$(cd "$(dirname "$0")" && pwd)
MEVQA=${MEVQA:-$(dirname "$HERE")/.venv/bin/mevqa}
PY="$(dirname "$MEVQA")/python"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
export HF_HOME="$OUT/hf" HF_DATASETS_CACHE="$OUT/hf/datasets"

# ---------------------------------------------------------------- lmms-eval's environment
if [[ ${SETUP:-0} == 1 || ! -x $LMMS_VENV/bin/lmms-eval ]]; then
  echo "== building $LMMS_VENV (lmms-eval 0.7.3, mevqa's torch / transformers / Pillow releases)"
  read -r TORCH TV TF PIL < <("$PY" -c "import torch, torchvision, transformers, PIL
print(torch.__version__.split('+')[0], torchvision.__version__.split('+')[0], transformers.__version__, PIL.__version__)")
  python3 -m venv "$LMMS_VENV"
  # decord: the qwen2_5_vl wrapper imports it; filelock<4: lmms-eval 0.7.3 patches filelock._api (gone in 4)
  "$LMMS_VENV/bin/python" -m pip install -q 'lmms-eval==0.7.3' "transformers==$TF" "torch==$TORCH" \
    "torchvision==$TV" "pillow==$PIL" decord 'filelock<4'
fi

# ---------------------------------------------------------------- model, clips, questions, task
[[ -f $OUT/tiny/config.json ]] || "$MEVQA" models tiny --family qwen2_5_vl --out "$OUT/tiny"
[[ -f $OUT/synthme/train.jsonl ]] ||
  "$MEVQA" data synth --out "$OUT/synthme" --subjects 6 --clips-per-subject 4 --seed 0
TEST="$OUT/synthme/test$QUESTIONS.jsonl"
"$PY" - "$OUT/synthme" "$QUESTIONS" "$TEST" <<'PY'
import json, sys
from pathlib import Path
root, n, test = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
rows = [json.loads(l) for f in ("test.jsonl", "train.jsonl") for l in open(root / f) if l.strip()]
rows = rows[:n]
for r in rows:  # no onset/offset: mevqa's uniform sampling then spans the whole clip, as the task's does
    for k in ("onset_frame", "apex_frame", "offset_frame"):
        r.pop(k, None)
test.write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"{len(rows)} questions, {len({r['image_id'] for r in rows})} clips")
PY
N=$(wc -l < "$TEST")
PIXELS=$("$PY" -c "import json, sys
p = json.load(open(sys.argv[1]))['image_processor']
s = p.get('size') or {}
print(f\"min_pixels={p.get('min_pixels', s.get('shortest_edge'))},max_pixels={p.get('max_pixels', s.get('longest_edge'))}\")" \
  "$OUT/tiny/processor_config.json")
mkdir -p "$OUT/lmms_task"
cp "$HERE/lmms_task/utils.py" "$OUT/lmms_task/utils.py"
cat > "$OUT/lmms_task/mevqa_synthme.yaml" <<YAML
task: mevqa_synthme
dataset_path: json
dataset_kwargs:
  data_files:
    test: $TEST
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
process_results: !function utils.process_results
generation_kwargs:
  max_new_tokens: 16
  temperature: 0
  do_sample: false
  num_beams: 1
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
YAML
export MEVQA_LMMS_ROOT="$OUT/synthme" MEVQA_LMMS_FRAMES=8

MEVQA_ARGS=(--data "$TEST" --root "$OUT/synthme" --model "$OUT/tiny" --frames 8
  --max-new-tokens 16 --dtype bfloat16 --device cpu --batch-size "$MEVQA_BATCH")
LMMS=("$LMMS_VENV/bin/python" "$HERE/lmms_task/run_lmms.py" --model qwen2_5_vl
  --model_args "pretrained=$OUT/tiny,device=cpu,device_map=cpu,$PIXELS" --tasks mevqa_synthme
  --include_path "$OUT/lmms_task" --log_samples --process_docs_parallel 1)

# ---------------------------------------------------------------- input check (also the warm-up)
echo "== input check: $N questions through each tool, recording the model inputs"
rm -rf "$OUT/check" && mkdir -p "$OUT/check"
"$PY" "$HERE/lmms_task/dump_mevqa.py" "$OUT/check/mevqa_inputs.jsonl" "${MEVQA_ARGS[@]}" --out "$OUT/check/mevqa" \
  > "$OUT/check/mevqa.log" 2>&1 || { tail -20 "$OUT/check/mevqa.log"; exit 1; }
for b in $LMMS_BATCHES; do
  MEVQA_LMMS_DUMP="$OUT/check/lmms_inputs_b$b.jsonl" "${LMMS[@]}" --batch_size "$b" \
    --output_path "$OUT/check/lmms_b$b" > "$OUT/check/lmms_b$b.log" 2>&1 || { tail -20 "$OUT/check/lmms_b$b.log"; exit 1; }
done

# ---------------------------------------------------------------- timed runs, alternating
rm -rf "$OUT/runs" && mkdir -p "$OUT/runs"
cut -d' ' -f1-3 /proc/loadavg > "$OUT/runs/load_before"  # a busy machine shows here
for r in $(seq 1 "$REPEATS"); do
  d="$OUT/runs/mevqa_b${MEVQA_BATCH}_r$r"
  echo "== run $r/$REPEATS: mevqa (batch $MEVQA_BATCH)"
  /usr/bin/time -f %e -o "$d.time" "$MEVQA" eval "${MEVQA_ARGS[@]}" --out "$d" > "$d.log" 2>&1 ||
    { tail -20 "$d.log"; exit 1; }
  for b in $LMMS_BATCHES; do
    d="$OUT/runs/lmms_b${b}_r$r"
    echo "== run $r/$REPEATS: lmms-eval (batch $b)"
    MEVQA_LMMS_TIMING="$d.timing.json" /usr/bin/time -f %e -o "$d.time" "${LMMS[@]}" --batch_size "$b" \
      --output_path "$d" > "$d.log" 2>&1 || { tail -20 "$d.log"; exit 1; }
  done
done

cut -d' ' -f1-3 /proc/loadavg > "$OUT/runs/load_after"
"$PY" "$HERE/lmms_task/summarize.py" "$OUT" "$TEST" | tee "$OUT/summary.md"
