#!/usr/bin/env bash
# One-shot check of the CUDA path on a machine with a GPU (the workplace's device tool).
# Expects torch on `python3`, the repo as the working directory, wheels for what is missing in
# .whl/ (cryptography, cffi, pycparser) and $OUT for results. Usage: bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-results/gpu}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 NVIDIA_TF32_OVERRIDE=0  # compare with the CPU model without TF32 rounding
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
# 1. the test suite's core and strategy tests, with the untrusted device = cuda (default_device)
timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/test_core.py tests/test_strategies.py \
  -k "not imagenet and not host_dies" 2>&1 | tail -15 | tee "$OUT/tests.txt"
# 2. core benchmark on cuda (device segments on the GPU, enclave on the CPU)
timeout 150 python3 benchmarks/bench_core.py --device cuda --repeats 20 --batches 1,64 --json "$OUT/core-cuda.json" 2>&1 | tail -12
# 3. strategy benchmark on cuda
timeout 150 python3 -m taoism.cli bench --model resnet18 --batch 64 --repeats 10 --device cuda --out "$OUT/strategies-b64" 2>&1 | tail -14
ls "$OUT"
