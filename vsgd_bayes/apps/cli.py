"""Command-line entry point ``vsgd-bayes`` (also ``python -m vsgd_bayes``).

Each subcommand lives in its own module with its own argument parser and a
``main(argv) -> int``; this dispatcher imports it only when asked, so that e.g. ``validate``
needs JAX but not torch and ``bench`` needs torch but not JAX.
"""

from __future__ import annotations

import importlib
import sys

#: subcommand -> (module, one-line help)
COMMANDS = {
    "validate": ("vsgd_bayes.apps.validate", "check the closed-form updates against the ELBO"),
    "demo": (
        "vsgd_bayes.apps.demo",
        "validation plus a short training demo on scikit-learn digits",
    ),
    "bench": ("vsgd_bayes.apps.bench.cli", "compare VSGD with AdamW and SGD on small real tasks"),
    "paper": ("vsgd_bayes.apps.paper.cli", "run the paper's CIFAR-100 / Tiny ImageNet setups"),
    "calibrate": ("vsgd_bayes.apps.calibrate.cli", "is the gradient posterior calibrated?"),
}


def _usage() -> str:
    lines = ["usage: vsgd-bayes COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'vsgd-bayes COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vsgd-bayes: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
