"""Is Curvature Kalman VSGD's curvature posterior right? h's posterior against the exact Hessian
diagonal on the digits MLP (issue 19, part 2; measured here).

Trains the calibration task's digits MLP (``vsgd-bayes calibrate digits-mlp``: 64-64-64-10
tanh, batch 64, lr 0.01 as its VSGD rows) with ``CurvatureKalmanVSGD`` and, at checkpoints,
compares the posterior of each coordinate's curvature h_i (mean m_h, standard deviation
sqrt(r P_hh)) with

* ``diagonal``: the exact diagonal H_ii of the Hessian of the full-batch training loss (the
  objective g* is the gradient of), from Hessian-vector products against the basis vectors
  (``torch.func``: forward over reverse, in chunks), in float64;
* ``along_step``: (H Delta)_i / Delta_i, the curvature the model's g' = g + h Delta sees along
  the step Delta the optimizer made last (one Hessian-vector product): the diagonal model's h
  absorbs the off-diagonal part of H Delta, so this, not H_ii, is what a right h estimates.

Reported per checkpoint: Pearson and Spearman correlation of m_h with each target, the
coverage of the target by m_h +- 1.96 sd (nominal 0.95) and the robust scale 1.4826 median|z| of
z = (target - m_h) / sd (1 when calibrated), over the coordinates whose |Delta_i| is above the
10th percentile (a step of ~0 leaves h unobserved and along_step undefined).

Checks of the check (run first, and by ``tests/test_curvature_hessian.py``): the chunked
diagonal equals ``torch.autograd.functional.hessian`` on a tiny network; on a separable quadratic
0.5 sum a_i theta_i^2 with mini-batch noise, whose Hessian diagonal a is known, the optimizer's
m_h correlates with a (> 0.9), while the same m_h against a shuffled a reads ~0 (< 0.2).

Usage::

    python benchmarks/curvature_hessian.py --json benchmarks/curvature_hessian/digits-mlp.json
    python benchmarks/curvature_hessian.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
import torch
from torch.func import functional_call, grad, jvp, vmap

from vsgd_bayes.apps.calibrate.tasks import make_calibration_task
from vsgd_bayes.torch import CurvatureKalmanVSGD

__all__ = ["hessian_diagonal", "hessian_vector_product", "compare", "quadratic_check", "run"]


def _flat_loss(model, batches, names, shapes):
    """The full-batch mean loss as a function of one flat float64 parameter vector."""
    sizes = [math.prod(shape) for shape in shapes]

    def loss(flat):
        pieces = torch.split(flat, sizes)
        params = {n: p.reshape(s) for n, p, s in zip(names, pieces, shapes)}
        total = 0.0
        for inputs, targets in batches:
            logits = functional_call(model, params, (inputs,))
            total = total + torch.nn.functional.cross_entropy(logits, targets)
        return total / len(batches)

    return loss


def _gradient_at(model, batches):
    """(the gradient of the full-batch loss as a function of the flat float64 parameters,
    their current value). ``functional_call`` puts every parameter in from the flat vector,
    so the model's own float32 parameters are neither used nor changed."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [tuple(p.shape) for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(torch.float64)
    return grad(_flat_loss(model, batches, names, shapes)), flat


def hessian_vector_product(model, batches, vector):
    """H v of the full-batch loss at the model's parameters (float64), v flat."""
    gradient, flat = _gradient_at(model, batches)
    return jvp(gradient, (flat,), (vector.to(torch.float64),))[1]


def hessian_diagonal(model, batches, chunk: int = 256):
    """H_ii of the full-batch loss, every coordinate, by H e_i in chunks of basis vectors."""
    gradient, flat = _gradient_at(model, batches)
    size = flat.numel()
    diagonal = torch.empty(size, dtype=torch.float64)
    for start in range(0, size, chunk):
        stop = min(start + chunk, size)
        rows = torch.arange(stop - start)
        basis = torch.zeros(stop - start, size, dtype=torch.float64)
        basis[rows, torch.arange(start, stop)] = 1.0
        products = vmap(lambda v: jvp(gradient, (flat,), (v,))[1])(basis)
        diagonal[start:stop] = products[rows, torch.arange(start, stop)]
    return diagonal


