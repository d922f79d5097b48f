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


def _load_notebook_runner():
    # docs/execute_notebooks.py is a script of the docs, not a module of the package.
    path = pathlib.Path(__file__).resolve().parents[1] / "docs" / "execute_notebooks.py"
    spec = importlib.util.spec_from_file_location("execute_notebooks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def executed_notebooks(tmp_path_factory):
    """``run(name) -> (notebook, results)``: executes ``notebooks/<name>`` once per session.

    The notebook tests check the numbers each notebook records, the documentation test renders
    the same executed notebooks (written to ``run.out_dir``), so each notebook runs once.
    """
    import json

    import nbformat

    runner = _load_notebook_runner()
    scratch = tmp_path_factory.mktemp("notebooks")
    out_dir = scratch / "executed"
    out_dir.mkdir()
    done: dict[str, tuple] = {}

    def run(name: str):
        if name not in done:
            results_path = scratch / f"{name}.results.json"
            env = runner.kernel_environment(scratch, results_path)
            work_dir = scratch / f"{name}.run"
            work_dir.mkdir()
            notebook = runner.execute_notebook(runner.NOTEBOOK_DIR / name, work_dir, env)
            nbformat.write(notebook, out_dir / f"{pathlib.Path(name).stem}.ipynb")
            done[name] = (notebook, json.loads(results_path.read_text()))
        return done[name]

    run.out_dir = out_dir
    run.names = [path.name for path in runner.notebook_paths()]
    return run
