"""``torch.compile`` of the VSGD step (inductor, CPU): it runs and matches eager execution.

Compiling costs tens of seconds on a 2-core machine, so this is one small test.
"""

from __future__ import annotations

import pytest
import torch

from vsgd_bayes.torch import VSGD

#: Inductor generates its own C++ for the elementwise chain and may contract a*b + c into a
#: fused multiply-add, and under compile the scalars a and rho_t are computed from the step
#: tensor in the state dtype (float32 here) instead of Python float64: float32 values after a
#: few steps agree to a few ulps (~1e-6 relative); 1e-5 leaves a margin.
RELATIVE_TOLERANCE = 1e-5



@pytest.mark.slow
def test_compiled_step_matches_eager():
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(16, 4, generator=generator), torch.randn(4, generator=generator)]
    stream = [[torch.randn(p.shape, generator=generator) for p in start] for _ in range(4)]

    def run(compiled: bool):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = VSGD(params, lr=0.05, weight_decay=0.01, foreach=False)
        step = torch.compile(optimizer.step) if compiled else optimizer.step
        for grads in stream:
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            step()
        return params, optimizer

    eager_params, eager = run(compiled=False)
    compiled_params, compiled = run(compiled=True)
    for p, q in zip(compiled_params, eager_params):
        scale = q.abs().max().item()
        assert torch.allclose(p, q, rtol=RELATIVE_TOLERANCE, atol=RELATIVE_TOLERANCE * scale)
        for key in ("gradient_mean", "drift_rate", "noise_rate"):
            actual, expected = compiled.state[p][key], eager.state[q][key]
            scale = expected.abs().max().item()
            tolerance = dict(rtol=RELATIVE_TOLERANCE, atol=RELATIVE_TOLERANCE * scale)
            assert torch.allclose(actual, expected, **tolerance), key
        assert compiled.state[p]["step"].item() == len(stream)
