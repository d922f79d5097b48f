"""The documentation site builds, with warnings as errors, and shows what it must.

The site (``docs/``, Sphinx + autodoc/napoleon + MyST-NB) is built once per session from the
docstrings, the README, ``docs/design.md``, the derivations and the notebooks executed by the
notebook tests (the ``executed_notebooks`` fixture runs each notebook once for both). A broken
cross-reference is a warning, so it fails the build; a check of the check builds a page with
one and must fail.
"""

from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: The library's public modules, whose ``__all__`` names must each have an API entry.
PUBLIC_MODULES = [
    "vsgd_bayes.hyperparameters.checks",
    "vsgd_bayes.hyperparameters.vsgd",
    "vsgd_bayes.hyperparameters.constant",
    "vsgd_bayes.hyperparameters.kalman",
    "vsgd_bayes.hyperparameters.schedule_free",
    "vsgd_bayes.rules.vsgd",
    "vsgd_bayes.rules.elbo",
    "vsgd_bayes.rules.constant",
    "vsgd_bayes.rules.kalman",
    "vsgd_bayes.models.vsgd",
    "vsgd_bayes.validation",
    "vsgd_bayes.validation.harness",
    "vsgd_bayes.validation.vsgd",
    "vsgd_bayes.validation.kalman",
    "vsgd_bayes.optax.vsgd",
    "vsgd_bayes.optax.kalman",
    "vsgd_bayes.torch",
    "vsgd_bayes.torch.vsgd",
    "vsgd_bayes.torch.constant",
    "vsgd_bayes.torch.kalman",
]


def sphinx_build(source: pathlib.Path, out: pathlib.Path, env: dict[str, str]):
    """``sphinx-build -b html -W --keep-going source out`` in a fresh process."""
    import os

    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
         str(source), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=900,
    )


@pytest.fixture(scope="session")
def site(executed_notebooks, tmp_path_factory) -> pathlib.Path:
    for name in executed_notebooks.names:
        executed_notebooks(name)
    out = tmp_path_factory.mktemp("site")
    result = sphinx_build(DOCS, out, {"VSGD_DOCS_NOTEBOOKS": str(executed_notebooks.out_dir)})
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_the_site_builds_and_its_index_links_every_part(site):
    index = (site / "index.html").read_text()
    for page in ["_generated/readme.html", "design.html", "api/index.html",
                 "_generated/derivations/01_generative_model.html",
                 "_generated/notebooks/03_train_with_vsgd.html"]:
        assert page in index, page
        assert (site / page).exists(), page


def test_an_api_page_shows_the_optimizers_and_their_methods(site):
    page = (site / "api" / "torch.html").read_text()
    for name in ["vsgd_bayes.torch.vsgd.VSGD", "vsgd_bayes.torch.constant.ConstantVSGD",
                 "vsgd_bayes.torch.kalman.KalmanVSGD", "gradient_posterior",
                 "GradientPosterior", "VSGDFamilyOptimizer"]:
        assert f'id="{name}' in page or f"{name}" in page, name
    # The constructor's documented arguments are rendered, not just the class name.
    assert "variance_ratio" in page and "prior_strength" in page


def test_a_notebook_page_shows_its_outputs(site):
    page = (site / "_generated" / "notebooks" / "03_train_with_vsgd.html").read_text()
    # Executed cells render output blocks, figures as images.
    assert "cell_output" in page
    assert "<img" in page


def test_every_public_name_has_an_api_entry(site, monkeypatch, executed_notebooks):
    import runpy

    from sphinx.util.inventory import InventoryFile

    # The site's own rule for where a re-exported name is documented (docs/conf.py).
    monkeypatch.setenv("VSGD_DOCS_NOTEBOOKS", str(executed_notebooks.out_dir))
    canonical = runpy.run_path(str(DOCS / "conf.py"))["_canonical_target"]

    with open(site / "objects.inv", "rb") as handle:
        inventory = InventoryFile.load(handle, "", lambda base, uri: uri)
    documented = {name for kind, entries in inventory.items() for name in entries}
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if isinstance(getattr(module, name), type(sys)):
                continue  # a submodule: documented by its own automodule
            target = canonical(f"{module_name}.{name}", None) or f"{module_name}.{name}"
            if target not in documented:
                missing.append(f"{module_name}.{name}")
    assert not missing, missing


def _tiny_project(tmp_path: pathlib.Path, reference: str) -> pathlib.Path:
    # The site's own configuration (extensions, nitpicky, the re-export resolver) on one page.
    source = tmp_path / "source"
    source.mkdir(parents=True)
    (source / "conf.py").write_text(
        "import runpy\n"
        f"globals().update(runpy.run_path({str(DOCS / 'conf.py')!r}))\n"
        "exclude_patterns = []\n"
    )
    (source / "index.md").write_text(
        "# Tiny\n\n```{eval-rst}\n.. autofunction:: vsgd_bayes.hyperparameters.vsgd.step_sizes\n\n"
        f"See {reference}.\n```\n"
    )
    return source


def test_check_of_the_check_a_broken_reference_fails_the_build(site, executed_notebooks, tmp_path):
    # ``site`` has executed every notebook, which the site's configuration reads.
    env = {"VSGD_DOCS_NOTEBOOKS": str(executed_notebooks.out_dir)}
    # A re-exported name resolves to its documented home ...
    good = _tiny_project(tmp_path / "good", ":func:`vsgd_bayes.hyperparameters.step_sizes`")
    result = sphinx_build(good, tmp_path / "good" / "out", env)
    assert result.returncode == 0, result.stderr[-2000:]
    # ... and a name that does not exist fails the build, naming the target.
    bad = _tiny_project(tmp_path / "bad", ":func:`vsgd_bayes.hyperparameters.no_such_function`")
    result = sphinx_build(bad, tmp_path / "bad" / "out", env)
    assert result.returncode != 0
    assert "no_such_function" in result.stderr
