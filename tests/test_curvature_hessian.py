"""The instrument of benchmarks/curvature_hessian.py (issue 19, part 2): its Hessian diagonal
and Hessian-vector product against torch's dense Hessian, and its checks of the check."""

from __future__ import annotations

import pytest
import torch
from scripts import load_script


@pytest.fixture(scope="module")
def ch():
    return load_script("benchmarks/curvature_hessian.py")


def _tiny_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    inputs = torch.randn(10, 3, dtype=torch.float64)
    targets = torch.randint(2, (10,))
    batches = [(inputs[:5], targets[:5]), (inputs[5:], targets[5:])]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()

    def loss(vector):
        pieces = torch.split(vector, [s.numel() for s in shapes])
        params = [piece.reshape(shape) for piece, shape in zip(pieces, shapes)]
        total = 0.0
        for x, y in batches:
            hidden = torch.tanh(x @ params[0].T + params[1])
            total = total + torch.nn.functional.cross_entropy(hidden @ params[2].T + params[3], y)
        return total / len(batches)

    return model, batches, torch.autograd.functional.hessian(loss, flat)


def test_the_chunked_diagonal_and_the_product_are_the_dense_hessians(ch):
    model, batches, hessian = _tiny_problem()
    # Chunks of 7 do not divide the 22 coordinates: the last chunk is short.
    diagonal = ch.hessian_diagonal(model, batches, chunk=7)
    torch.testing.assert_close(diagonal, torch.diagonal(hessian), rtol=1e-10, atol=1e-12)
    vector = torch.randn(hessian.shape[0], dtype=torch.float64)
    torch.testing.assert_close(ch.hessian_vector_product(model, batches, vector),
                               hessian @ vector, rtol=1e-10, atol=1e-12)
    # The model is handed back in float32, as training uses it.
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_the_checks_of_the_check_tell_right_from_shuffled(ch):
    checks = ch.quadratic_check(size=200)
    # Open loop the pipeline finds h ~ a (measured 0.978 at 400 coordinates); a shuffled a,
    # the same posterior against the wrong truth, reads ~0.
    assert checks["right"]["pearson"] > 0.9
    assert abs(checks["shuffled"]["pearson"]) < 0.2
    assert checks["shuffled"]["coverage_0.95"] < 0.5 < checks["right"]["coverage_0.95"]
