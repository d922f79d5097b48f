"""A list of tensors that does arithmetic with ``torch._foreach_*`` kernels.

An optimizer's arithmetic written once with operators and a few methods (``exp``, ``sqrt``,
``abs``, ``clamp_min``, ``clamp``) and the functions :func:`where` and :func:`minimum` runs on
a single tensor (the single-tensor path) and, unchanged, on a :class:`TensorList` (the foreach
path): each operation is one multi-tensor kernel over the list (on CUDA one launch for many
tensors), with the same elementwise rounding as on one tensor. Only operations whose result
is rounded the same way on both are offered: a Python number minus a list is computed as
(-list) + number (negation is exact), and a number divided by a list is not offered (its
reciprocal-then-multiply would round twice).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["TensorList", "where", "minimum"]

_Number = (int, float)


class TensorList:
    """Tensors (same dtype and device) on which ``+ - * /`` and the methods below act
    elementwise, each operand a TensorList of the same length, a 0-dim tensor or a number."""

    __slots__ = ("tensors",)

    def __init__(self, tensors: Iterable[Tensor]) -> None:
        self.tensors = list(tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.tensors)

    def __getitem__(self, index: int) -> Tensor:
        return self.tensors[index]

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors[0].dtype

    # ------------------------------------------------------------------ arithmetic
    def _binary(self, op: str, other: Any) -> TensorList:
        if isinstance(other, TensorList):
            return TensorList(getattr(torch, f"_foreach_{op}")(self.tensors, other.tensors))
        if isinstance(other, Tensor):
            return TensorList(getattr(torch, f"_foreach_{op}")(self.tensors, other))
        if isinstance(other, _Number):
            return TensorList(getattr(torch, f"_foreach_{op}")(self.tensors, float(other)))
        return NotImplemented

    def __add__(self, other: Any) -> TensorList:
        return self._binary("add", other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> TensorList:
        return self._binary("sub", other)

    def __rsub__(self, other: Any) -> TensorList:
        # other - self = (-self) + other: negation is exact, so one rounding as on a tensor
        return (-self) + other

    def __mul__(self, other: Any) -> TensorList:
        return self._binary("mul", other)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> TensorList:
        return self._binary("div", other)

    def __neg__(self) -> TensorList:
        return TensorList(torch._foreach_neg(self.tensors))

    def __lt__(self, other: float) -> TensorList:
        return TensorList([t < other for t in self.tensors])

    def __gt__(self, other: float) -> TensorList:
        return TensorList([t > other for t in self.tensors])

    # ------------------------------------------------------------------ methods
    def exp(self) -> TensorList:
        return TensorList(torch._foreach_exp(self.tensors))

    def sqrt(self) -> TensorList:
        return TensorList(torch._foreach_sqrt(self.tensors))

    def abs(self) -> TensorList:
        return TensorList(torch._foreach_abs(self.tensors))

    def clamp_min(self, low: float) -> TensorList:
        return TensorList(torch._foreach_clamp_min(self.tensors, low))

    def clamp(self, low: float, high: float) -> TensorList:
        result = torch._foreach_clamp_min(self.tensors, low)
        torch._foreach_clamp_max_(result, high)
        return TensorList(result)

    def to(self, dtype: torch.dtype) -> TensorList:
        return TensorList(t.to(dtype) for t in self.tensors)

    def copy_(self, source: TensorList) -> None:
        torch._foreach_copy_(self.tensors, source.tensors)


def _items(value: Any, length: int) -> list[Any]:
    return value.tensors if isinstance(value, TensorList) else [value] * length


def where(condition: Any, a: Any, b: Any) -> Any:
    """``torch.where`` on tensors or, tensor by tensor, on TensorLists (no foreach kernel)."""
    if isinstance(condition, TensorList):
        n = len(condition)
        return TensorList(
            torch.where(c, x, y) for c, x, y in zip(condition, _items(a, n), _items(b, n))
        )
    return torch.where(condition, a, b)


def minimum(a: Any, b: Any) -> Any:
    """Elementwise minimum of a tensor (or TensorList) and a tensor (or TensorList, or a
    0-dim tensor, or a number)."""
    if isinstance(a, TensorList):
        if isinstance(b, TensorList):
            return TensorList(torch._foreach_minimum(a.tensors, b.tensors))
        return TensorList(torch._foreach_clamp_max(a.tensors, float(b)))
    if isinstance(b, _Number):
        return a.clamp_max(b)
    return torch.minimum(a, b)
