"""Merge ``vsgd-bayes bench`` results of one task run in parts (disjoint ``--optimizers``).

Each run of the protocol is seeded on its own, so running the optimizers in separate
processes (e.g. to keep each under a time limit on a shared machine) gives the same runs as
one process; this script joins the parts, recomputes the paired differences to AdamW and to
the best peer (chosen again on validation over the joined rows) and the headline lines, and
writes the table, ``table.md``, ``<task>_curves.png`` and ``results.json`` into ``--out``.
Parts must share their settings, the schedule included.

Example:
    python benchmarks/merge_bench.py part1.json part2.json --out benchmarks/tasks_cpu_v2/cartpole-pg
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peer_ablation import register_rows  # noqa: E402

from vsgd_bayes.apps.bench.runner import format_table, merge_results, plot_curves  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="+", help="results.json files of `vsgd-bayes bench`")
    parser.add_argument("--out", required=True, help="directory for the merged results")
    args = parser.parse_args(argv)
    register_rows()  # parts written by benchmarks/peer_ablation.py name its rows
    reports = []
    for path in args.parts:
        with open(path) as handle:
            reports.append(json.load(handle))
    tasks = sorted({result["task"] for report in reports for result in report["results"]})
    merged = [
        merge_results([r for report in reports for r in report["results"] if r["task"] == task])
        for task in tasks
    ]
    table = format_table(merged)
    os.makedirs(args.out, exist_ok=True)
    for result in merged:
        plot_curves(result, os.path.join(args.out, f"{result['task']}_curves.png"))
    report = {
        "commands": [report["command"] for report in reports],
        "machine": [report.get("machine") for report in reports],
        "wall_seconds_per_part": [report["wall_seconds"] for report in reports],
        "table": table,
        "extended": sum(bool(row["extensions"]) for r in merged for row in r["summary"].values()),
        "pairs": sum(len(r["summary"]) for r in merged),
        "results": merged,
    }
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    with open(os.path.join(args.out, "table.md"), "w") as handle:
        handle.write(table + "\n")
    print(table)
    print(
        f"\ngrid extended for {report['extended']} of {report['pairs']} task-optimizer pairs; "
        f"parts took {', '.join(f'{s:.1f}' for s in report['wall_seconds_per_part'])} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
