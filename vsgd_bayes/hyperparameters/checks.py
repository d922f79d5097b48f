"""The checking helpers that every method's hyperparameters share (no JAX, no torch).

Each method module of :mod:`vsgd_bayes.hyperparameters` registers the requirement of each of
its arguments here (:data:`REQUIREMENTS` for numbers, :data:`CHOICES` for named options), and
every front end checks a value with :func:`check_hyperparameter`, so that one argument name
always has one requirement and one error message, whichever optimizer takes it.

Example:
    >>> check_hyperparameter("eps", -1.0)
    Traceback (most recent call last):
    ...
    ValueError: Invalid eps: -1.0 (must be >= 0)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

__all__ = [
    "REQUIREMENTS",
    "CHOICES",
    "register_requirements",
    "check_hyperparameter",
    "check_choice",
    "is_real_number",
]

#: The requirement on each numeric hyperparameter, as (predicate on its float value, text
#: for the error). Filled by the method modules through :func:`register_requirements`.
REQUIREMENTS: dict[str, tuple[Callable[[float], bool], str]] = {}

#: The allowed values of each named option (e.g. ``init``), filled by the method modules.
CHOICES: dict[str, tuple[str, ...]] = {}


def register_requirements(
    requirements: dict[str, tuple[Callable[[float], bool], str]] | None = None,
    choices: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """Add a method's requirements; a name already registered must keep its requirement.

    Two methods that take an argument of the same name (``lr``, ``eps``, ``kappa``) share its
    requirement, so that the same value is valid or invalid everywhere; registering another
    one under the same name is a programming error and raises ``RuntimeError``.
    """
    for name, (predicate, text) in (requirements or {}).items():
        if name in REQUIREMENTS and REQUIREMENTS[name][1] != text:
            raise RuntimeError(f"hyperparameter {name!r} is registered twice, differently")
        REQUIREMENTS.setdefault(name, (predicate, text))
    for name, allowed in (choices or {}).items():
        if name in CHOICES and CHOICES[name] != allowed:
            raise RuntimeError(f"hyperparameter {name!r} is registered twice, differently")
        CHOICES[name] = allowed


def is_real_number(value: Any) -> bool:
    """Whether ``value`` is a real scalar: a Python or NumPy number or a 0-dim array or tensor
    of any framework (anything that converts to float), but not a bool, string or container."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        return False
    if isinstance(value, numbers.Real):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    shape = getattr(value, "shape", ())
    return tuple(shape) == ()


def _check(name: str, value: Any, ok: bool, requirement: str) -> None:
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r} (must be {requirement})")


def check_choice(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` and ``value`` unless it is one of its choices."""
    choices = CHOICES[name]
    _check(name, value, isinstance(value, str) and value in choices, f"one of {choices}")


def check_hyperparameter(name: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``name`` and ``value`` unless it meets its requirement.

    A named option (``init``) must be one of its :data:`CHOICES`; ``lr`` may also be a
    callable schedule (optax), which is not checked; every other value must be a finite real
    scalar meeting :data:`REQUIREMENTS`.
    """
    if name in CHOICES:
        check_choice(name, value)
        return
    if name == "lr" and callable(value):
        return
    _check(name, value, is_real_number(value), "a real scalar")
    _check(name, value, math.isfinite(float(value)), "finite")
    predicate, requirement = REQUIREMENTS[name]
    _check(name, value, predicate(float(value)), requirement)
