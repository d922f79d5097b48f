#!/usr/bin/env bash
# One short device check of the fast paths on a CUDA machine (run from the repository root):
# device and versions, the parity tests on CUDA, then the step-time benchmark with the
# library's defaults. With TUNE=1 it first runs benchmarks/gpu_tune.py (block-size sweeps of
# the foreach and Triton paths and a host-side profile of the fused step).
# Uses the machine's own python3/torch/triton; JAX runs the reference rule on CPU.
# Writes into ${OUT:-.} : parity.log, bench.log, gpu.json, gpu.png (and tune.log, tune.json).
OUT=${OUT:-.}
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cpu
nvidia-smi -L
python3 -c "import torch, triton, jax; print('torch', torch.__version__, 'triton', triton.__version__, 'jax', jax.__version__, torch.cuda.get_device_name())"
VSGD_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -p no:cacheprovider \
    tests/test_torch_fast_paths.py 2>&1 | tee "$OUT/parity.log" | tail -25
if [ "${TUNE:-0}" = 1 ]; then
    timeout 400 python3 benchmarks/gpu_tune.py --rounds 60 --bench-rounds 100 --json "$OUT/tune.json" \
        2>&1 | grep -v USDT | tee "$OUT/tune.log"
fi
timeout 200 python3 benchmarks/step_time.py --device cuda --rounds 100 \
    --json "$OUT/gpu.json" --png "$OUT/gpu.png" 2>&1 | grep -v USDT | tee "$OUT/bench.log"
