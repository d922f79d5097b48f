"""``vsgd-bayes bench TASK``: compare VSGD, ConstantVSGD, AdamW and SGD-momentum.

TASK is ``digits-cnn``, ``digits-vae``, ``char-lm`` or ``all``. Prints a Markdown table
(chosen learning rate, final test metric mean ± std over seeds, time per step); ``--out DIR``
also writes ``DIR/<task>_curves.png`` and ``DIR/results.json``; ``--json PATH`` writes the
full results (every run, its curve and timings) to PATH.

Example:
    vsgd-bayes bench digits-cnn --quick --seeds 2 --out benchmarks/out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import List, Optional

from vsgd_bayes.apps.bench.optimizers import OPTIMIZERS
from vsgd_bayes.apps.bench.tasks import TASKS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsgd-bayes bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=[*TASKS, "all"], help="task to run, or all of them")
    parser.add_argument("--quick", action="store_true", help="tiny settings for CI (seconds)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per chosen setting (default 3)")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated subset of %(default)s")
    parser.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    # The models are tiny: a single thread avoids synchronisation overhead and makes the
    # timings comparable on a shared machine.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", dest="json_path", default=None, help="write the full results to this JSON file")
    parser.add_argument("--out", default=None, help="directory for curves PNG and results.json")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars even on a terminal")
    return parser


def _check_positive(parser: argparse.ArgumentParser, name: str, value: Optional[int]) -> None:
    if value is not None and value < 1:
        parser.error(f"Invalid {name}: {value!r} (must be >= 1)")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_positive(parser, "--seeds", args.seeds)
    _check_positive(parser, "--steps", args.steps)
    _check_positive(parser, "--threads", args.threads)
    optimizers = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    unknown = [name for name in optimizers if name not in OPTIMIZERS]
    if unknown or not optimizers:
        parser.error(f"Invalid --optimizers: {args.optimizers!r} (choose from {','.join(OPTIMIZERS)})")

    import torch

    from vsgd_bayes.apps.bench.runner import format_table, plot_curves, run_task

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tasks = list(TASKS) if args.task == "all" else [args.task]
    progress = False if args.no_progress else None
    started = time.time()
    results = []
    for name in tasks:
        results.append(
            run_task(name, optimizers, seeds=args.seeds, quick=args.quick, device=args.device,
                     steps=args.steps, progress=progress)
        )
    table = format_table(results)
    print()
    print(table)
    report = {
        "command": "vsgd-bayes bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "wall_seconds": time.time() - started,
        "table": table,
        "results": results,
    }
    paths = []
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for result in results:
            png = os.path.join(args.out, f"{result['task']}_curves.png")
            plot_curves(result, png)
            paths.append(png)
        paths.append(os.path.join(args.out, "results.json"))
    if args.json_path:
        paths.append(args.json_path)
    for path in paths:
        if path.endswith(".json"):
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            with open(path, "w") as handle:
                json.dump(report, handle, indent=1)
    if paths:
        print("\nwrote " + ", ".join(paths))
    print(f"total wall time {report['wall_seconds']:.1f} s")
    # Non-zero when an optimizer diverged for every learning rate of its grid.
    failed = [f"{r['task']}:{name}" for r in results for name, row in r["summary"].items() if row.get("lr") is None]
    if failed:
        print("every learning rate diverged for " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
