"""Reddi, Kale & Kumar's (2018) online problem: where VSGD, Constant VSGD, Adam and AMSGrad end.

The problem ("On the convergence of Adam and beyond", ICLR 2018, stochastic example): on
x in [-1, 1] (projection: clamp after every step), the loss at step t is f_t(x) = 1010 x with
probability 0.01 and -10 x otherwise. The expected gradient is 0.01 * 1010 - 0.99 * 10 = 0.2 > 0,
so the optimum is x = -1. Adam with a short second-moment memory goes to +1; AMSGrad,
whose denominator is the running maximum v_hat_t = max(v_hat_{t-1}, v_t), goes to -1.

Each coordinate of x is an independent copy of the problem (its own random stream). The long
runs use JAX engines (``vsgd_bayes.rules.vsgd.step``, ``vsgd_bayes.rules.constant.step`` and Adam /
AMSGrad written as torch.optim.Adam computes them, in a ``lax.scan``), because 10^6 Python-level
torch steps take minutes per optimizer; ``tests/test_reddi_problem.py`` shows that each engine
follows its torch optimizer (``vsgd_bayes.torch.VSGD``, ``vsgd_bayes.torch.ConstantVSGD``,
``torch.optim.Adam(amsgrad=False/True)``) step for step on this problem, and pins the outcome.

Settings: Adam's betas (0.9, 0.99); learning rate lr_t = alpha / sqrt(t) for every optimizer
(the schedule of Reddi et al.'s analysis); x_0 = 0; library defaults otherwise.

Run::

    python benchmarks/reddi_problem.py             # 10^6 steps, 64 coordinates (~1 min)
    python benchmarks/reddi_problem.py --steps 20000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from vsgd_bayes.rules import constant as constant_rule  # noqa: E402
from vsgd_bayes.rules import vsgd as rule  # noqa: E402
from vsgd_bayes.torch.constant import DEFAULT_VARIANCE_RATIO  # noqa: E402

LARGE, SMALL, PROBABILITY = 1010.0, -10.0, 0.01
ADAM_BETAS = (0.9, 0.99)
ADAM_EPS = 1e-8
OPTIMIZERS = ("vsgd", "vsgd_paper", "constant_vsgd", "adam", "amsgrad")


def gradient_stream(steps: int, coordinates: int, seed: int) -> np.ndarray:
    """(steps, coordinates) gradients of f_t: 1010 with probability 0.01, else -10."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random((steps, coordinates)) < PROBABILITY, LARGE, SMALL)


def learning_rate(alpha: float, t):
    """lr_t = alpha / sqrt(t), t counted from 1."""
    return alpha / jnp.sqrt(t)


class AdamState(NamedTuple):
    step: jax.Array
    exp_avg: jax.Array
    exp_avg_sq: jax.Array
    max_exp_avg_sq: jax.Array


def adam_step(params, gradient, state: AdamState, *, lr, amsgrad: bool):
    """One step of torch.optim.Adam (weight_decay 0), written out: m, v, optional running max."""
    beta1, beta2 = ADAM_BETAS
    t = state.step + 1
    exp_avg = beta1 * state.exp_avg + (1 - beta1) * gradient
    exp_avg_sq = beta2 * state.exp_avg_sq + (1 - beta2) * gradient**2
    max_exp_avg_sq = jnp.maximum(state.max_exp_avg_sq, exp_avg_sq) if amsgrad else exp_avg_sq
    correction1, correction2 = 1 - beta1**t, 1 - beta2**t
    denominator = jnp.sqrt(max_exp_avg_sq) / jnp.sqrt(correction2) + ADAM_EPS
    params = params - (lr / correction1) * exp_avg / denominator
    return params, AdamState(t, exp_avg, exp_avg_sq, max_exp_avg_sq)


