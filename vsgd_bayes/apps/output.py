"""One output convention for every ``vsgd-bayes`` command that writes results.

``--json FILE`` writes the full results to FILE; ``--out DIR`` writes them to
``DIR/results.json`` together with the command's figures and tables. Both may be given.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

__all__ = ["add_output_options", "write_results"]


def add_output_options(parser: argparse.ArgumentParser, out_contents: str) -> None:
    """Add ``--json FILE`` (dest ``json_path``) and ``--out DIR`` to ``parser``.

    Args:
        out_contents: what ``--out`` writes besides ``results.json``, for the help text.
    """
    parser.add_argument(
        "--json",
        dest="json_path",
        default=None,
        metavar="FILE",
        help="write the full results to this JSON file",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help=f"directory for results.json and {out_contents}",
    )


def write_results(results: dict[str, Any], out: str | None, json_path: str | None) -> list[str]:
    """Write ``results`` as JSON to ``out/results.json`` and to ``json_path`` (each if given),
    creating their directories; returns the paths written."""
    paths = []
    if out:
        paths.append(os.path.join(out, "results.json"))
    if json_path:
        paths.append(json_path)
    for path in paths:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as handle:
            json.dump(results, handle, indent=1)
    return paths
