"""The package's boundaries, as ``docs/design.md`` states them.

* The library (everything under ``vsgd_bayes`` except ``vsgd_bayes/apps``) never imports the
  applications.
* Each link of the chain imports only the links before it (:data:`MAY_IMPORT`, the table of
  ``docs/design.md``): ``hyperparameters`` nothing, ``rules`` the hyperparameters, ``models``
  the rules, ``validation`` the models, ``optax`` the rules, ``torch`` the hyperparameters.
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
    assert PACKAGE / "rules" / "vsgd.py" in LIBRARY_FILES
    assert PACKAGE / "torch" / "vsgd.py" in LIBRARY_FILES
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


#: Link of the chain -> the links its modules may import (``docs/design.md``). A method's
#: module of one link imports its own link's shared modules and the links before it, never a
#: later link: the rule never depends on its checks or on a front end.
MAY_IMPORT: dict[str, set[str]] = {
    "hyperparameters": {"hyperparameters"},
    "rules": {"hyperparameters", "rules"},
    "models": {"hyperparameters", "rules", "models"},
    "validation": {"hyperparameters", "rules", "models", "validation"},
    "optax": {"hyperparameters", "rules", "optax"},
    "torch": {"hyperparameters", "torch"},
}


def link_of(path: pathlib.Path) -> str | None:
    """The link (top-level package of ``vsgd_bayes``) that ``path`` belongs to, if any."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 and parts[0] in MAY_IMPORT else None


def links_imported(path: pathlib.Path) -> set[str]:
    """The links of the chain that ``path`` imports from."""
    links = set()
    for name in imported_modules(path):
        parts = name.split(".")
        if parts[0] == "vsgd_bayes" and len(parts) > 1 and parts[1] in MAY_IMPORT:
            links.add(parts[1])
    return links


LINK_FILES = [path for path in LIBRARY_FILES if link_of(path) is not None]


def test_the_link_scan_sees_every_link_and_catches_a_backward_import(tmp_path):
    # Check of the check: every link has files, and a rule importing its checks is flagged.
    assert {link_of(path) for path in LINK_FILES} == set(MAY_IMPORT)
    (tmp_path / "rules").mkdir()
    offender = tmp_path / "rules" / "offender.py"
    offender.write_text("from vsgd_bayes.validation import vsgd\nimport vsgd_bayes.torch\n")
    assert links_imported(offender) - MAY_IMPORT["rules"] == {"validation", "torch"}


@pytest.mark.parametrize("path", LINK_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_link_imports_only_the_links_before_it(path):
    link = link_of(path)
    backward = sorted(links_imported(path) - MAY_IMPORT[link])
    assert not backward, f"{path.relative_to(PACKAGE)} ({link}) imports {backward}"


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("vsgd_bayes.hyperparameters", ("jax", "torch")),
        ("vsgd_bayes", ("jax", "torch")),
        ("vsgd_bayes.rules.vsgd", ("torch",)),
        ("vsgd_bayes.rules.kalman", ("torch",)),
        ("vsgd_bayes.models", ("jax", "torch")),
        ("vsgd_bayes.rules", ("jax", "torch")),
        ("vsgd_bayes.optax", ("torch",)),
        ("vsgd_bayes.validation", ("torch",)),
        ("vsgd_bayes.torch", ("jax", "numpyro", "optax")),
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
