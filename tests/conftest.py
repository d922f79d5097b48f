"""Shared test configuration.

JAX runs in float64 throughout the suite: the parity and golden checks are float64 checks
(tests that exercise float32/bfloat16 ask for those dtypes explicitly).
"""

import importlib.util
import pathlib

import pytest

if importlib.util.find_spec("jax") is not None:
    import jax

    jax.config.update("jax_enable_x64", True)

DATA_DIR = pathlib.Path(__file__).parent / "data"

if importlib.util.find_spec("torch") is not None:

    @pytest.fixture(autouse=True)
    def one_torch_thread():
        """Every test runs torch on one intra-op thread (and restores the count afterwards).

        On a busy 2-core machine two intra-op threads fight each other: elementwise steps on
        70k elements ran ~90x slower with 2 threads than with 1 (measured). No result depends
        on the thread count (the kernels under test are elementwise). Tests that need another
        count (the demo sets its own) may change it; it is restored here.
        """
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)


@pytest.fixture
def data_dir() -> pathlib.Path:
    return DATA_DIR
