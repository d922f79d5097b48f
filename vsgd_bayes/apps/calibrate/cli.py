"""``vsgd-bayes calibrate TASK``: is the gradient posterior calibrated on a real network?

TASK is ``digits-mlp``, ``digits-cnn``, ``char-lm`` or ``all``. For every optimizer and seed,
trains the task's model and, at log-spaced checkpoints, compares the optimizer's gradient
posterior with the exact full-batch gradient g* and with M fresh mini-batch gradients (noise,
drift and posterior calibration, estimation error, beta_1). Prints a Markdown table (mean over
seeds); ``--json FILE`` writes the full results to FILE; ``--out DIR`` writes them to
``DIR/results.json``, with ``DIR/table.md`` and per task ``DIR/<task>_reliability.png`` and
``DIR/<task>_metrics.png`` (the same convention as ``vsgd-bayes bench``).

Example:
    vsgd-bayes calibrate digits-mlp --quick --seeds 2 --out /tmp/calibration
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict, replace

from vsgd_bayes.apps.calibrate.optimizers import CALIBRATED_OPTIMIZERS
from vsgd_bayes.apps.calibrate.tasks import CALIBRATION_TASKS
from vsgd_bayes.apps.output import add_output_options, write_results

_NAMES = tuple(row.name for row in CALIBRATED_OPTIMIZERS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsgd-bayes calibrate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=[*CALIBRATION_TASKS, "all"], help="task, or all of them")
    parser.add_argument("--quick", action="store_true", help="tiny settings for CI (seconds)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--optimizers", default=",".join(_NAMES),
                        help="comma-separated subset of %(default)s")
    parser.add_argument("--steps", type=int, default=None, help="override the training steps")
    parser.add_argument("--checkpoints", type=int, default=None, help="override (>= 2)")
    parser.add_argument("--minibatches", type=int, default=None,
                        help="override M, fresh mini-batches per checkpoint (>= 2)")
    parser.add_argument("--drift-steps", type=int, default=None, help="override K (>= 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    add_output_options(parser, "table.md and the PNG figures")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    minimum = {"seeds": 1, "steps": 2, "checkpoints": 2, "minibatches": 2, "drift_steps": 1,
               "threads": 1}
    for name, least in minimum.items():
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"Invalid --{name.replace('_', '-')}: {value!r} (must be >= {least})")
    names = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    if not names or any(name not in _NAMES for name in names):
        parser.error(f"Invalid --optimizers: {args.optimizers!r} (choose from {','.join(_NAMES)})")

    import torch

    from vsgd_bayes.apps.bench.runner import show_progress
    from vsgd_bayes.apps.calibrate import report
    from vsgd_bayes.apps.calibrate.harvest import calibrate_run
    from vsgd_bayes.apps.calibrate.optimizers import optimizer_row
    from vsgd_bayes.apps.calibrate.tasks import make_calibration_task

    torch.set_num_threads(args.threads)
    progress = False if args.no_progress else show_progress()
    started = time.time()
    tasks = list(CALIBRATION_TASKS) if args.task == "all" else [args.task]
    results: dict = {}
    settings_used: dict = {}
    for task_name in tasks:
        cls = CALIBRATION_TASKS[task_name]
        task = make_calibration_task(task_name, **(cls.quick_overrides if args.quick else {}))
        settings = cls.quick_settings if args.quick else cls.settings
        overrides = {key: getattr(args, key) for key in
                     ("steps", "checkpoints", "minibatches", "drift_steps")
                     if getattr(args, key) is not None}
        settings = replace(settings, **overrides)
        settings_used[task_name] = {
            **asdict(settings),
            "true_gradient": (f"subset of {task.true_gradient_windows} windows"
                              if task.true_gradient_is_subset else "whole training split"),
        }
        results[task_name] = {}
        for name in names:
            row = optimizer_row(name)
            runs = []
            for seed in range(args.seeds):
                run = calibrate_run(task, row, seed, settings, progress=progress)
                runs.append(run)
                print(f"[{task_name}] {row.label:<24} seed={seed} lr={run['lr']:g} "
                      f"{run['wall_seconds']:.1f} s{' DIVERGED' if run['diverged'] else ''}",
                      flush=True)
            results[task_name][name] = {
                "label": row.label, "lr": runs[0]["lr"],
                "has_posterior": row.posterior is not None,
                "aggregate": report.aggregate(runs), "runs": runs,
            }
    table = report.format_table(results)
    print()
    print(table)
    wall = time.time() - started
    output = {
        "command": "vsgd-bayes calibrate " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "platform": platform.platform(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
        },
        "wall_seconds": wall,
        "seeds": args.seeds,
        "settings": settings_used,
        "table": table,
        "results": results,
    }
    written = write_results(output, args.out, args.json_path)
    if args.out:
        with open(os.path.join(args.out, "table.md"), "w") as handle:
            handle.write(table + "\n")
        for task_name, by_optimizer in results.items():
            report.plot_reliability(task_name, by_optimizer,
                                    os.path.join(args.out, f"{task_name}_reliability.png"))
            report.plot_metrics(task_name, by_optimizer,
                                os.path.join(args.out, f"{task_name}_metrics.png"))
        written += [os.path.join(args.out, "table.md"), "the PNG figures"]
    if written:
        print("\nwrote " + ", ".join(written))
    print(f"total wall time {wall:.1f} s")
    diverged = [f"{t}:{n}" for t, by in results.items() for n, e in by.items()
                if any(run["diverged"] for run in e["runs"])]
    if diverged:
        print("diverged: " + ", ".join(diverged), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
