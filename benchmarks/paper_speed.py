"""Training speed of one of the paper's setups: iterations per second, VSGD versus AdamW.

Runs a short training (default 300 iterations after 30 warm-up ones) of EXPERIMENT's model at
its batch size on synthetic images of the right shape (random uint8 pixels and labels, held
on the device), with the same loop as ``vsgd-bayes paper`` (augmentation, normalisation,
forward, backward, optimizer step, scheduler step), once per optimizer, and writes JSON.

Example (the lead's GPU check; < 2 minutes on an H100):
    python benchmarks/paper_speed.py --device cuda --json benchmarks/out/paper_speed.json
Tiny CPU run (what the tests do):
    python benchmarks/paper_speed.py --device cpu --iterations 3 --warmup 1 \
        --width-multiplier 0.0625 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

from vsgd_bayes.apps.bench.optimizers import OPTIMIZERS, make_optimizer
from vsgd_bayes.apps.paper.data import augment, normalize
from vsgd_bayes.apps.paper.models import build_model
from vsgd_bayes.apps.paper.train import DEFAULT_LR, EXPERIMENTS

SHAPES = {"cifar100": (32, 100), "tinyimagenet": (64, 200)}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    experiment: str,
    optimizer: str,
    iterations: int,
    warmup: int,
    device: str,
    batch_size: int | None = None,
    width_multiplier: float = 1.0,
    seed: int = 0,
) -> dict:
    """Iterations per second of ``optimizer`` on ``experiment``, after ``warmup`` iterations."""
    device = torch.device(device)
    setup = EXPERIMENTS[experiment]
    size, classes = SHAPES[setup.dataset]
    batch_size = batch_size or setup.batch_size
    generator = torch.Generator().manual_seed(seed)
    # Enough distinct synthetic images for several batches; their content does not matter for speed.
    pool = 4 * batch_size
    images = torch.randint(
        0, 256, (pool, 3, size, size), dtype=torch.uint8, generator=generator
    ).to(device)
    labels = torch.randint(0, classes, (pool,), generator=generator).to(device)
    torch.manual_seed(seed)
    model = build_model(setup.model, classes, width_multiplier).to(device)
    opt = make_optimizer(optimizer, model.parameters(), lr=DEFAULT_LR[optimizer])
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=setup.lr_halving_every, gamma=0.5)
    model.train()
    start = None
    for iteration in range(warmup + iterations):
        if iteration == warmup:
            _synchronize(device)
            start = time.perf_counter()
        index = torch.randint(0, pool, (batch_size,), generator=generator).to(device)
        batch = normalize(augment(images[index], generator), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        loss = F.cross_entropy(model(batch), labels[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        scheduler.step()
    _synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "experiment": experiment,
        "optimizer": optimizer,
        "iterations": iterations,
        "warmup": warmup,
        "batch_size": batch_size,
        "width_multiplier": width_multiplier,
        "seconds": seconds,
        "iterations_per_second": iterations / seconds,
        "final_loss": loss.item(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="cifar100-resnext18", choices=list(EXPERIMENTS))
    parser.add_argument(
        "--optimizers",
        default="vsgd,adamw",
        help=f"comma-separated subset of {','.join(OPTIMIZERS)}",
    )
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--width-multiplier", type=float, default=1.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", dest="json_path", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        parser.error(
            f"Invalid --iterations/--warmup: {args.iterations!r}/{args.warmup!r} (need >= 1 / >= 0)"
        )
    optimizers = [name for name in args.optimizers.split(",") if name]
    for name in optimizers:
        if name not in OPTIMIZERS:
            parser.error(f"Invalid --optimizers: {name!r} (choose from {','.join(OPTIMIZERS)})")
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    device_name = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    results = [
        measure(
            args.experiment,
            name,
            args.iterations,
            args.warmup,
            args.device,
            args.batch_size,
            args.width_multiplier,
        )
        for name in optimizers
    ]
    print(
        f"{args.experiment} on {args.device} ({device_name}), batch {results[0]['batch_size']}, "
        f"{results[0]['parameters']} parameters, {args.iterations} timed iterations"
    )
    print("| optimizer | iterations / s | ms / iteration |")
    print("|---|---|---|")
    for row in results:
        print(
            f"| {row['optimizer']} | {row['iterations_per_second']:.2f} "
            f"| {1e3 / row['iterations_per_second']:.2f} |"
        )
    if args.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w") as stream:
            json.dump(
                {
                    "device": args.device,
                    "device_name": device_name,
                    "torch": torch.__version__,
                    "command": " ".join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
                    "results": results,
                },
                stream,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
