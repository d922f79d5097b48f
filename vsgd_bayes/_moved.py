"""Old import paths kept for one release: a module that moved warns once and forwards.

Version 0.2 laid the package out as one package per link of the chain of trust
(``docs/design.md``). Each old top-level module (``vsgd_bayes.rule``, ``vsgd_bayes.model``,
...) is now a stub that calls :func:`forward_moved_module`: importing it raises one
``DeprecationWarning`` that names the new path, attributed to the line that imported it, and
every attribute (private ones too) is looked up in the new module, so old code keeps working
unchanged until 0.3 removes the stubs.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

__all__ = ["MOVED_MODULES", "REMOVED_IN", "forward_moved_module"]

#: The release that removes the old paths.
REMOVED_IN = "0.3"

#: Old module -> new module (tests/test_layout.py imports each one).
MOVED_MODULES: dict[str, str] = {
    "vsgd_bayes.rule": "vsgd_bayes.rules.vsgd",
    "vsgd_bayes.constant_rule": "vsgd_bayes.rules.constant",
    "vsgd_bayes.kalman_rule": "vsgd_bayes.rules.kalman",
    "vsgd_bayes.elbo": "vsgd_bayes.rules.elbo",
    "vsgd_bayes.model": "vsgd_bayes.models.vsgd",
    "vsgd_bayes.kalman_validation": "vsgd_bayes.validation.kalman",
    "vsgd_bayes.optax_kalman": "vsgd_bayes.optax.kalman",
}


def _importer_stacklevel() -> int:
    # The warning belongs to the line that imported the old module, not to this file, the
    # stub or the import machinery in between, so that Python's default filter shows it when
    # that line is in __main__. warnings.warn itself skips the "<frozen importlib._bootstrap>"
    # frames when it counts stacklevel, so they are skipped here without being counted.
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            frame = frame.f_back
            continue
        # importlib.import_module is the import machinery too: its caller is the importer.
        if name not in MOVED_MODULES and name not in (__name__, "importlib"):
            break
        frame, level = frame.f_back, level + 1
    return level


def forward_moved_module(namespace: dict[str, Any], renamed: dict[str, str] | None = None) -> None:
    """Make the module whose globals are ``namespace`` a deprecated alias of its new module.

    Args:
        namespace: the stub's ``globals()``; its ``__name__`` must be in :data:`MOVED_MODULES`.
        renamed: old attribute -> ``"new.module:attribute"`` for names that moved elsewhere.
    """
    old = namespace["__name__"]
    new = MOVED_MODULES[old]
    renamed = dict(renamed or {})
    warnings.warn(
        f"{old} is deprecated and will be removed in vsgd-bayes {REMOVED_IN}; "
        f"import {new} instead",
        DeprecationWarning,
        stacklevel=_importer_stacklevel(),
    )
    target = importlib.import_module(new)

    def __getattr__(name: str) -> Any:
        if name in renamed:
            module, attribute = renamed[name].split(":")
            return getattr(importlib.import_module(module), attribute)
        try:
            return getattr(target, name)
        except AttributeError:
            raise AttributeError(f"module {old!r} has no attribute {name!r}") from None

    namespace["__getattr__"] = __getattr__
    namespace["__dir__"] = lambda: sorted(set(dir(target)) | set(renamed))
    namespace["__all__"] = [*getattr(target, "__all__", ()), *renamed]
