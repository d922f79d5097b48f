"""The Triton kernel of the fused CUDA path, run by Triton's interpreter on CPU tensors.

Run as a script by ``tests/test_triton_interpreter.py`` (a subprocess, because
``TRITON_INTERPRET=1`` must be set before Triton is imported). It routes
:func:`vsgd_bayes.torch._fused.fused_vsgd`'s CPU branch to the Triton module's
``vsgd_step``, then runs the parity cases of ``tests/test_torch_fast_paths.py`` against the
JAX rule: the kernel's indexing (block -> tensor map, masks, the cached tables), the uniform
and per-tensor step constants, float16 parameters and ``maximize`` are thus checked on every
machine, without a GPU. Prints one line per case and ``N cases passed`` at the end.

bfloat16 parameters are not among the cases: the interpreter converts float32 to bfloat16
by truncation (1 + 2^-8 + 2^-12 becomes 1.0, where torch and GPUs round to 1.0078125), so
its results differ from torch's by up to 2 bfloat16 ulps; that case runs on a GPU
(``tests/test_torch_fast_paths.py`` with ``VSGD_TEST_DEVICE=cuda``).

Usage: ``python tests/triton_interpreter_parity.py TRITON_DIR [--break]``: TRITON_DIR is the
folder Triton is installed in (``make setup`` puts it under ``.venv/triton-interpreter``);
``--break`` perturbs the weight-decay factor by 1e-6 (relative) to show the check fails.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, sys.argv[1])  # Triton, installed apart from the environment
sys.path.insert(0, str(pathlib.Path(__file__).parent))
# this checkout's package, not whichever one the environment has installed
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import torch  # noqa: E402

jax.config.update("jax_enable_x64", True)  # as the suite's conftest does

import test_torch_fast_paths as parity  # noqa: E402

from vsgd_bayes.torch import _fused  # noqa: E402
from vsgd_bayes.torch._foreach import StepConstants  # noqa: E402


class TritonOnCPU:
    """Stands in for the C++ module: the same call, run by the Triton kernel."""

    def __init__(self, decay_error=0.0):
        self.kernel = _fused._triton_module()
        self.decay_error = decay_error

    def vsgd_step(self, params, grads, means, drifts, noises, flat_constants, lr, decay,
                  eps, maximize):
        # One StepConstants per tensor; tensors at one step share equal ones (uniform).
        n = len(StepConstants._fields)
        constants = [StepConstants(*flat_constants[n * i: n * i + n]) for i in range(len(params))]
        decay = decay * (1.0 + self.decay_error)
        self.kernel.vsgd_step(params, grads, means, drifts, noises, constants, lr, decay,
                              eps, maximize)


CASES = {
    "defaults": dict(),
    "maximize": dict(maximize=True),
    "weight_decay": dict(weight_decay=0.3),
    "paper_init": dict(init="paper"),
    "same_steps": dict(late=()),
    "float32": dict(param_dtype=torch.float32, state_dtype=torch.float32, weight_decay=0.1),
    "float16_params": dict(param_dtype=torch.float16, state_dtype=torch.float32),
}


def main() -> int:
    assert parity.DEVICE.type == "cpu"
    broken = "--break" in sys.argv
    _fused._cpu_module, _fused._cpu_tried = TritonOnCPU(1e-6 if broken else 0.0), True
    for name, case in CASES.items():
        if broken:
            case = dict(case, weight_decay=0.3)
        start = time.perf_counter()
        tables_before = len(_fused._triton_module()._tables)
        parity._run_parity(_fused.fused_vsgd, **case)
        tables = len(_fused._triton_module()._tables) - tables_before
        print(f"{name}: ok ({time.perf_counter() - start:.1f} s, {tables} new tables)",
              flush=True)
    print(f"{len(CASES)} cases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
