"""The harness that every method's checks share: results, argument checks, random cases, tables.

A method's checks (:mod:`~vsgd_bayes.validation.vsgd`, :mod:`~vsgd_bayes.validation.kalman`)
each return a :class:`CheckResult` (the worst error over the cases against a tolerance stated
with its reason), take their arguments through :func:`checked_run_arguments`, and are printed
by :func:`format_table`; ``vsgd-bayes validate`` runs every method of :data:`METHODS
<vsgd_bayes.validation.METHODS>`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CheckResult",
    "worst_case_result",
    "checked_run_arguments",
    "format_table",
    "log_uniform",
    "signed_log_uniform",
    "random_orthogonal",
]


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: the worst error over its cases against its tolerance."""

    name: str
    cases: int
    worst_error: float
    tolerance: float
    detail: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        # A NaN error must fail, hence the explicit finiteness test.
        return math.isfinite(self.worst_error) and self.worst_error <= self.tolerance

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "cases": self.cases,
            "worst_error": self.worst_error,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "detail": self.detail,
            **self.extra,
        }


def worst_case_result(name: str, errors, tolerance: float, detail: str) -> CheckResult:
    """The :class:`CheckResult` of the worst of ``errors`` (any NaN among them fails)."""
    errors = np.asarray(errors)
    # NaN anywhere must fail: np.max propagates it and CheckResult.passed rejects it.
    return CheckResult(name, int(errors.size), float(np.max(errors)), tolerance, detail)


def checked_run_arguments(
    seed: int, cases: int, only: list[str] | None, checks: tuple[str, ...]
) -> list[str]:
    """The names of the checks to run, after validating ``run_checks``'s arguments.

    Raises ``ValueError`` naming the argument and the value: ``cases`` must be a positive
    integer, ``seed`` a non-negative integer, ``only`` names among ``checks``.
    """
    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise ValueError(f"Invalid cases: {cases!r} (must be a positive integer)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Invalid seed: {seed!r} (must be a non-negative integer)")
    names = list(checks if only is None else only)
    unknown = [name for name in names if name not in checks]
    if unknown:
        raise ValueError(f"Invalid only: {unknown!r} (must be among {checks})")
    return names


def format_table(results: list[CheckResult]) -> str:
    """The results as a plain-text table (check, cases, worst error, tolerance, pass)."""
    header = f"{'check':<20} {'cases':>5} {'worst error':>12} {'tolerance':>10}  pass"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.name:<20} {r.cases:>5} {r.worst_error:>12.3e} {r.tolerance:>10.1e}  "
            f"{'yes' if r.passed else 'NO'}"
        )
    return "\n".join(lines)


def log_uniform(rng: np.random.Generator, low: float, high: float, size: int) -> np.ndarray:
    """``size`` draws uniform in log10 between ``low`` and ``high`` (> 0)."""
    return 10.0 ** rng.uniform(math.log10(low), math.log10(high), size)


def signed_log_uniform(rng: np.random.Generator, low: float, high: float, size: int) -> np.ndarray:
    """:func:`log_uniform` draws with a random sign each."""
    return rng.choice([-1.0, 1.0], size) * log_uniform(rng, low, high, size)


def random_orthogonal(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random orthogonal (size x size) matrix: the Q of a Gaussian matrix's QR, with R's
    diagonal made positive (Haar-distributed)."""
    q, r = np.linalg.qr(rng.normal(size=(size, size)))
    return q * np.sign(np.diag(r))
