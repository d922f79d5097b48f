"""Build the fused CPU kernels once, so that the optimizers take their fused paths on CPU by
default.

``python -m vsgd_bayes.torch.build`` (``make setup`` runs it) compiles
``vsgd_bayes/torch/csrc/vsgd_cpu.cpp`` (``VSGD``) and ``csrc/curvature_cpu.cpp``
(``CurvatureKalmanVSGD``) for this machine's instruction set into torch's extension cache
(tens of seconds each, once; it needs a C++ compiler and ninja, the ``fused`` extra) and
prints where the libraries are. It exits with status 1 and the compiler's reason if a build
fails; that optimizer then defaults to the foreach path (the other kernel is still built).
"""

from __future__ import annotations

import sys
import time

from vsgd_bayes.torch import _curvature_fused
from vsgd_bayes.torch._fused import build_cpu_kernel, cpu_kernel_is_built

__all__ = ["build_cpu_kernel", "cpu_kernel_is_built", "main"]


def _kernels():
    """(what, the optimizer, is-built check, build function) in build order, looked up at
    each call (so that they can be replaced, e.g. in tests)."""
    return (
        ("fused CPU kernel", "VSGD", cpu_kernel_is_built, build_cpu_kernel),
        ("fused CurvatureKalmanVSGD CPU kernel", "CurvatureKalmanVSGD",
         _curvature_fused.cpu_kernel_is_built, _curvature_fused.build_cpu_kernel),
    )


def main(argv: list[str] | None = None) -> int:
    """Build (or find) every kernel; print their paths. Returns the exit status (1 if any
    build failed)."""
    del argv  # no options
    status = 0
    for what, optimizer, is_built, build in _kernels():
        cached = is_built()
        start = time.perf_counter()
        try:
            path = build()
        except RuntimeError as error:
            print(f"vsgd_bayes: {error}", file=sys.stderr)
            print(f"vsgd_bayes: {optimizer} will default to the foreach path on CPU",
                  file=sys.stderr)
            status = 1
            continue
        state = "already built" if cached else f"built in {time.perf_counter() - start:.1f} s"
        print(f"{what} {state}: {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