def engine(name: str) -> tuple[Callable, Callable]:
    """(init_state(params), step(params, gradient, state, lr)) of the named optimizer."""
    if name in ("vsgd", "vsgd_paper"):
        init = "paper" if name == "vsgd_paper" else "reference"
        return (
            lambda p: rule.init_state(p, init=init),
            lambda p, g, s, lr: rule.step(p, g, s, lr=lr, init=init),
        )
    if name == "constant_vsgd":
        return (
            constant_rule.init_state,
            lambda p, g, s, lr: constant_rule.step(
                p, g, s, lr=lr, variance_ratio=DEFAULT_VARIANCE_RATIO),
        )
    if name in ("adam", "amsgrad"):
        zeros = lambda p: jnp.zeros_like(p)  # noqa: E731
        return (
            lambda p: AdamState(jnp.zeros([], p.dtype), zeros(p), zeros(p), zeros(p)),
            lambda p, g, s, lr: adam_step(p, g, s, lr=lr, amsgrad=name == "amsgrad"),
        )
    raise ValueError(f"Invalid optimizer: {name!r} (must be one of {OPTIMIZERS})")


def trajectory(name: str, gradients, alpha: float, record_every: int = 1):
    """Projected run from x_0 = 0: (x after every ``record_every``-th step, mean x over the
    last 10% of the steps)."""
    init_state, step = engine(name)
    gradients = jnp.asarray(gradients)
    steps = gradients.shape[0]
    tail_start = steps - max(1, steps // 10)

    def one_step(carry, inputs):
        params, state, tail = carry
        t, gradient = inputs
        params, state = step(params, gradient, state, learning_rate(alpha, t))
        params = jnp.clip(params, -1.0, 1.0)
        tail = tail + jnp.where(t > tail_start, params, 0.0)
        return (params, state, tail), params

    params = jnp.zeros(gradients.shape[1], gradients.dtype)
    ts = jnp.arange(1, steps + 1, dtype=gradients.dtype)

    @jax.jit
    def run(params, gradients):
        (final, _, tail), path = jax.lax.scan(
            one_step, (params, init_state(params), jnp.zeros_like(params)), (ts, gradients))
        return final, tail / (steps - tail_start), path[record_every - 1::record_every]

    final, tail_mean, path = run(params, gradients)
    return np.asarray(final), np.asarray(tail_mean), np.asarray(path)


def measure(steps: int, coordinates: int, alpha: float, seed: int) -> dict:
    gradients = gradient_stream(steps, coordinates, seed)
    result = {"steps": steps, "coordinates": coordinates, "alpha": alpha, "seed": seed,
              "adam_betas": list(ADAM_BETAS), "optimizers": {}}
    for name in OPTIMIZERS:
        final, tail, _ = trajectory(name, gradients, alpha, record_every=steps)
        result["optimizers"][name] = {
            "final_mean": float(final.mean()),
            "final_median": float(np.median(final)),
            "tail_mean": float(tail.mean()),
            "fraction_below_minus_0.9": float(np.mean(final < -0.9)),
            "fraction_above_0.9": float(np.mean(final > 0.9)),
        }
    return result


def format_table(result: dict) -> str:
    lines = [
        f"Reddi et al. online problem: {result['steps']} steps, {result['coordinates']} "
        f"independent copies, lr_t = {result['alpha']}/sqrt(t), seed {result['seed']}",
        f"{'optimizer':<14} {'final mean':>10} {'median':>8} {'tail mean':>10} "
        f"{'x<-0.9':>7} {'x>0.9':>7}",
    ]
    for name, row in result["optimizers"].items():
        lines.append(
            f"{name:<14} {row['final_mean']:>+10.3f} {row['final_median']:>+8.3f} "
            f"{row['tail_mean']:>+10.3f} {row['fraction_below_minus_0.9']:>7.2f} "
            f"{row['fraction_above_0.9']:>7.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--coordinates", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    for name in ("steps", "coordinates"):
        if getattr(args, name) < 1:
            raise ValueError(f"Invalid {name}: {getattr(args, name)!r} (must be >= 1)")
    start = time.perf_counter()
    result = measure(args.steps, args.coordinates, args.alpha, args.seed)
    result["seconds"] = time.perf_counter() - start
    print(format_table(result))
    print(f"({result['seconds']:.1f} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
