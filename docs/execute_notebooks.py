"""Execute the text notebooks of ``notebooks/`` with their small (CI) settings.

Each notebook is a jupytext "percent" file; it is converted in memory and run by nbclient on a
kernel of this interpreter (a kernelspec written to a temporary ``JUPYTER_PATH``), with the
checkout's own package first on ``PYTHONPATH``. The executed notebooks (outputs included) are
what the documentation site renders; tests/test_notebooks.py runs them through the same
function and checks the numbers each one records in ``VSGD_NOTEBOOK_RESULTS``.

Usage::

    python docs/execute_notebooks.py OUT_DIR     # writes OUT_DIR/<name>.ipynb for each
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile

import jupytext
import nbclient
import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
KERNEL_NAME = "vsgd-bayes-python"
#: Per-cell limit; the notebooks together take a few minutes on 2 cores.
CELL_TIMEOUT_S = 600


def notebook_paths() -> list[pathlib.Path]:
    """The notebooks of the site and of the tests, in order (``notebooks/NN_*.py``)."""
    return sorted(NOTEBOOK_DIR.glob("[0-9]*.py"))


def kernel_environment(scratch: pathlib.Path, results_path: pathlib.Path | None) -> dict:
    """Environment variables that run a notebook on this interpreter with the small settings.

    Writes a kernelspec under ``scratch``. ``results_path`` is where the notebook writes its
    key numbers (``VSGD_NOTEBOOK_RESULTS``; unset: nowhere).
    """
    spec_dir = scratch / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vsgd_bayes (this interpreter)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    # The kernel imports the checkout, not whichever copy is installed in the environment.
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        "JUPYTER_PATH": str(scratch / "jupyter"),
        # Figures as PNG outputs of their cells (the site shows them), no windows.
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "VSGD_NOTEBOOK_DIR": str(NOTEBOOK_DIR),
        "PYTHONPATH": os.pathsep.join(path),
    }
    if results_path is not None:
        env["VSGD_NOTEBOOK_RESULTS"] = str(results_path)
    return env


def execute_notebook(
    path: pathlib.Path, work_dir: pathlib.Path, env: dict[str, str]
) -> nbformat.NotebookNode:
    """Run the notebook at ``path`` in ``work_dir`` under ``env`` (see
    :func:`kernel_environment`) and return it executed; raises nbclient's
    ``CellExecutionError`` at the first failing cell. ``VSGD_NOTEBOOK_FULL`` is always unset
    (the small settings)."""
    saved = {name: os.environ.get(name) for name in [*env, "VSGD_NOTEBOOK_FULL"]}
    os.environ.update(env)
    os.environ.pop("VSGD_NOTEBOOK_FULL", None)
    try:
        notebook = jupytext.read(path)
        client = nbclient.NotebookClient(
            notebook,
            timeout=CELL_TIMEOUT_S,
            kernel_name=KERNEL_NAME,
            resources={"metadata": {"path": str(work_dir)}},
        )
        client.execute()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="folder for the executed .ipynb files")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        env = kernel_environment(scratch, results_path=None)
        for path in notebook_paths():
            work_dir = scratch / path.stem
            work_dir.mkdir()
            notebook = execute_notebook(path, work_dir, env)
            nbformat.write(notebook, args.out / f"{path.stem}.ipynb")
            print(f"executed {path.name} -> {args.out / (path.stem + '.ipynb')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
