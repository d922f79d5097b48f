"""``vsgd-bayes paper EXPERIMENT --data-dir DIR``: the paper's CIFAR-100 / Tiny ImageNet runs.

EXPERIMENT is one of cifar100-vgg16, cifar100-convmixer, cifar100-resnext18 (batch 256 / 256 /
128, 30k iterations, learning rate halved every 10k) or tinyimagenet-vgg19,
tinyimagenet-convmixer, tinyimagenet-resnext18 (batch 128 / 128 / 64 as in the authors'
configuration files, 60k iterations, halved every 20k). Augmentation: random crop (padding 4)
and horizontal flip. Nothing is downloaded; DIR must hold ``cifar-100-python/`` or
``tiny-imagenet-200/`` in their distributed layouts.

Example:
    vsgd-bayes paper cifar100-vgg16 --data-dir ~/data --optimizer vsgd --device cuda \\
        --checkpoint-dir runs/vgg16-vsgd

Run the same command again after an interruption: it resumes from the checkpoint exactly.
"""

from __future__ import annotations

import argparse
import os
import sys

from vsgd_bayes.apps.bench.optimizers import OPTIMIZERS
from vsgd_bayes.apps.paper.train import DEFAULT_LR, EXPERIMENTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsgd-bayes paper",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("experiment", choices=list(EXPERIMENTS))
    parser.add_argument(
        "--data-dir", required=True, help="folder holding cifar-100-python/ or tiny-imagenet-200/"
    )
    parser.add_argument("--optimizer", default="vsgd", choices=list(OPTIMIZERS))
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"learning rate (default per optimizer: {DEFAULT_LR})",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="decoupled weight decay (L2 for sgd); default 0 as the authors",
    )
    parser.add_argument(
        "--iterations", type=int, default=None, help="total iterations (default: the experiment's)"
    )
    parser.add_argument(
        "--lr-halving-every",
        type=int,
        default=None,
        help="halve the lr every N iterations (default: iterations / 3)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="mini-batch size (default: the experiment's)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=124,
        help="seed of initialisation, batch order and augmentation (default 124, the authors')",
    )
    parser.add_argument(
        "--width-multiplier",
        type=float,
        default=1.0,
        help="scale every channel count (1 = the paper)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=500,
        help="evaluate on the test set every N iterations (default 500)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="write checkpoint.pt (and log.json) here; resume if present",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="checkpoint every N iterations (default: --eval-every)",
    )
    parser.add_argument(
        "--max-iterations",
        type=int,
        default=None,
        help="stop after N iterations in this call (resume later)",
    )
    parser.add_argument(
        "--log", default=None, help="JSON log path (default: CHECKPOINT_DIR/log.json)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar even on a terminal")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    experiment = EXPERIMENTS[args.experiment]
    iterations = experiment.iterations if args.iterations is None else args.iterations
    for name in (
        "iterations",
        "lr_halving_every",
        "batch_size",
        "eval_every",
        "checkpoint_every",
        "max_iterations",
    ):
        value = iterations if name == "iterations" else getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"Invalid --{name.replace('_', '-')}: {value!r} (must be >= 1)")
    for name in ("lr", "weight_decay"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            parser.error(f"Invalid --{name.replace('_', '-')}: {value!r} (must be >= 0)")
    if not args.width_multiplier > 0:
        parser.error(f"Invalid --width-multiplier: {args.width_multiplier!r} (must be > 0)")

    import torch

    from vsgd_bayes.apps.bench.runner import show_progress
    from vsgd_bayes.apps.paper.data import DatasetNotFoundError, load_dataset
    from vsgd_bayes.apps.paper.train import RunConfig, train

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            parser.error(f"Invalid --device: {args.device!r} (CUDA is not available)")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    config = RunConfig(
        experiment=args.experiment,
        optimizer=args.optimizer,
        lr=DEFAULT_LR[args.optimizer] if args.lr is None else args.lr,
        weight_decay=args.weight_decay,
        batch_size=experiment.batch_size if args.batch_size is None else args.batch_size,
        iterations=iterations,
        # The paper halves the rate twice, at 1/3 and 2/3 of the run; keep that for other lengths.
        lr_halving_every=args.lr_halving_every
        or (experiment.lr_halving_every if args.iterations is None else max(1, iterations // 3)),
        seed=args.seed,
        width_multiplier=args.width_multiplier,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every or args.eval_every,
    )
    try:
        data = load_dataset(experiment.dataset, os.path.expanduser(args.data_dir))
    except DatasetNotFoundError as error:
        print(f"vsgd-bayes paper: {error}", file=sys.stderr)
        return 2
    log_path = args.log or (
        os.path.join(args.checkpoint_dir, "log.json") if args.checkpoint_dir else None
    )
    print(
        f"{args.experiment}: {len(data.train_labels)} training / "
        f"{len(data.test_labels)} test images, "
        f"{data.num_classes} classes; {config.as_dict()}"
    )
    try:
        result = train(
            config,
            data,
            device=args.device,
            checkpoint_dir=args.checkpoint_dir,
            log_path=log_path,
            max_iterations=args.max_iterations,
            progress=show_progress() and not args.no_progress,
        )
    except FloatingPointError as error:
        print(f"vsgd-bayes paper: {error}", file=sys.stderr)
        return 1
    last = result["records"][-1] if result["records"] else {}
    state = "finished" if result["finished"] else "stopped (resume with the same command)"
    print(
        f"{state} at iteration {result['iteration']}/{config.iterations}; "
        f"last test accuracy {last.get('test_accuracy', float('nan')):.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
