"""FactoredVSGD beyond the battery: float64 parity with the JAX rule on every path and both
factorizations, gradient_posterior against the rule, the state's size, and the refusal of
sharded parameters. (Every generic optimizer behaviour runs in tests/test_torch_battery.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vsgd_bayes.rules import factored as factored_rule
from vsgd_bayes.torch import VSGD, FactoredVSGD

#: Shapes: a matrix, a conv kernel, a (1, n) row, a vector, a 0-dim, an empty matrix.
SHAPES = ((4, 6), (3, 2, 2, 2), (1, 5), (7,), (), (0, 3))
OPTIONS = dict(lr=0.05, weight_decay=0.1, prior_strength=1e-6, variance_ratio=9.0, kappa1=0.7,
               kappa2=0.95, init="paper")


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _run_both(factorization, foreach, steps=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64))
              for s in SHAPES]
    arrays = [jnp.asarray(p.detach().numpy()) for p in params]
    states = [factored_rule.init_state(a, OPTIONS["prior_strength"], OPTIONS["variance_ratio"],
                                       "paper", factorization) for a in arrays]
    optimizer = FactoredVSGD(params, factorization=factorization, foreach=foreach, **OPTIONS)
    for _ in range(steps):
        grads = [torch.randn(s, generator=generator, dtype=torch.float64)
                 * 10.0 ** torch.empty(()).uniform_(-3, 2, generator=generator) for s in SHAPES]
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        for i, g in enumerate(grads):
            arrays[i], states[i] = factored_rule.step(arrays[i], jnp.asarray(g.numpy()),
                                                      states[i], factorization=factorization,
                                                      **OPTIONS)
    return params, optimizer, arrays, states


def _to_scale(got, want):
    """Largest difference over the array's largest value (0 for empty arrays)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


@pytest.mark.parametrize("factorization", ["matrix", "tensor"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single_tensor", "foreach"])
def test_float64_parity_with_the_rule(factorization, foreach):
    params, optimizer, arrays, states = _run_both(factorization, foreach)
    # The same float64 formulas; torch and XLA may sum a row in another order: ~1e-15 of the
    # array's scale after 7 steps (measured <= 8e-15), 1e-12 leaves a margin.
    for p, a, s in zip(params, arrays, states):
        assert _to_scale(p.detach().numpy(), a) < 1e-12
        for field in factored_rule.FactoredVSGDState._fields[1:]:
            assert _to_scale(optimizer.state[p][field].numpy(), getattr(s, field)) < 1e-12
        assert optimizer.state[p]["step"].item() == int(s.step)


def test_gradient_posterior_is_the_rules():
    params, optimizer, _, states = _run_both("matrix", foreach=False, seed=1)
    for p, s in zip(params, states):
        if p.numel() == 0:
            continue
        posterior = optimizer.gradient_posterior(p)
        drift, noise, momentum = factored_rule.gradient_posterior(s, OPTIONS["prior_strength"],
                                                                  "paper")
        assert posterior.mean.shape == p.shape
        assert _to_scale(posterior.drift_variance.numpy(), drift) < 1e-12
        assert _to_scale(posterior.noise_variance.numpy(), noise) < 1e-12
        assert _to_scale(posterior.momentum.numpy(), momentum) < 1e-12


def test_a_vector_steps_as_vsgd():
    # The rule is bitwise VSGD for a vector (tests/test_factored_rule.py); the torch path runs
    # the single-pass form of 09_fast_paths.md, VSGD's single-tensor path the textbook one, so
    # in float64 they agree to rounding: 1e-12 of the scale leaves a wide margin.
    generator = torch.Generator().manual_seed(2)
    start = torch.randn(6, generator=generator, dtype=torch.float64)
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    factored, vsgd = FactoredVSGD([a], lr=0.1), VSGD([b], lr=0.1, foreach=False, fused=False)
    for _ in range(5):
        grad = torch.randn(6, generator=generator, dtype=torch.float64)
        a.grad, b.grad = grad.clone(), grad.clone()
        factored.step()
        vsgd.step()
    assert _to_scale(a.detach().numpy(), b.detach().numpy()) < 1e-12
    assert _to_scale(factored.state[a]["drift_row_rate"].numpy(),
                     vsgd.state[b]["drift_rate"].numpy()) < 1e-12
    assert _to_scale(factored.state[a]["noise_row_rate"].numpy(),
                     vsgd.state[b]["noise_rate"].numpy()) < 1e-12


def test_state_is_about_the_parameters_size():
    weight = torch.nn.Parameter(torch.zeros(256, 128, 3, 3))
    optimizer = FactoredVSGD([weight])
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    state_bytes = sum(t.numel() * t.element_size() for t in optimizer.state[weight].values()
                      if torch.is_tensor(t) and t.dim() > 0)
    param_bytes = weight.numel() * weight.element_size()
    # mu (m n) + 2 (m + n) rates: 1 + 2/256 + 2/1152 = 1.0095 of the parameter
    assert state_bytes == (256 * 1152 + 2 * (256 + 1152)) * 4
    assert state_bytes / param_bytes < 1.01


def test_channels_last_parameter_equals_contiguous():
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(4, 3, 2, 2, generator=generator)
    a = torch.nn.Parameter(start.clone().to(memory_format=torch.channels_last))
    b = torch.nn.Parameter(start.clone())
    opt_a, opt_b = FactoredVSGD([a], lr=0.1), FactoredVSGD([b], lr=0.1)
    for _ in range(3):
        grad = torch.randn(4, 3, 2, 2, generator=generator)
        a.grad = grad.clone().to(memory_format=torch.channels_last)
        b.grad = grad.clone()
        opt_a.step()
        opt_b.step()
    assert torch.allclose(a, b, rtol=0, atol=1e-7)  # float32: only the reading order differs


def test_a_sharded_dtensor_is_refused_before_anything_changes(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        sharded = torch.nn.Parameter(distribute_tensor(torch.ones(4, 3), mesh, [Shard(0)]))
        replicated = torch.nn.Parameter(distribute_tensor(torch.ones(4, 3), mesh, [Replicate()]))
        optimizer = FactoredVSGD([replicated, sharded], lr=0.1)
        replicated.grad = distribute_tensor(torch.ones(4, 3), mesh, [Replicate()])
        sharded.grad = distribute_tensor(torch.ones(4, 3), mesh, [Shard(0)])
        with pytest.raises(RuntimeError, match=r"FactoredVSGD needs whole tensors: parameter 1 "
                                               r"of param group 0 is a DTensor"):
            optimizer.step()
        assert len(optimizer.state) == 0  # nothing was stepped, the replicated one neither
        assert torch.equal(replicated.full_tensor(), torch.ones(4, 3))
        sharded.grad = None
        optimizer.step()  # a replicated DTensor steps
        assert optimizer.state[replicated]["step"].item() == 1
    finally:
        dist.destroy_process_group()


def test_the_cpu_default_is_the_single_tensor_path(monkeypatch):
    from vsgd_bayes.torch import factored as factored_module

    called = []
    monkeypatch.setitem(factored_module._PATHS, "single_tensor",
                        lambda *args, **kwargs: called.append("single_tensor"))
    monkeypatch.setitem(factored_module._PATHS, "foreach",
                        lambda *args, **kwargs: called.append("foreach"))
    weight = torch.nn.Parameter(torch.ones(3, 2))
    weight.grad = torch.ones(3, 2)
    FactoredVSGD([weight]).step()
    FactoredVSGD([weight], foreach=True).step()
    assert called == ["single_tensor", "foreach"]
