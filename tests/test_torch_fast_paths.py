"""Parity of the fast torch paths (foreach, fused) with the JAX rule, params and state.

The reference is :func:`vsgd_bayes.rules.vsgd.step` in float64 (JAX x64 is on for the suite). Each
case runs a few steps on a list of tensors of mixed shapes (a zero-size one included),
starts some parameters late (mixed step counts within one call) and compares the parameters
and every state entry after every step.

Run on an accelerator with ``python tests/test_torch_fast_paths.py --device cuda`` (or
``VSGD_TEST_DEVICE=cuda python -m pytest tests/test_torch_fast_paths.py``).
"""

from __future__ import annotations

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.rules import vsgd as rule
from vsgd_bayes.torch import _foreach
from vsgd_bayes.torch._foreach import foreach_vsgd
from vsgd_bayes.torch._fused import fused_is_available, fused_vsgd

DEVICE = torch.device(os.environ.get("VSGD_TEST_DEVICE", "cpu"))

SHAPES = [(3, 4), (7,), (0, 5), (2, 3, 5), (), (1000,)]

#: Tolerances relative to the largest reference value of each array. float64: the algebraic
#: single-pass form and the rule's form differ only by rounding (~1e-16 per operation).
#: float32: constants are rounded to float32 (the rule's own float32 run is the reference).
RELATIVE_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}

HYPERPARAMETERS = dict(hp.DEFAULTS)
HYPERPARAMETERS.pop("lr")


def _paths():
    paths = [("foreach", foreach_vsgd)]
    if fused_is_available(DEVICE):
        paths.append(("fused", fused_vsgd))
    return paths


def _rule_state(tensor, steps_taken, prior_strength, variance_ratio, init):
    state = rule.init_state(jnp.asarray(tensor.numpy()), prior_strength, variance_ratio, init)
    return state._replace(step=jnp.asarray(steps_taken, jnp.int32))


def _to_jax(tensor, dtype):
    return jnp.asarray(tensor.detach().cpu().to(torch.float64).numpy()).astype(dtype)


def _assert_close(actual, expected, tolerance, what):
    actual = actual.detach().cpu().to(torch.float64).numpy()
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    error = float(np.max(np.abs(actual - expected), initial=0.0))
    assert error <= tolerance * scale, f"{what}: max error {error:.3e}, scale {scale:.3e}"


def _run_parity(
    path,
    *,
    param_dtype=torch.float64,
    state_dtype=torch.float64,
    maximize=False,
    weight_decay=0.0,
    init="reference",
    late=(1, 4),
    n_steps=5,
    lr=0.05,
    tolerance=None,
    **overrides,
):
    hyper = dict(HYPERPARAMETERS, weight_decay=weight_decay, init=init, **overrides)
    generator = torch.Generator().manual_seed(1234)
    jax_dtype = {torch.float64: jnp.float64, torch.float32: jnp.float32}[state_dtype]
    tolerance = tolerance or RELATIVE_TOLERANCE[state_dtype]

    params = [torch.randn(s, generator=generator, dtype=torch.float64) for s in SHAPES]
    params = [p.to(param_dtype).to(DEVICE) for p in params]
    means = [torch.zeros(p.shape, dtype=state_dtype, device=DEVICE) for p in params]
    drift_prior, noise_prior = hp.prior_rates(
        hyper["prior_strength"], hyper["variance_ratio"], hyper["init"]
    )
    drifts = [torch.full(p.shape, drift_prior, dtype=state_dtype, device=DEVICE) for p in params]
    noises = [torch.full(p.shape, noise_prior, dtype=state_dtype, device=DEVICE) for p in params]
    steps = [torch.tensor(0.0) for _ in params]

    reference = [
        (
            _to_jax(p, jnp.float64).astype(jax_dtype),
            rule.init_state(
                _to_jax(p, jax_dtype),
                hyper["prior_strength"],
                hyper["variance_ratio"],
                hyper["init"],
            ),
        )
        for p in params
    ]
    for t in range(n_steps):
        # Parameters listed in `late` get their first gradient at step 3 (mixed step counts).
        active = [i for i in range(len(params)) if i not in late or t >= 2]
        grads = [
            (torch.randn(params[i].shape, generator=generator, dtype=torch.float64) * 0.1)
            .to(param_dtype)
            .to(DEVICE)
            for i in active
        ]
        grads_before = [g.clone() for g in grads]
        path(
            [params[i] for i in active],
            grads,
            [means[i] for i in active],
            [drifts[i] for i in active],
            [noises[i] for i in active],
            [steps[i] for i in active],
            lr=lr,
            maximize=maximize,
            **hyper,
        )
        for g, before in zip(grads, grads_before):
            assert torch.equal(g, before), "the gradients must not be modified"
        for i, g in zip(active, grads):
            theta, state = reference[i]
            gradient = _to_jax(g, jax_dtype)
            if maximize:
                gradient = -gradient
            theta, state = rule.step(
                theta.astype(jax_dtype), gradient, state, lr=float(lr), **hyper
            )
            if param_dtype not in (torch.float64, torch.float32):
                # 16-bit parameters: the reference rounds theta to that dtype after each step
                theta = _to_jax(
                    torch.from_numpy(np.asarray(theta, np.float64)).to(param_dtype), jax_dtype
                )
            reference[i] = (theta, state)
        for i in range(len(params)):
            theta, state = reference[i]
            assert steps[i].item() == int(state.step), f"step of tensor {i}"
            assert params[i].dtype == param_dtype and means[i].dtype == state_dtype
            what = f"step {t + 1}, tensor {i} {tuple(params[i].shape)}"
            param_tolerance = tolerance
            if param_dtype not in (torch.float64, torch.float32):
                # one rounding to 16 bits of theta (~|theta| * 2^-8) may differ on ties
                param_tolerance = 2.0**-7
            _assert_close(params[i], theta, param_tolerance, "theta " + what)
            _assert_close(means[i], state.gradient_mean, tolerance, "mu " + what)
            _assert_close(drifts[i], state.drift_rate, tolerance, "b_g " + what)
            _assert_close(noises[i], state.noise_rate, tolerance, "b_ghat " + what)


