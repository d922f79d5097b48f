"""Where Schedule-Free AdamW leads: its ingredients switched off one at a time, under the
same protocol v2 as ``vsgd-bayes bench`` (issue 23's ablation).

Rows (added to the bench registry in this process only, on SF-AdamW's own grid):

* ``sf-adamw``: as in the registry (warm-up, evaluated at the averaged iterate x);
* ``sf-adamw-at-y``: never switched to ``.eval()``: evaluated and checkpointed at y, the point
  where its gradients are taken (the averaging switched off at evaluation);
* ``sf-adamw-no-warmup``: the protocol's constant rate instead of its warm-up;
* ``adamw-warmup``: AdamW with SF-AdamW's warm-up (does the warm-up alone carry the lead?);
* ``vsgd-warmup``: VSGD with the same warm-up (does it carry over to VSGD?);
* ``kalman-vsgd-predictive``: KalmanVSGD with ``step_variance="predictive"`` (issue 19's fix
  of its long-run blow-up; not an ablation of a peer, but measured by the same protocol);
* ``adamw``, ``vsgd``: the references.

Usage::

    python benchmarks/peer_ablation.py digits-vae \\
        --out benchmarks/tasks_cpu_v2/digits-vae_sf_ablation
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vsgd_bayes.apps.bench import optimizers as registry  # noqa: E402
from vsgd_bayes.apps.bench.runner import format_table, headline, run_task  # noqa: E402


def _train_mode_only(optimizer: torch.optim.Optimizer, training: bool) -> None:
    optimizer.train()  # steps need train mode; evaluation stays at y


def _kalman_predictive(params, lr, weight_decay, run=None, **options):
    options.setdefault("step_variance", "predictive")
    return registry.OPTIMIZERS["kalman-vsgd"].build(params, lr, weight_decay, run, **options)


def ablation_rows() -> dict[str, registry.OptimizerSpec]:
    sf = registry.OPTIMIZERS["sf-adamw"]
    adamw = registry.OPTIMIZERS["adamw"]
    return {
        "sf-adamw-at-y": dataclasses.replace(sf, label="SF-AdamW at y", set_mode=_train_mode_only),
        "sf-adamw-no-warmup": dataclasses.replace(sf, label="SF-AdamW no warm-up", schedule=None),
        "adamw-warmup": dataclasses.replace(adamw, label="AdamW + warm-up", schedule="warmup"),
        "vsgd-warmup": dataclasses.replace(registry.OPTIMIZERS["vsgd"], label="VSGD + warm-up",
                                           schedule="warmup"),
        "kalman-vsgd-predictive": dataclasses.replace(
            registry.OPTIMIZERS["kalman-vsgd"], label="KalmanVSGD predictive",
            build=_kalman_predictive),
    }


def register_rows() -> dict[str, registry.OptimizerSpec]:
    """Add the rows to the bench registry of this process (their labels and families too)."""
    rows = ablation_rows()
    registry.OPTIMIZERS.update(rows)
    registry.LABELS.update({name: spec.label for name, spec in rows.items()})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", help="comma-separated subset of the rows (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = register_rows()
    names = ["sf-adamw", *rows, "adamw", "vsgd"]
    if args.rows:
        names = [name for name in args.rows.split(",") if name]
        unknown = sorted(set(names) - set(registry.OPTIMIZERS))
        if unknown:
            raise SystemExit(
                f"Invalid rows: {unknown} (must be among {sorted(registry.OPTIMIZERS)})"
            )
    started = time.time()
    result = run_task(args.task, names, quick=args.quick, budget=args.budget, progress=False)
    result["wall_seconds"] = time.time() - started
    table = format_table([result])
    print(table)
    print(headline(result))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"command": " ".join(["python benchmarks/peer_ablation.py", *sys.argv[1:]]),
                   "wall_seconds": result["wall_seconds"], "table": table,
                   "results": [result]}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
