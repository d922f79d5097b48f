"""The Triton kernel of the fused CUDA path, checked on CPU by Triton's interpreter.

The kernel runs on real hardware only where a GPU is (``benchmarks/gpu_check.sh``); here its
logic is run by ``TRITON_INTERPRET=1`` against the JAX rule with the parity cases of
``tests/test_torch_fast_paths.py`` (see ``tests/triton_interpreter_parity.py``). Triton is
installed apart from the environment (``make setup``: ``pip install --no-deps --target
.venv/triton-interpreter triton==3.9.0``), so that torch in the environment never sees it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

TRITON_DIR = pathlib.Path(
    os.environ.get("VSGD_TRITON_INTERPRETER", pathlib.Path(sys.prefix) / "triton-interpreter")
)
SCRIPT = pathlib.Path(__file__).parent / "triton_interpreter_parity.py"


def _run(*arguments: str) -> subprocess.CompletedProcess:
    assert (TRITON_DIR / "triton").is_dir(), (
        f"Triton for the interpreter is not installed in {TRITON_DIR}: run `make setup` "
        f"(or pip install --no-deps --target {TRITON_DIR} triton==3.9.0)"
    )
    environment = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(TRITON_DIR), *arguments],
        capture_output=True, text=True, timeout=900, env=environment,
    )


def test_triton_kernel_matches_rule_in_interpreter():
    result = _run()
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "7 cases passed" in result.stdout, result.stdout


def test_interpreter_check_fails_for_a_perturbed_kernel():
    # The weight-decay factor off by 1e-6 (relative): parameters move by ~1e-6 relative,
    # far above the 1e-12 float64 tolerance; the check must fail on the first case.
    result = _run("--break")
    assert result.returncode != 0
    assert "AssertionError: theta" in result.stderr, result.stderr[-3000:]
