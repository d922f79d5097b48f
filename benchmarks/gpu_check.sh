#!/usr/bin/env bash
# One short device check of the fast paths on a CUDA machine (run from the repository root):
# device and versions, the parity tests on CUDA, then the step-time benchmark.
# Uses the machine's own python3/torch/triton; JAX runs the reference rule on CPU.
# Writes into ${OUT:-.} : parity.log, bench.log, gpu.json, gpu.png.
OUT=${OUT:-.}
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cpu
nvidia-smi -L
python3 -c "import torch, triton, jax; print('torch', torch.__version__, 'triton', triton.__version__, 'jax', jax.__version__, torch.cuda.get_device_name())"
VSGD_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider -x \
    tests/test_torch_fast_paths.py 2>&1 | tee "$OUT/parity.log" | tail -25
timeout 150 python3 benchmarks/step_time.py --device cuda --rounds 50 \
    --json "$OUT/gpu.json" --png "$OUT/gpu.png" 2>&1 | grep -v USDT | tee "$OUT/bench.log"
python3 -c "
import torch; from vsgd_bayes.torch import _fused
p=[torch.ones(1000, device='cuda')]; z=[torch.zeros(1000, device='cuda')]
_fused.fused_vsgd(p, [p[0]*0.1], z, [z[0]+1e-8], [z[0]+3e-7], [torch.tensor(0.)], lr=0.1, variance_ratio=30., prior_strength=1e-8, kappa1=.81, kappa2=.9, weight_decay=0., eps=1e-8, init='reference', maximize=False)
print('triton alignment hints used:', _fused._triton_module()._hints_work)"
