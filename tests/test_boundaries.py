"""The package's boundaries, as ``docs/design.md`` states them.

* The library (everything under ``vsgd_bayes`` except ``vsgd_bayes/apps``) never imports the
  applications.
* ``vsgd_bayes.hyperparameters`` imports neither JAX nor torch; the torch front end imports no
  JAX (checked in a fresh process in ``tests/test_torch_state.py``), the JAX modules no torch.
* Importing a library module never changes global numerics (``tests/test_validation.py``
  checks that the float64 checks leave 32-bit JAX on).
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "vsgd_bayes"
# ``python -m vsgd_bayes`` (``__main__.py``) is the command line's entry point, not library.
LIBRARY_FILES = sorted(
    path
    for path in PACKAGE.rglob("*.py")
    if "apps" not in path.relative_to(PACKAGE).parts and path.name != "__main__.py"
)


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every module named by an ``import`` or ``from ... import`` statement in ``path``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_scan_sees_the_library_and_catches_an_apps_import(tmp_path):
    # Check of the check: the scan finds the library files and flags an import of the apps.
    assert PACKAGE / "rule.py" in LIBRARY_FILES and PACKAGE / "torch" / "vsgd.py" in LIBRARY_FILES
    assert not any("apps" in path.parts for path in LIBRARY_FILES)
    offender = tmp_path / "offender.py"
    offender.write_text("from vsgd_bayes.apps.bench import runner\n")
    assert "vsgd_bayes.apps.bench" in imported_modules(offender)


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_never_imports_the_applications(path):
    offending = sorted(
        name for name in imported_modules(path) if name.startswith("vsgd_bayes.apps")
    )
    assert not offending, f"{path.relative_to(PACKAGE)} imports {offending}"


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("vsgd_bayes.hyperparameters", ("jax", "torch")),
        ("vsgd_bayes", ("jax", "torch")),
        ("vsgd_bayes.rule", ("torch",)),
        ("vsgd_bayes.optax", ("torch",)),
    ],
)
def test_framework_boundaries(module, forbidden):
    code = (
        f"import sys, {module}\n"
        f"loaded = [name for name in {forbidden!r} if name in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {module} loaded {result.stdout.strip()}"
