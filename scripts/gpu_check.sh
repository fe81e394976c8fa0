#!/usr/bin/env bash
# The CUDA checks of the eNTK engine, as one short script for a GPU machine:
#   1. tests/test_kernels_cuda.py (kernels on CUDA = explicit per-example autograd on the CPU;
#      fast = reference strategy on CUDA; float32 with a memory budget);
#   2. the kernel benchmark (`bench perf kernel`) on CUDA (fast vs reference, same inputs) on the random
#      4.5M model and on the bundled bert-tiny (or the model BERT_TINY names: a backbone or a directory).
# Logs go to $OUT (or ./gpu-check). Usage: [BERT_TINY=NAME|DIR] scripts/gpu_check.sh
set -uo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L | tee "$out/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$out/device.txt"
timeout 240 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_kernels_cuda.py 2>&1 | tee "$out/pytest.txt"
bench() { timeout 150 python3 -m benchmark.cli perf kernel --device cuda --ref-full "$@"; }
{
  bench --formulas sgd,asym --n-train 32 --n-eval 1000
  bench --formulas sgd --n-train 128 --n-eval 1000
  bench --model "${BERT_TINY:-bert-tiny}" --formulas sgd,asym --n-train 32 --n-eval 1000
} 2>&1 | tee "$out/bench.txt"
