"""Factored VSGD's hyperparameters: defaults, validation and its shapes (no JAX, no torch).

Factored VSGD (``derivations/12_factored_vsgd.md``) infers in VSGD's model with the
per-coordinate precisions replaced by products of a row and a column factor; its arguments are
VSGD's and one option, ``factorization``:

* ``"matrix"`` (the default): a tensor of rank >= 2 is viewed as the matrix
  (shape[0], prod(shape[1:])) and each precision is a row factor times a column factor
  (eq:factored-model); a tensor of rank <= 1 keeps one precision per coordinate (it is VSGD's
  update exactly, the case of a matrix with one column and no column factor).
* ``"tensor"``: one drift and one noise precision per tensor (eq:factored-tensor-targets).
"""

from __future__ import annotations

import math
from typing import Any

from vsgd_bayes.hyperparameters.checks import check_hyperparameter, register_requirements
from vsgd_bayes.hyperparameters.vsgd import DEFAULTS as VSGD_DEFAULTS

__all__ = [
    "DEFAULTS",
    "FACTORIZATIONS",
    "validate_hyperparameters",
    "matrix_shape",
    "is_factored",
    "factor_shapes",
    "posterior_factor_shapes",
]

#: The two ways of sharing the precisions (module docstring).
FACTORIZATIONS: tuple[str, ...] = ("matrix", "tensor")

#: Defaults of Factored VSGD, chosen here since no published code has this method. They are
#: VSGD's values, the authors', so that a user who swaps VSGD for it changes only how the
#: precisions are shared, and ``factorization="matrix"``.
DEFAULTS: dict[str, Any] = {**VSGD_DEFAULTS, "factorization": "matrix"}

register_requirements(choices={"factorization": FACTORIZATIONS})


def validate_hyperparameters(**values: Any) -> None:
    """Raise ``ValueError`` naming the argument and the value if a Factored VSGD
    hyperparameter among ``values`` (names of :data:`DEFAULTS`) is invalid.

    Example:
        >>> validate_hyperparameters(factorization="rows")
        Traceback (most recent call last):
        ...
        ValueError: Invalid factorization: 'rows' (must be one of ('matrix', 'tensor'))
    """
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unexpected Factored VSGD hyperparameters {unknown}")
    for name, value in values.items():
        check_hyperparameter(name, value)


def matrix_shape(shape: tuple[int, ...], factorization: str = "matrix") -> tuple[int, int]:
    """The (m, n) matrix a tensor of ``shape`` is viewed as: rows carry the row factors.

    ``"matrix"``: (shape[0], prod(shape[1:])) for rank >= 2 (conv kernels: out-channels x
    in-channels * kh * kw, as Adafactor), (numel, 1) for rank <= 1; ``"tensor"``: (1, numel).

    Example:
        >>> matrix_shape((64, 3, 3, 3)), matrix_shape((10,)), matrix_shape((4, 5), "tensor")
        ((64, 27), (10, 1), (1, 20))
    """
    check_hyperparameter("factorization", factorization)
    numel = math.prod(shape)
    if factorization == "tensor":
        return (1, numel)
    if len(shape) <= 1:
        return (numel, 1)
    return (shape[0], numel // shape[0] if shape[0] else math.prod(shape[1:]))


def is_factored(shape: tuple[int, ...], factorization: str = "matrix") -> bool:
    """Whether the tensor has a column factor: ``"matrix"`` and rank >= 2 with columns.

    Otherwise its precisions are its row factors alone (one per coordinate for a vector, one
    per tensor for ``"tensor"``), and its column state is empty.
    """
    rows, columns = matrix_shape(shape, factorization)
    return factorization == "matrix" and len(shape) >= 2 and columns > 0


def factor_shapes(
    shape: tuple[int, ...], factorization: str, prior_shape: Any, step: int
) -> tuple[Any, Any]:
    """The Gamma shapes (alpha of the row factors, alpha of the column factors) before step
    ``step`` (counted from 1): the prior shape a_0 at t = 1, then the posterior shapes
    a_0 + n/2 (rows: each sees the n entries of its row) and a_0 + m/2 (columns)
    (eq:factored-targets); for a tensor without a column factor the column shape is unused.
    """
    if step <= 1:
        return prior_shape, prior_shape
    return posterior_factor_shapes(prior_shape, *matrix_shape(shape, factorization))


def posterior_factor_shapes(prior_shape: Any, rows: int, columns: int) -> tuple[Any, Any]:
    """(a_0 + n/2, a_0 + m/2): the posterior shapes of the row and the column factors of an
    (m, n) matrix view after any step (eq:factored-targets)."""
    return prior_shape + 0.5 * columns, prior_shape + 0.5 * rows
