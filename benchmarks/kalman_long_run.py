"""Why KalmanVSGD blows up on long digits-vae runs: a weight marching at lr per step.

At the benchmark's budget 16 (24,000 steps) every KalmanVSGD rate from 0.001 up ended with a
validation -ELBO of 28 to 1e15 nats (`benchmarks/tasks_cpu_v2/parts/digits-vae_l16.log`),
though 0.001 was its best rate at 1,500 steps. This script retraces the run with seed 1 at
lr 0.001 beside AdamW at its chosen rate, printing every 3,000 steps the validation metric
and the largest |weight|, then, for KalmanVSGD, the state of the largest weight's coordinate:
its gain k, noise variance r, posterior variance k (1 - k) S = k r, its normalised direction
mu / sqrt(mu^2 + k r) [kalman-variances, parameter-step], and, for comparison, mu / sqrt(mu^2
+ r), the direction if the step were normalised by one gradient's noise (as Adam's is).

With ``--step-variance predictive`` (or ``posterior,predictive``) KalmanVSGD runs with that
``step_variance`` (the fix of issue 19, derivations/11_kalman_vsgd.md "Long runs": the
predictive variance S of the next gradient in the step's denominator instead of the
posterior variance S k (1 - k)); each run also reports its best validation -ELBO and the
last one's distance from it.

    python benchmarks/kalman_long_run.py [--steps 24000] [--step-variance posterior,predictive]
        [--json benchmarks/kalman_long_run.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from vsgd_bayes.apps.bench.optimizers import make_optimizer
from vsgd_bayes.apps.bench.tasks import make_task
from vsgd_bayes.torch._kalman_single_tensor import normalized_direction


def run(name: str, lr: float, steps: int, seed: int, every: int, **options) -> dict:
    task = make_task("digits-vae")
    torch.manual_seed(seed)
    model = task.build_model()
    optimizer = make_optimizer(name, model.parameters(), lr=lr, **options)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for step in range(1, steps + 1):
        loss = task.loss(model, task.sample_batch(generator, 64), generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0:
            model.eval()
            val = task.evaluate(model, "val")[0]
            model.train()
            largest = max(p.abs().max().item() for p in model.parameters())
            rows.append({"step": step, "val_neg_elbo": val, "max_abs_weight": largest})
            print(
                f"{name:<12} {options or ''} lr={lr:<8g} step {step:6d}  val -ELBO {val:12.4f}  "
                f"max |w| {largest:7.3f}",
                flush=True,
            )
    best = min(row["val_neg_elbo"] for row in rows)
    result = {"optimizer": name, "options": options, "lr": lr, "seed": seed, "curve": rows,
              "best_val_neg_elbo": best, "last_minus_best": rows[-1]["val_neg_elbo"] - best}
    print(f"{name:<12} {options or ''} best val -ELBO {best:.4f}, last - best "
          f"{result['last_minus_best']:.4f}", flush=True)
    if name == "kalman-vsgd":
        pname, param = max(model.named_parameters(), key=lambda item: item[1].abs().max().item())
        index = param.abs().flatten().argmax().item()
        posterior = optimizer.gradient_posterior(param)
        # "direction": the posterior step's; "direction_if_normalised_by_noise": close to the
        # predictive step's (S = r / (1 - k) ~ r at these gains)
        predictive = options.get("step_variance") == "predictive"
        mean = posterior.mean.flatten()[index].item()
        noise = posterior.noise_variance.flatten()[index].item()
        gain = 1.0 - posterior.momentum.flatten()[index].item()
        direction = (
            normalized_direction(
                posterior.mean, posterior.noise_variance * (1.0 - posterior.momentum), 0.0
            )
            .flatten()[index]
            .item()
        )
        result["largest_weight"] = {
            "parameter": pname,
            "index": index,
            "weight": param.flatten()[index].item(),
            "gradient_mean": mean,
            "noise_variance": noise,
            "gain": gain,
            "posterior_variance": gain * noise,
            "direction": direction,
            "direction_if_normalised_by_noise": mean / math.sqrt(mean * mean + noise),
            "run_step_variance": "predictive" if predictive else "posterior",
            "coordinates_above_4": {
                n: int((p.abs() > 4).sum())
                for n, p in model.named_parameters()
                if (p.abs() > 4).any()
            },
        }
        print(json.dumps(result["largest_weight"], indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--step-variance", default="posterior",
                        help="comma-separated KalmanVSGD step_variance values to run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    every = max(1, args.steps // 8)
    # KalmanVSGD at its best 1,500-step rate; AdamW at its budget-16 chosen rate.
    results = [
        run("kalman-vsgd", 1e-3, args.steps, args.seed, every, step_variance=variance)
        for variance in args.step_variance.split(",")
    ]
    results.append(run("adamw", 1e-3, args.steps, args.seed, every))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"command": "python benchmarks/kalman_long_run.py " + " ".join(
                argv if argv is not None else sys.argv[1:]), "steps": args.steps,
                "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
