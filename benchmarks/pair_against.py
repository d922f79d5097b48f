"""Pair one optimizer against any other in ``vsgd-bayes bench`` results (the runner pairs
every row with AdamW and the best peer only).

For each results.json: the paired difference ``optimizer − reference`` over the final seeds
(the same seeds for every row, so each pair shares data order and initialisation), at the
end and at the best-validation checkpoint, with its standard error
(``vsgd_bayes.apps.bench.runner.paired_difference``), and the same in standard errors with the
sign turned so that + means the optimizer is better.

Usage::

    python benchmarks/pair_against.py --optimizer factored-vsgd --reference vsgd \\
        benchmarks/tasks_cpu_v2/*_factored/results.json --json pairs.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vsgd_bayes.apps.bench.runner import paired_difference  # noqa: E402


def pair(result: dict, optimizer: str, reference: str) -> dict:
    """The paired differences of ``optimizer`` against ``reference`` in one task's result."""
    summary = result["summary"]
    for name in (optimizer, reference):
        if name not in summary:
            raise ValueError(f"Invalid optimizer: {name!r} is not in the results of "
                             f"{result['task']} (rows: {sorted(summary)})")
    sign = 1.0 if result["higher_is_better"] else -1.0
    row = {"task": result["task"], "metric": result["metric"],
           "higher_is_better": result["higher_is_better"]}
    for key, field in (("end", "test_metrics"), ("at_best_val", "test_metrics_at_best_val")):
        if field not in summary[optimizer] or field not in summary[reference]:
            row[key] = None  # a task without checkpoints (cartpole-pg) has no best-val column
            continue
        paired = paired_difference(summary[optimizer][field], summary[reference][field])
        error = paired["standard_error"]
        paired["better_in_standard_errors"] = (
            sign * paired["mean"] / error if error and math.isfinite(error) else math.nan)
        row[key] = paired
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results.json files of vsgd-bayes bench")
    parser.add_argument("--optimizer", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--json", help="write the pairs here")
    args = parser.parse_args(argv)
    rows = []
    for path in args.results:
        with open(path) as f:
            for result in json.load(f)["results"]:
                rows.append(pair(result, args.optimizer, args.reference))
    print(f"{args.optimizer} − {args.reference}, paired over the final seeds (+ SE = "
          f"{args.optimizer} better)")
    print("| task | metric | end: mean ± SE | end, SE | at best val: mean ± SE | at best val, SE |")
    print("|---|---|---|---|---|---|")
    def cells(paired):
        if paired is None:
            return "– | –"
        return (f"{paired['mean']:+.4f} ± {paired['standard_error']:.4f} | "
                f"{paired['better_in_standard_errors']:+.1f}")

    for row in rows:
        print(f"| {row['task']} | {row['metric']} {'↑' if row['higher_is_better'] else '↓'} | "
              f"{cells(row['end'])} | {cells(row['at_best_val'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"optimizer": args.optimizer, "reference": args.reference, "pairs": rows},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
