"""Build the fused CPU kernel once, so that ``VSGD`` takes the fused path on CPU by default.

``python -m vsgd_bayes.torch.build`` (``make setup`` runs it) compiles
``vsgd_bayes/torch/csrc/vsgd_cpu.cpp`` for this machine's instruction set into torch's
extension cache (tens of seconds, once; it needs a C++ compiler and ninja, the ``fused``
extra) and prints where the library is. It exits with status 1 and the compiler's reason if
the build fails; the optimizers then default to the foreach path.
"""

from __future__ import annotations

import sys
import time

from vsgd_bayes.torch._fused import build_cpu_kernel, cpu_kernel_is_built

__all__ = ["build_cpu_kernel", "cpu_kernel_is_built", "main"]


def main(argv: list[str] | None = None) -> int:
    """Build (or find) the kernel; print its path. Returns the exit status."""
    del argv  # no options
    cached = cpu_kernel_is_built()
    start = time.perf_counter()
    try:
        path = build_cpu_kernel()
    except RuntimeError as error:
        print(f"vsgd_bayes: {error}", file=sys.stderr)
        print("vsgd_bayes: VSGD will default to the foreach path on CPU", file=sys.stderr)
        return 1
    what = "already built" if cached else f"built in {time.perf_counter() - start:.1f} s"
    print(f"fused CPU kernel {what}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