def _ranks(values):
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation (ties broken by position)."""
    return float(np.corrcoef(_ranks(np.asarray(a)), _ranks(np.asarray(b)))[0, 1])


def compare(curvature_mean, curvature_sd, target) -> dict:
    """Correlations of m_h with the target, coverage at 95% and the robust scale of z."""
    m, sd, target = (np.asarray(x, np.float64) for x in (curvature_mean, curvature_sd, target))
    z = (target - m) / sd
    finite = np.isfinite(z)
    return {
        "pearson": float(np.corrcoef(m, target)[0, 1]),
        "spearman": spearman(m, target),
        "coverage_0.95": float(np.mean(np.abs(z[finite]) <= 1.959964)),
        "robust_scale": float(1.4826 * np.median(np.abs(z[finite]))),
        "median_target": float(np.median(target)),
        "median_curvature_mean": float(np.median(m)),
        "count": int(finite.sum()),
    }


def _posterior_of(optimizer, params):
    means, sds, previous = [], [], []
    for p in params:
        posterior = optimizer.gradient_posterior(p)
        means.append(posterior.curvature_mean.reshape(-1))
        sds.append(posterior.curvature_variance.clamp_min(0).sqrt().reshape(-1))
        previous.append(optimizer.state[p]["previous_point"].reshape(-1))
    cat = [torch.cat(x).to(torch.float64) for x in (means, sds, previous)]
    return cat


def quadratic_check(steps: int = 3000, size: int = 400, seed: int = 0,
                    open_loop: bool = True) -> dict:
    """m_h against the known diagonal a of 0.5 sum a_i theta_i^2 + N(0, 0.1^2) noise.

    ``open_loop``: the gradient points follow a random walk of steps 0.01 x N(0, 1) that does
    not depend on the gradients (the model's assumption: Delta a known input), so a right
    pipeline must find h ~ a. Otherwise the optimizer's own steps at lr 0.01 move the points
    (the closed loop a real run is in), reported beside it.
    """
    generator = torch.Generator().manual_seed(seed)
    curvature = 10.0 ** (torch.rand(size, generator=generator, dtype=torch.float64) * 2 - 1)
    theta = torch.nn.Parameter(torch.randn(size, dtype=torch.float64, generator=generator))
    optimizer = CurvatureKalmanVSGD([theta], lr=0.01)
    point = theta.detach().clone()
    for _ in range(steps):
        noise = 0.1 * torch.randn(size, dtype=torch.float64, generator=generator)
        theta.grad = curvature * theta.detach() + noise
        optimizer.step()
        if open_loop:
            point = point + 0.01 * torch.randn(size, dtype=torch.float64, generator=generator)
            with torch.no_grad():
                theta.copy_(point)
    posterior = optimizer.gradient_posterior(theta)
    m = posterior.curvature_mean.numpy()
    sd = posterior.curvature_variance.sqrt().numpy()
    truth = curvature.numpy()
    shuffled = np.random.default_rng(seed).permutation(truth)
    return {"right": compare(m, sd, truth), "shuffled": compare(m, sd, shuffled)}


def run(steps: int, checkpoints: list[int], seed: int, lr: float) -> dict:
    task = make_calibration_task("digits-mlp")
    torch.manual_seed(seed)
    model = task.build_model()
    params = list(model.parameters())
    optimizer = CurvatureKalmanVSGD(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    batches = task.true_gradient_batches()
    batches64 = [tuple(t.double() if t.is_floating_point() else t for t in b) for b in batches]
    records = []
    for step in range(1, steps + 1):
        loss = task.loss(model, task.sample_batch(generator, 64), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step not in checkpoints:
            continue
        started = time.perf_counter()
        mean, sd, previous = _posterior_of(optimizer, params)
        # The posterior is over h at the previous point; the Hessian is taken there.
        current = torch.cat([p.detach().reshape(-1) for p in params]).clone()
        step_made = current.to(torch.float64) - previous
        torch.nn.utils.vector_to_parameters(previous.float(), params)
        diagonal = hessian_diagonal(model, batches64)
        along = hessian_vector_product(model, batches64, step_made) / step_made
        torch.nn.utils.vector_to_parameters(current, params)
        moved = step_made.abs() > torch.quantile(step_made.abs(), 0.1)
        record = {
            "step": step,
            "coordinates": int(moved.sum()),
            "diagonal": compare(mean[moved], sd[moved], diagonal[moved]),
            "along_step": compare(mean[moved], sd[moved], along[moved]),
            "diagonal_vs_along_step_spearman": spearman(diagonal[moved], along[moved]),
            "seconds": time.perf_counter() - started,
        }
        records.append(record)
        print(_row(record), flush=True)
    return {"seed": seed, "lr": lr, "steps": steps, "checkpoints": records}


_HEADER = ("| step | target | Pearson | Spearman | coverage 95% | robust scale | median target "
           "| median m_h |\n|---|---|---|---|---|---|---|---|")


def _row(record) -> str:
    lines = []
    for target in ("diagonal", "along_step"):
        c = record[target]
        lines.append(
            f"| {record['step']} | {target} | {c['pearson']:.3f} | {c['spearman']:.3f} | "
            f"{c['coverage_0.95']:.3f} | {c['robust_scale']:.3g} | {c['median_target']:.3g} | "
            f"{c['median_curvature_mean']:.3g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoints", default="30,100,300")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--quick", action="store_true", help="20 steps, one seed, 2 checkpoints")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()
    if args.quick:
        args.steps, args.checkpoints, args.seeds = 20, "10,20", 1
    checks = quadratic_check()
    print("checks of the check (separable quadratic, known diagonal, open loop):",
          json.dumps(checks))
    assert checks["right"]["pearson"] > 0.9 and abs(checks["shuffled"]["pearson"]) < 0.2, checks
    closed_loop = quadratic_check(open_loop=False)["right"]
    print("the same quadratic in closed loop (the optimizer's own steps):",
          json.dumps(closed_loop))
    checkpoints = [int(x) for x in args.checkpoints.split(",")]
    print(_HEADER)
    runs = [run(args.steps, checkpoints, seed, args.lr) for seed in range(args.seeds)]
    report = {
        "command": "python benchmarks/curvature_hessian.py " + " ".join(argv or []),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "checks": checks,
        "quadratic_closed_loop": closed_loop,
        "runs": runs,
        "wall_seconds": time.time() - started,
    }
    print(f"wall time {report['wall_seconds']:.1f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
