"""``vsgd-bayes demo`` (``make demo``): the main job.

1. Runs the validation of the closed-form updates against the ELBO
   (:func:`vsgd_bayes.apps.validate.main`, which prints its table).
2. Trains the small CNN of the ``digits-cnn`` benchmark on scikit-learn's handwritten digits
   with VSGD and with AdamW (same budget, 600 steps for each of 3 seeds, learning rates chosen
   on validation by the benchmark) and prints the final test accuracy (mean ± std over seeds),
   test loss and wall time.

Returns non-zero if a validation check fails or a training run diverges (non-finite loss, or
a final test loss no better than the untrained model's). ``--quick`` shrinks both parts for CI.

Example:
    python -m vsgd_bayes demo --quick
"""

from __future__ import annotations

import argparse
import math
import time

#: Learning rates of the demo: the ones the digits-cnn benchmark chose on validation
#: (benchmarks/RESULTS.md).
DEMO_LR = {"vsgd": 3e-3, "adamw": 1e-2}
STEPS, QUICK_STEPS = 600, 60
SEEDS = 3
VALIDATION_CASES_QUICK = 5


def train_demo(steps: int, seeds: int = 1, threads: int | None = 1) -> list[dict]:
    """Train the digits CNN with VSGD and AdamW, ``steps`` steps per seed; one row per optimizer.

    Each row has the optimizer's ``label`` and ``lr``, the per-seed final test accuracies and
    losses, their means, the total wall time, the mean time per step and ``diverged``.
    """
    import statistics

    import numpy as np
    import torch

    from vsgd_bayes.apps.bench.optimizers import LABELS
    from vsgd_bayes.apps.bench.runner import train_once
    from vsgd_bayes.apps.bench.tasks import DigitsCNN, TaskSettings

    if threads is not None:
        # The CNN is tiny: one thread is fastest and its timings are the least noisy.
        torch.set_num_threads(threads)
    task = DigitsCNN("cpu")
    settings = TaskSettings(steps=steps, batch_size=64, eval_every=steps)
    torch.manual_seed(0)
    untrained_loss = task.evaluate(task.build_model().eval(), "test")[1]
    rows = []
    for name, lr in DEMO_LR.items():
        started = time.perf_counter()
        runs = [train_once(task, name, lr, seed, settings) for seed in range(seeds)]
        accuracies = [run["test_metric"] for run in runs]
        losses = [run["test_loss"] for run in runs]
        rows.append(
            {
                "label": LABELS[name],
                "lr": lr,
                "test_accuracies": accuracies,
                "test_losses": losses,
                # numpy, not statistics: a diverged run's NaN must propagate, not raise.
                "test_accuracy": float(np.mean(accuracies)),
                "test_accuracy_std": float(np.std(accuracies, ddof=1)) if seeds > 1 else 0.0,
                "test_loss": float(np.mean(losses)),
                "seconds": time.perf_counter() - started,
                "ms_per_step": statistics.fmean(run["ms_per_step"] for run in runs),
                # Diverged: a non-finite loss, or no better than the untrained model on test.
                "diverged": any(
                    run["diverged"]
                    or not (math.isfinite(run["test_loss"]) and run["test_loss"] < untrained_loss)
                    for run in runs
                ),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vsgd-bayes demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings for CI")
    parser.add_argument("--skip-validation", action="store_true", help="only the training demo")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per optimizer (default {STEPS}, quick {QUICK_STEPS})",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help=f"seeds per optimizer (default {SEEDS}, quick 1)"
    )
    args = parser.parse_args(argv)
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    seeds = args.seeds or (1 if args.quick else SEEDS)
    if steps < 1 or seeds < 1:
        parser.error(f"Invalid --steps/--seeds: {steps!r}/{seeds!r} (must be >= 1)")

    status = 0
    if not args.skip_validation:
        print("== 1. Validation: closed-form updates against the ELBO ==")
        # Imported lazily: it needs JAX, the training part needs torch.
        from vsgd_bayes.apps import validate

        validation_args = ["--cases", str(VALIDATION_CASES_QUICK)] if args.quick else []
        if validate.main(validation_args) != 0:
            print("validation FAILED")
            status = 1
        print()

    print(
        f"== 2. Training: small CNN on scikit-learn digits, {steps} steps, batch 64, "
        f"seeds 0..{seeds - 1} =="
    )
    rows = train_demo(steps, seeds)
    print(
        f"{'optimizer':<10} {'lr':>7} {'test accuracy':>18} {'test loss':>10} "
        f"{'time (s)':>9} {'ms/step':>8}"
    )
    for row in rows:
        accuracy = f"{row['test_accuracy']:.4f} ± {row['test_accuracy_std']:.4f}"
        print(
            f"{row['label']:<10} {row['lr']:>7g} {accuracy:>18} {row['test_loss']:>10.4f} "
            f"{row['seconds']:>9.1f} {row['ms_per_step']:>8.2f}"
            f"{'  DIVERGED' if row['diverged'] else ''}"
        )
    if any(row["diverged"] for row in rows):
        status = 1
    print("demo " + ("passed" if status == 0 else "FAILED"))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
