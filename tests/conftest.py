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


@pytest.fixture
def data_dir() -> pathlib.Path:
    return DATA_DIR
