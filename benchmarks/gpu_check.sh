#!/usr/bin/env bash
# One short device check of the fast paths on a CUDA machine (run from the repository root):
# device and versions, the parity tests on CUDA, then benchmarks/gpu_tune.py (block-size
# sweeps of the foreach and Triton paths, a host-side profile of the fused step, and the
# step-time benchmark with the best settings). Uses the machine's own python3/torch/triton;
# JAX runs the reference rule on CPU.
# Writes into ${OUT:-.} : parity.log, tune.log, tune.json, gpu.json, gpu.png.
OUT=${OUT:-.}
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cpu
nvidia-smi -L
python3 -c "import torch, triton, jax; print('torch', torch.__version__, 'triton', triton.__version__, 'jax', jax.__version__, torch.cuda.get_device_name())"
VSGD_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -p no:cacheprovider \
    tests/test_torch_fast_paths.py 2>&1 | tee "$OUT/parity.log" | tail -25
timeout 400 python3 benchmarks/gpu_tune.py --rounds 60 --bench-rounds 100 --json "$OUT/tune.json" \
    --bench-json "$OUT/gpu.json" --bench-png "$OUT/gpu.png" 2>&1 | grep -v USDT | tee "$OUT/tune.log"
