"""Thin script: the small-task benchmark, the same as ``vsgd-bayes bench``.

Example (protocol v2, as benchmarks/RESULTS.md reports; ``--budget 0.5`` halves every budget):
    python benchmarks/tasks.py all --budget 1 --out benchmarks/out/tasks
"""

import sys

from vsgd_bayes.apps.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
