"""``vsgd-bayes bench TASK``: compare the optimizers of the registry on small real tasks.

TASK is a key of the task registry (``digits-cnn``, ``digits-vae``, ``char-lm``,
``cartpole-pg``, ``digits-contrastive``, ...) or ``all``. Runs protocol v2
(:mod:`vsgd_bayes.apps.bench.runner`) and prints a Markdown table (chosen learning rate and
grid extensions, final test metric mean ± std over fresh seeds, paired difference to AdamW,
time per step, paired difference to the best peer and a headline line per task);
``--schedule constant|cosine|step`` sets the learning-rate schedule; ``--out DIR`` also
writes ``DIR/<task>_curves.png`` and ``DIR/results.json``; ``--json PATH`` writes the full
results (every run, its curve and timings) to PATH.

Example:
    vsgd-bayes bench digits-cnn --quick --out benchmarks/out
    vsgd-bayes bench all --budget 0.25 --out benchmarks/out   # a quarter of every budget
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

from vsgd_bayes.apps.bench.optimizers import OPTIMIZERS
from vsgd_bayes.apps.bench.schedules import SCHEDULES
from vsgd_bayes.apps.bench.tasks import TASKS
from vsgd_bayes.apps.output import add_output_options, write_results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsgd-bayes bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=[*TASKS, "all"], help="task to run, or all of them")
    parser.add_argument("--quick", action="store_true", help="tiny budgets for CI (same protocol)")
    parser.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="factor on every task's number of steps (default 1: the full budget)",
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="constant",
        help="learning-rate schedule of every row but Schedule-Free's (default constant; "
        "cosine: 5%% linear warm-up then cosine to 0; step: x0.5 at each third)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="final seeds, reported (default 5)")
    parser.add_argument(
        "--selection-seeds",
        type=int,
        default=2,
        help="seeds per learning rate for the selection (default 2)",
    )
    parser.add_argument(
        "--max-extensions",
        type=int,
        default=4,
        help="most learning rates added beyond each grid edge (default 4)",
    )
    parser.add_argument(
        "--optimizers", default=",".join(OPTIMIZERS), help="comma-separated subset of %(default)s"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="override the number of training steps"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    # The models are tiny: a single thread avoids synchronisation overhead and makes the
    # timings comparable on a shared machine.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    add_output_options(parser, "the <task>_curves.png figures")
    parser.add_argument(
        "--no-progress", action="store_true", help="no tqdm bars even on a terminal"
    )
    return parser


def _check_positive(parser: argparse.ArgumentParser, name: str, value: int | None) -> None:
    if value is not None and value < 1:
        parser.error(f"Invalid {name}: {value!r} (must be >= 1)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_positive(parser, "--seeds", args.seeds)
    _check_positive(parser, "--selection-seeds", args.selection_seeds)
    _check_positive(parser, "--steps", args.steps)
    _check_positive(parser, "--threads", args.threads)
    if args.max_extensions < 0:
        parser.error(f"Invalid --max-extensions: {args.max_extensions!r} (must be >= 0)")
    if not (math.isfinite(args.budget) and args.budget > 0):
        parser.error(f"Invalid --budget: {args.budget!r} (must be a finite number > 0)")
    optimizers = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    unknown = [name for name in optimizers if name not in OPTIMIZERS]
    if unknown or not optimizers:
        parser.error(
            f"Invalid --optimizers: {args.optimizers!r} (choose from {','.join(OPTIMIZERS)})"
        )

    import torch

    from vsgd_bayes.apps.bench.runner import format_table, plot_curves, run_task

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tasks = list(TASKS) if args.task == "all" else [args.task]
    progress = False if args.no_progress else None
    started = time.time()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = []
    for name in tasks:
        task_started = time.time()
        result = run_task(
            name,
            optimizers,
            final_seeds=args.seeds,
            selection_seeds=args.selection_seeds,
            quick=args.quick,
            budget=args.budget,
            schedule=args.schedule,
            device=args.device,
            steps=args.steps,
            max_extensions=args.max_extensions,
            progress=progress,
        )
        result["wall_seconds"] = time.time() - task_started
        print(f"[{name}] {result['wall_seconds']:.1f} s")
        results.append(result)
    table = format_table(results)
    print()
    print(table)
    extended = [
        (r["task"], name)
        for r in results
        for name, row in r["summary"].items()
        if row["extensions"]
    ]
    at_edge = [
        f"{r['task']}:{name}"
        for r in results
        for name, row in r["summary"].items()
        if row["at_edge"]
    ]
    rows = sum(len(r["summary"]) for r in results)
    print(
        f"\ngrid extended for {len(extended)} of {rows} task-optimizer pairs"
        + (f"; still at an edge after the cap: {', '.join(at_edge)}" if at_edge else "")
    )
    report = {
        "command": "vsgd-bayes bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "load_average_before": load_before,
        },
        "wall_seconds": time.time() - started,
        "table": table,
        "extended": len(extended),
        "pairs": rows,
        "results": results,
    }
    paths = []
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for result in results:
            png = os.path.join(args.out, f"{result['task']}_curves.png")
            plot_curves(result, png)
            paths.append(png)
    paths += write_results(report, args.out, args.json_path)
    if paths:
        print("\nwrote " + ", ".join(paths))
    print(f"total wall time {report['wall_seconds']:.1f} s")
    # Non-zero when an optimizer diverged for every learning rate of its grid.
    failed = [
        f"{r['task']}:{name}"
        for r in results
        for name, row in r["summary"].items()
        if row.get("lr") is None
    ]
    if failed:
        print("every learning rate diverged for " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
