"""``torch.compile`` of the optimizer step (inductor, CPU), on every path: it runs and matches
eager execution.

Compiling costs seconds to tens of seconds on a 2-core machine, so each case is small, and
the cases of one optimizer share one dynamo cache. Under compile every path flag traces the
single-tensor form (``vsgd_bayes.torch._functional.run_path``): the foreach and fused paths
read each step count as a Python number, which recompiled at every step (measured here:
146 s for 4 foreach steps, 66 s fused, against 13 s single-tensor).
"""

from __future__ import annotations

import pytest
import torch

from vsgd_bayes.torch import VSGD, ConstantVSGD, CurvatureKalmanVSGD, FactoredVSGD, KalmanVSGD

#: Inductor generates its own C++ for the elementwise chain and may contract a*b + c into a
#: fused multiply-add, and under compile the scalars a and rho_t are computed from the step
#: tensor in the state dtype (float32 here) instead of Python float64: float32 values after a
#: few steps agree to a few ulps (~1e-6 relative); 1e-5 leaves a margin.
RELATIVE_TOLERANCE = 1e-5

PATHS = {
    VSGD: [dict(foreach=False, fused=False), dict(foreach=True), dict(fused=True)],
    ConstantVSGD: [dict(foreach=False), dict(foreach=True)],
    KalmanVSGD: [dict(foreach=False), dict(foreach=True)],
    CurvatureKalmanVSGD: [dict(foreach=False), dict(foreach=True)],
    FactoredVSGD: [dict(foreach=False), dict(foreach=True)],
}


@pytest.mark.slow
@pytest.mark.parametrize("cls", list(PATHS), ids=lambda cls: cls.__name__)
def test_compiled_step_matches_eager_on_every_path(cls):
    torch._dynamo.reset()
    for paths in PATHS[cls]:
        check_compiled_step_matches_eager(cls, paths)


def check_compiled_step_matches_eager(cls, paths):
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(16, 4, generator=generator), torch.randn(4, generator=generator)]
    stream = [[torch.randn(p.shape, generator=generator) for p in start] for _ in range(4)]

    def run(compiled: bool):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = cls(params, lr=0.05, weight_decay=0.01, **paths)
        step = torch.compile(optimizer.step) if compiled else optimizer.step
        for grads in stream:
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            step()
        return params, optimizer

    eager_params, eager = run(compiled=False)
    compiled_params, compiled = run(compiled=True)
    for p, q, p0 in zip(compiled_params, eager_params, start):
        assert not torch.equal(p, p0)  # the compiled step did move the parameters
        scale = q.abs().max().item()
        assert torch.allclose(p, q, rtol=RELATIVE_TOLERANCE, atol=RELATIVE_TOLERANCE * scale)
        assert compiled.state[p].keys() == eager.state[q].keys()
        for key in eager.state[q]:
            if key == "step":
                continue
            actual, expected = compiled.state[p][key], eager.state[q][key]
            assert actual.shape == expected.shape, (paths, key)
            if expected.numel() == 0:  # e.g. the column rates of a vector (no column factor)
                continue
            scale = expected.abs().max().item()
            tolerance = dict(rtol=RELATIVE_TOLERANCE, atol=RELATIVE_TOLERANCE * scale)
            assert torch.allclose(actual, expected, **tolerance), (paths, key)
        assert compiled.state[p]["step"].item() == len(stream)
