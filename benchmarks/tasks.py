"""Thin script: the small-task benchmark, the same as ``vsgd-bayes bench``.

Example (what benchmarks/RESULTS.md reports):
    python benchmarks/tasks.py all --seeds 3 --device cuda --out benchmarks/out/tasks
"""

import sys

from vsgd_bayes.apps.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