PATHS = _paths()
PATH_IDS = [name for name, _ in PATHS]
PATH_FUNCTIONS = [function for _, function in PATHS]


@pytest.mark.parametrize("path", PATH_FUNCTIONS, ids=PATH_IDS)
@pytest.mark.parametrize(
    "case",
    [
        dict(),
        dict(maximize=True),
        dict(weight_decay=0.3),
        dict(init="paper"),
        dict(variance_ratio=9.0, prior_strength=1e-6, kappa1=0.6, kappa2=1.0, eps=1e-3),
        dict(late=()),
    ],
    ids=["defaults", "maximize", "weight_decay", "paper_init", "custom", "same_steps"],
)
def test_float64_parity_with_rule(path, case):
    _run_parity(path, **case)


@pytest.mark.parametrize("path", PATH_FUNCTIONS, ids=PATH_IDS)
def test_float32_parity_with_rule(path):
    _run_parity(path, param_dtype=torch.float32, state_dtype=torch.float32, weight_decay=0.1)


@pytest.mark.parametrize("path", PATH_FUNCTIONS, ids=PATH_IDS)
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16])
def test_16_bit_params_float32_state(path, param_dtype):
    _run_parity(path, param_dtype=param_dtype, state_dtype=torch.float32, maximize=True)


@pytest.mark.parametrize("path", PATH_FUNCTIONS, ids=PATH_IDS)
def test_tensor_learning_rate(path):
    _run_parity(path, lr=torch.tensor(0.05, dtype=torch.float64))


@pytest.mark.parametrize("block_size", [1, 64, 7])
def test_foreach_blocks_split_tensors_and_batches(monkeypatch, block_size):
    # Tiny blocks: every tensor is cut into many blocks, blocks of several tensors share a
    # batch, and the (1000,) tensor spans many batches; results must not depend on it.
    monkeypatch.setitem(_foreach.BLOCK_SIZE, DEVICE.type, block_size)
    _run_parity(foreach_vsgd, n_steps=3, weight_decay=0.1)


def test_foreach_non_contiguous_tensors():
    # Transposed (non-contiguous) parameters, gradients and state cannot be cut into flat
    # blocks; they are stepped whole and must give exactly what contiguous copies give.
    # Each parameter is stepped by its own call, so that both runs use the one-block form.
    generator = torch.Generator().manual_seed(7)
    hyper = dict(HYPERPARAMETERS, lr=0.1, weight_decay=0.2, maximize=False)
    shape = (6, 5)
    params = [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(2)]
    contiguous = [params, [torch.zeros(shape, dtype=torch.float64) for _ in params]]
    contiguous += [
        [torch.full(shape, r, dtype=torch.float64) for _ in params] for r in (1e-8, 3e-7)
    ]
    contiguous = [[t.to(DEVICE) for t in group] for group in contiguous]
    strided = [[t.t().contiguous().t() for t in group] for group in contiguous]
    contiguous = [[t.clone() for t in group] for group in contiguous]
    assert not strided[0][0].is_contiguous()
    steps_contiguous = [torch.tensor(0.0) for _ in params]
    steps_strided = [torch.tensor(0.0) for _ in params]
    for _ in range(3):
        grads = [
            torch.randn(shape, generator=generator, dtype=torch.float64).to(DEVICE) for _ in params
        ]
        for i, grad in enumerate(grads):
            foreach_vsgd(
                *[[group[i]] for group in contiguous[:1]],
                [grad],
                *[[group[i]] for group in contiguous[1:]],
                [steps_contiguous[i]],
                **hyper,
            )
            foreach_vsgd(
                *[[group[i]] for group in strided[:1]],
                [grad.t().contiguous().t()],
                *[[group[i]] for group in strided[1:]],
                [steps_strided[i]],
                **hyper,
            )
    for group_contiguous, group_strided in zip(contiguous, strided):
        for a, b in zip(group_contiguous, group_strided):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not strided[0][0].is_contiguous()


if __name__ == "__main__":
    # `--device cuda`: the same parity tests with every tensor on that device.
    arguments = sys.argv[1:]
    if "--device" in arguments:
        position = arguments.index("--device")
        os.environ["VSGD_TEST_DEVICE"] = arguments[position + 1]
        del arguments[position : position + 2]
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", *arguments]))
