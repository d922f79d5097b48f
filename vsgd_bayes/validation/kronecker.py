r"""Kronecker VSGD's rule checked against exact references.

``derivations/16_kronecker_vsgd.md``. Over random (3, 4) matrices (float64) unless stated:

1. ``refresh_keeps_mean``: :func:`vsgd_bayes.rules.kronecker.refresh` leaves the posterior
   mean in the original coordinates and the sums of the rates unchanged, and the rotated rates
   are the diagonal of P diag(b) P^T with P = P_L (x) P_R computed densely.
2. ``reduces_to_vsgd``: with no refresh within the run, the trajectories equal
   :func:`vsgd_bayes.rules.vsgd.step` exactly.
3. ``local_optimum``: the local posterior (L mu~ R^T, Q diag(sigma~^2) Q^T) equals the exact
   Gaussian conditional of the model in the original coordinates (eq:kronecker-model) at the
   expected precisions, a dense 12 x 12 solve.
4. ``basis_recovery``: on a stream with MN(0, U, V) noise (6 x 4, seeded), the bases converge
   to U's and V's eigenvectors (eq:kronecker-factor-moments).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.models.kronecker import basis_matrix
from vsgd_bayes.rules import kronecker as rule
from vsgd_bayes.rules import vsgd as vsgd_rule
from vsgd_bayes.validation.harness import (
    CheckResult,
    checked_run_arguments,
    log_uniform,
    random_orthogonal,
    signed_log_uniform,
    worst_case_result,
)

__all__ = ["CHECKS", "TOLERANCES", "Updates", "run_checks"]

ROWS, COLUMNS = 3, 4

TOLERANCES: dict[str, float] = {
    # Relative to the largest entry: float64 rounding of products of 12 x 12 orthogonal maps.
    "refresh_keeps_mean": 1e-12,
    # Exact: products with identity bases add zeros only.
    "reduces_to_vsgd": 0.0,
    # Relative to the largest entry: a dense 12 x 12 solve against the rotated closed form,
    # float64 with precisions spread over 6 decades (condition numbers up to ~1e6): 1e-9.
    "local_optimum": 1e-9,
    # 1 - the worst |cos| between a true eigenvector of U (V) and its closest basis vector,
    # after 1,500 steps of a simulated stream (eigenvalues 1.6x apart): 0.02, i.e. every
    # vector within 11.5 degrees. The sampling error measured at this length is ~1e-3.
    "basis_recovery": 0.02,
}


class Updates(NamedTuple):
    """The functions under test (defaults: the rule's); a hook for broken twins."""

    refresh: Callable = rule.refresh
    step: Callable = rule.step
    posterior_update: Callable = rule.posterior_update


def _check_refresh_keeps_mean(seed: int, cases: int, updates: Updates) -> CheckResult:
    rng = np.random.default_rng(seed + 11)
    errors = []
    for _ in range(cases):
        moments = [rng.normal(size=(s, s)) for s in (ROWS, COLUMNS)]
        state = rule.KroneckerState(
            step=jnp.asarray(10, jnp.int32),
            gradient_mean=jnp.asarray(rng.normal(size=(ROWS, COLUMNS))),
            drift_rate=jnp.asarray(
                log_uniform(rng, 1e-3, 1e3, ROWS * COLUMNS).reshape(ROWS, COLUMNS)
            ),
            noise_rate=jnp.asarray(
                log_uniform(rng, 1e-3, 1e3, ROWS * COLUMNS).reshape(ROWS, COLUMNS)
            ),
            row_basis=jnp.asarray(random_orthogonal(rng, ROWS)),
            col_basis=jnp.asarray(random_orthogonal(rng, COLUMNS)),
            row_moment=jnp.asarray(moments[0] @ moments[0].T),
            col_moment=jnp.asarray(moments[1] @ moments[1].T),
        )
        new = updates.refresh(state)
        before = state.row_basis @ state.gradient_mean @ state.col_basis.T
        after = new.row_basis @ new.gradient_mean @ new.col_basis.T
        errors.append(jnp.max(jnp.abs(after - before)) / jnp.max(jnp.abs(before)))
        p = basis_matrix(new.row_basis.T @ state.row_basis, new.col_basis.T @ state.col_basis)
        for old_rate, new_rate in (
            (state.drift_rate, new.drift_rate),
            (state.noise_rate, new.noise_rate),
        ):
            errors.append(jnp.abs(new_rate.sum() / old_rate.sum() - 1.0))
            dense = jnp.diag(p @ jnp.diag(old_rate.ravel()) @ p.T).reshape(ROWS, COLUMNS)
            errors.append(jnp.max(jnp.abs(new_rate - dense)) / jnp.max(old_rate))
    return worst_case_result(
        "refresh_keeps_mean",
        [float(e) for e in errors],
        TOLERANCES["refresh_keeps_mean"],
        "max relative change of L mu~ R^T and of sum b; rates vs diag(P diag(b) P^T)",
    )


_VSGD_STEPS = 8


def _check_reduces_to_vsgd(seed: int, cases: int, updates: Updates) -> CheckResult:
    rng = np.random.default_rng(seed + 5)
    worst = 0.0
    for init in hp.INITS:
        options = dict(
            prior_strength=float(log_uniform(rng, 1e-8, 1.0, 1)[0]),
            variance_ratio=float(log_uniform(rng, 0.1, 1e3, 1)[0]),
            kappa1=float(1.0 - 0.5 * rng.random()),
            kappa2=float(1.0 - 0.5 * rng.random()),
            init=init,
        )
        for shape, max_basis_dim in (((ROWS, COLUMNS), 2048), ((5,), 2048), ((3, 40), 8)):
            params = vsgd_params = jnp.asarray(rng.normal(size=shape))
            state = rule.init_state(
                params, options["prior_strength"], options["variance_ratio"], init, max_basis_dim
            )
            vsgd_state = vsgd_rule.init_state(
                params, options["prior_strength"], options["variance_ratio"], init
            )
            for _ in range(_VSGD_STEPS):
                gradient = jnp.asarray(
                    signed_log_uniform(rng, 1e-6, 1e3, int(np.prod(shape))).reshape(shape)
                )
                params, state = updates.step(
                    params, gradient, state, lr=0.01, basis_update_every=_VSGD_STEPS + 1, **options
                )
                vsgd_params, vsgd_state = vsgd_rule.step(
                    vsgd_params, gradient, vsgd_state, lr=0.01, **options
                )
                for a, b in (
                    (params, vsgd_params),
                    (state.gradient_mean, vsgd_state.gradient_mean),
                    (state.drift_rate, vsgd_state.drift_rate),
                    (state.noise_rate, vsgd_state.noise_rate),
                ):
                    worst = max(worst, float(jnp.max(jnp.abs(a - b))))
    return CheckResult(
        "reduces_to_vsgd",
        3 * len(hp.INITS),
        worst,
        TOLERANCES["reduces_to_vsgd"],
        detail=f"max abs difference from rules.vsgd over {_VSGD_STEPS} steps, no refresh: "
        "(3, 4), a vector, a (3, 40) with one side over max_basis_dim",
    )


def _check_local_optimum(seed: int, cases: int, updates: Updates) -> CheckResult:
    """The rule's local posterior, rotated back, against the exact Gaussian conditional of the
    model in the original coordinates (eq:kronecker-model) at the expected precisions, a dense
    (mn x mn) solve: mean L mu~ R^T and covariance Q diag(sigma~^2) Q^T (eq:kronecker-local)."""
    rng = np.random.default_rng(seed + 23)
    errors = []
    for _ in range(cases):
        prior_strength = float(log_uniform(rng, 1e-8, 1.0, 1)[0])
        init = hp.INITS[int(rng.integers(len(hp.INITS)))]
        shape = (ROWS, COLUMNS)

        def rates():
            return jnp.asarray(log_uniform(rng, 1e-3, 1e3, ROWS * COLUMNS).reshape(shape))

        state = rule.KroneckerState(
            step=jnp.asarray(int(rng.integers(1, 9)), jnp.int32),
            gradient_mean=jnp.asarray(rng.normal(size=shape)),
            drift_rate=rates(),
            noise_rate=rates(),
            row_basis=jnp.asarray(random_orthogonal(rng, ROWS)),
            col_basis=jnp.asarray(random_orthogonal(rng, COLUMNS)),
            row_moment=jnp.zeros((ROWS, ROWS)),
            col_moment=jnp.zeros((COLUMNS, COLUMNS)),
        )
        gradient = jnp.asarray(rng.normal(size=shape) * 10.0 ** rng.uniform(-2, 2))
        _, new = updates.posterior_update(
            gradient, state, prior_strength=prior_strength, init=init, basis_update_every=1000
        )
        a = hp.shape_before_step(int(state.step) + 1, prior_strength, init)
        drift_precision, noise_precision = a / state.drift_rate, a / state.noise_rate
        q = basis_matrix(state.row_basis, state.col_basis)
        drift_inverse = q @ jnp.diag(drift_precision.ravel()) @ q.T
        noise_inverse = q @ jnp.diag(noise_precision.ravel()) @ q.T
        previous = (state.row_basis @ state.gradient_mean @ state.col_basis.T).ravel()
        precision = drift_inverse + noise_inverse
        covariance = jnp.linalg.inv(precision)
        mean = jnp.linalg.solve(
            precision, drift_inverse @ previous + noise_inverse @ gradient.ravel()
        )
        rule_mean = (new.row_basis @ new.gradient_mean @ new.col_basis.T).ravel()
        rule_covariance = q @ jnp.diag(1.0 / (drift_precision + noise_precision).ravel()) @ q.T
        errors.append(jnp.max(jnp.abs(rule_mean - mean)) / jnp.max(jnp.abs(mean)))
        errors.append(jnp.max(jnp.abs(rule_covariance - covariance)) / jnp.max(jnp.abs(covariance)))
    return worst_case_result(
        "local_optimum",
        [float(e) for e in errors],
        TOLERANCES["local_optimum"],
        "max relative error of L mu~ R^T and Q diag(sigma~^2) Q^T against the dense conditional",
    )


_RECOVERY_STEPS = 1500
_RECOVERY_SIZES = (6, 4)


def _spd_with_spread_eigenvalues(rng, size):
    # Eigenvalues 1.6x apart, so that each eigenvector is identified (distinct eigenvalues).
    eigenvectors = random_orthogonal(rng, size)
    return (eigenvectors * 1.6 ** np.arange(size)) @ eigenvectors.T


def _check_basis_recovery(seed: int, cases: int, updates: Updates) -> CheckResult:
    """On a stream with matrix-normal noise MN(0, U, V) around a slowly drifting true gradient,
    the rule's bases converge to the eigenvectors of U and V (eq:kronecker-factor-moments)."""
    rng = np.random.default_rng(seed + 31)
    rows, columns = _RECOVERY_SIZES
    factors = [_spd_with_spread_eigenvalues(rng, size) for size in _RECOVERY_SIZES]
    roots = [np.linalg.cholesky(f) for f in factors]
    true_gradient = rng.normal(size=(rows, columns))
    params = jnp.zeros((rows, columns))
    state = rule.init_state(params)
    step = jax.jit(lambda p, g, s: updates.step(p, g, s, lr=1e-3, basis_update_every=10))
    for _ in range(_RECOVERY_STEPS):
        true_gradient = true_gradient + 0.01 * rng.normal(size=(rows, columns))
        noise = roots[0] @ rng.normal(size=(rows, columns)) @ roots[1].T
        params, state = step(params, jnp.asarray(true_gradient + noise), state)
    errors = []
    for factor, basis in zip(factors, (state.row_basis, state.col_basis)):
        _, vectors = np.linalg.eigh(factor)
        cosines = np.abs(vectors.T @ np.asarray(basis)).max(axis=1)
        errors.extend(1.0 - cosines)
    return worst_case_result(
        "basis_recovery",
        [float(e) for e in errors],
        TOLERANCES["basis_recovery"],
        f"1 - worst |cos| of U's and V's eigenvectors with the bases, {_RECOVERY_STEPS} steps, "
        f"{rows} x {columns}",
    )


CHECKS = ("refresh_keeps_mean", "reduces_to_vsgd", "local_optimum", "basis_recovery")


def run_checks(
    seed: int = 0, cases: int = 50, *, updates: Updates | None = None, only: list[str] | None = None
) -> list[CheckResult]:
    """Run the checks (all, or those in ``only``), one CheckResult each, in CHECKS order."""
    names = checked_run_arguments(seed, cases, only, CHECKS)
    updates = Updates() if updates is None else updates
    with jax.enable_x64(True):
        runners = {
            "refresh_keeps_mean": lambda: _check_refresh_keeps_mean(seed, cases, updates),
            "reduces_to_vsgd": lambda: _check_reduces_to_vsgd(seed, cases, updates),
            "local_optimum": lambda: _check_local_optimum(seed, cases, updates),
            "basis_recovery": lambda: _check_basis_recovery(seed, cases, updates),
        }
        return [runners[name]() for name in CHECKS if name in names]
