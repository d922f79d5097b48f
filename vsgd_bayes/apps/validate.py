"""``vsgd-bayes validate``: run the checks of every method in
:data:`vsgd_bayes.validation.METHODS` (VSGD, Kalman VSGD, Factored VSGD, Curvature Kalman
VSGD) and print one table for each.

Usage::

    vsgd-bayes validate [--seed 0] [--cases 50] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time

from vsgd_bayes.validation import METHODS, format_table

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vsgd-bayes validate``: print the tables, return 0 iff all checks pass."""
    parser = argparse.ArgumentParser(
        prog="vsgd-bayes validate",
        description="Check VSGD's closed-form updates against the one-step ELBO and Kalman "
        "VSGD's filter and estimator against exact references (float64).",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--cases", type=int, default=50, help="cases per check (default 50)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"argument --cases: must be >= 1, got {args.cases}")
    if args.seed < 0:
        parser.error(f"argument --seed: must be >= 0, got {args.seed}")
    started = time.perf_counter()
    report: dict[str, list[dict]] = {}
    passed = True
    for method in METHODS.values():
        results = method.run_checks(args.seed, args.cases)
        print(method.title)
        print(format_table(results))
        for r in results:
            print(f"  {r.name}: {r.detail}")
        report[method.json_key] = [r.as_dict() for r in results]
        passed = passed and all(r.passed for r in results)
    elapsed = time.perf_counter() - started
    print(f"{'all checks passed' if passed else 'SOME CHECKS FAILED'} ({elapsed:.1f} s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
