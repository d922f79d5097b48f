"""Sphinx configuration of the API reference site (``make docs``; tests/test_docs.py builds it
with warnings as errors).

The site's pages are the README, ``docs/design.md``, the derivations, the notebooks with their
outputs, and the API reference generated from the docstrings (autodoc + napoleon). Pages that
live elsewhere in the repository are included from where they are, through stubs written
into ``docs/_generated/`` at each build, so that nothing is copied by hand. The notebooks are
executed before the build (``docs/execute_notebooks.py``, small settings) into the folder
named by ``VSGD_DOCS_NOTEBOOKS`` and rendered from there, never executed by Sphinx itself.
"""

from __future__ import annotations

import os
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import vsgd_bayes  # noqa: E402

project = "vsgd_bayes"
author = "vsgd_bayes developers"
release = vsgd_bayes.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
html_theme = "furo"
html_title = f"vsgd_bayes {release}"
exclude_patterns = ["_build", "_generated/**/.ipynb_checkpoints", "README.md"]
# Every cross-reference must resolve: broken ones are warnings, and the tests build with -W.
nitpicky = True
# Names from other projects whose sites are not reachable here (no network at build time).
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jnp|numpy|np|optax|torch|numpyro|scipy|collections|typing|pathlib)(\..*)?"),
    (r"py:.*", r"(Tensor|Array|ArrayLike|Callable|Iterable|Any|NamedTuple|ModuleType)"),
    (r"py:.*", r"(Optimizer|ParamsT|GradientTransformation|GradientTransformationExtraArgs)"),
    (r"py:class", r"(float|int|str|bool|dict|list|tuple|object|type|optional|default.*)"),
]
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Attributes as fields of their class (NamedTuple fields are documented once, by autodoc), and
# "Returns:" read like "Args:" (the rules return named tuples: "(mean, new_state): ...").
napoleon_use_ivar = True
napoleon_custom_sections = [("Returns", "params_style")]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"
suppress_warnings = [
    # README and the derivations link to files of the repository (scripts, JSON results)
    # that are not pages of this site; those links stay as plain links.
    "myst.xref_missing",
    # Notebook outputs carry mime types (widgets) that the static site does not render.
    "mystnb.unknown_mime_type",
]

#: Where the executed notebooks are read from (written by docs/execute_notebooks.py).
NOTEBOOKS = pathlib.Path(os.environ.get("VSGD_DOCS_NOTEBOOKS", DOCS / "_build" / "notebooks"))


def _write_stubs() -> None:
    generated = DOCS / "_generated"
    (generated / "derivations").mkdir(parents=True, exist_ok=True)
    (generated / "notebooks").mkdir(parents=True, exist_ok=True)
    (generated / "readme.md").write_text(
        "```{include} ../../README.md\n:relative-docs: docs/\n:relative-images:\n```\n"
    )
    for note in sorted((ROOT / "derivations").glob("*.md")):
        (generated / "derivations" / note.name).write_text(
            f"```{{include}} ../../../derivations/{note.name}\n:relative-images:\n```\n"
        )
    missing = []
    for notebook in sorted((ROOT / "notebooks").glob("[0-9]*.py")):
        executed = NOTEBOOKS / f"{notebook.stem}.ipynb"
        if not executed.exists():
            missing.append(str(executed))
            continue
        (generated / "notebooks" / executed.name).write_bytes(executed.read_bytes())
    if missing:
        raise RuntimeError(
            f"executed notebooks not found: {missing}; run docs/execute_notebooks.py first "
            "(make docs does)"
        )


def _canonical_target(target: str, module: str | None) -> str | None:
    """The documented name of the object that ``target`` (seen from ``module``) names.

    The packages re-export their modules' names (``vsgd_bayes.hyperparameters.prior_shape`` is
    ``vsgd_bayes.hyperparameters.vsgd.prior_shape``); each object is documented once, in its
    own module. A reference to a re-exported name is sent there; a reference to anything that
    does not exist still fails the build.
    """
    import importlib

    for candidate in filter(None, [f"{module}.{target}" if module else None, target]):
        parts = candidate.split(".")
        for split in range(len(parts) - 1, 0, -1):
            try:
                owner = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            obj = owner
            try:
                for attribute in parts[split:]:
                    obj = getattr(obj, attribute)
            except AttributeError:
                break
            home = getattr(obj, "__module__", None) or ""
            qualname = getattr(obj, "__qualname__", None)
            if home.startswith("vsgd_bayes") and qualname:
                return f"{home}.{qualname}"
            # Data (dicts, numbers) carry no home: find the submodule that documents it (in
            # its __all__), under the same name if it has it there, else under its own name.
            found = []
            for value in vars(owner).values():
                sub = getattr(value, "__name__", "")
                public = getattr(value, "__all__", ())
                if (
                    isinstance(value, type(importlib))
                    and sub.startswith(owner.__name__ + ".")
                    and isinstance(public, (list, tuple))
                ):
                    found += [
                        (name != parts[-1], f"{sub}.{name}")
                        for name in public
                        if getattr(value, name, None) is obj
                    ]
            if found:
                return min(found)[1]
            break
    return None


def _resolve_reexported(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = _canonical_target(node["reftarget"], node.get("py:module"))
    if target is None or target == node["reftarget"]:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], target, node, contnode
    )


def setup(app):
    app.connect("missing-reference", _resolve_reexported)


_write_stubs()
