"""Kronecker VSGD's hyperparameters: defaults, validation and its shapes (no JAX, no torch).

Kronecker VSGD (``derivations/16_kronecker_vsgd.md``) runs VSGD's model and updates in the
eigenbasis of the running row and column moments of the mini-batch noise of each 2-D weight
(eq:kronecker-model); its arguments are VSGD's and two of its own:

* ``basis_update_every`` (k): the basis is refreshed after every k-th step (eq:kronecker-basis),
  an eigendecomposition of each side's moment, O(m^3 + n^3);
* ``max_basis_dim``: a side longer than this keeps the identity basis (no moment, no
  eigendecomposition, no state for it), as Shampoo's and SOAP's maximum preconditioner sizes.

Tensors that are not 2-D take VSGD's update unchanged.
"""

from __future__ import annotations

from typing import Any

from vsgd_bayes.hyperparameters.checks import check_hyperparameter, register_requirements
from vsgd_bayes.hyperparameters.vsgd import DEFAULTS as VSGD_DEFAULTS

__all__ = ["DEFAULTS", "validate_hyperparameters", "structured_sides"]

#: Defaults of Kronecker VSGD, chosen here since no published code has this method. VSGD's
#: values, the authors', so that a user who swaps VSGD for it changes only the basis;
#: ``basis_update_every`` 10, SOAP's default preconditioning frequency (Vyas et al. 2024, the
#: optimizer with the same basis and refresh); ``max_basis_dim`` 2048: a 2048 x 2048
#: eigendecomposition every 10 steps is a few percent of a step of the layers that size on a
#: GPU, and the moment and basis cost 2 * 2048^2 floats, the size of a 2048 x 4096 weight's
#: VSGD state.
DEFAULTS: dict[str, Any] = {**VSGD_DEFAULTS, "basis_update_every": 10, "max_basis_dim": 2048}


def _positive_integer(value: float) -> bool:
    return value >= 1 and value == int(value)


register_requirements(
    {
        "basis_update_every": (_positive_integer, "an integer >= 1"),
        "max_basis_dim": (_positive_integer, "an integer >= 1"),
    }
)


def validate_hyperparameters(**values: Any) -> None:
    """Raise ``ValueError`` naming the argument and the value if a Kronecker VSGD
    hyperparameter among ``values`` (names of :data:`DEFAULTS`) is invalid.

    Example:
        >>> validate_hyperparameters(basis_update_every=0)
        Traceback (most recent call last):
        ...
        ValueError: Invalid basis_update_every: 0 (must be an integer >= 1)
    """
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unexpected Kronecker VSGD hyperparameters {unknown}")
    for name, value in values.items():
        check_hyperparameter(name, value)


def structured_sides(
    shape: tuple[int, ...], max_basis_dim: int = DEFAULTS["max_basis_dim"]
) -> tuple[bool, bool]:
    """(rows, columns): which sides of a tensor of ``shape`` get a basis of their own.

    Only 2-D tensors are structured, each side of length 2 .. ``max_basis_dim`` (a side of
    length 1 has only the identity basis); every other tensor has neither and takes VSGD's
    update.

    Example:
        >>> structured_sides((64, 32)), structured_sides((64,)), structured_sides((5000, 64))
        ((True, True), (False, False), (False, True))
    """
    if len(shape) != 2:
        return (False, False)
    return tuple(2 <= side <= max_basis_dim for side in shape)
