r"""The single-tensor path of ``FactoredVSGD``: a line-by-line port of the JAX factored rule.

Each function of :mod:`vsgd_bayes.rules.factored` has its counterpart here; the local update
runs in the single-pass form of ``09_fast_paths.md`` (algebraically the rule's, fewer
temporaries), so this path agrees with the rule to float64 rounding
(``tests/test_torch_factored.py``); the foreach path (``_factored_foreach.py``) is tested
against this one. Every tensor is worked on as its matrix view (m, n)
(:func:`vsgd_bayes.hyperparameters.factored.matrix_shape`); a parameter without a column
factor has empty column rates.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.hyperparameters import factored as factored_hp
from vsgd_bayes.torch._common import step_in_state_dtype_
from vsgd_bayes.torch._single_tensor import parameter_step_, svi_blend_

__all__ = ["single_tensor_factored_vsgd", "FactoredScalars", "factored_step_scalars",
           "update_factors_", "factored_posterior_step_"]


class FactoredScalars(NamedTuple):
    """The scalars of one step: Gamma shapes before it (rows, columns), posterior shapes
    (rows, columns), and rho_{t,1}, rho_{t,2}."""

    row_shape_before: Any
    column_shape_before: Any
    row_shape: Any
    column_shape: Any
    drift_step_size: Any
    noise_step_size: Any


def factored_step_scalars(
    step_t: Tensor, prior_strength: float, kappa1: float, kappa2: float, init: str,
    rows: int, columns: int, dtype: torch.dtype,
) -> FactoredScalars:
    """The :class:`FactoredScalars` for the step count in ``step_t`` (already advanced).

    Shapes: a_0 at t = 1; a_0 + n/2 (rows), a_0 + m/2 (columns) after. Python float64 numbers
    eagerly, 0-dim tensors of ``dtype`` under ``torch.compile``.
    """
    prior_shape = hp.prior_shape(prior_strength, init)
    row_shape, column_shape = factored_hp.posterior_factor_shapes(prior_shape, rows, columns)
    if torch.compiler.is_compiling():
        step = step_t.to(dtype)
        first = step <= 1
        prior = torch.scalar_tensor(prior_shape, dtype=dtype)
        row_before = torch.where(first, prior, torch.scalar_tensor(row_shape, dtype=dtype))
        column_before = torch.where(first, prior, torch.scalar_tensor(column_shape, dtype=dtype))
    else:
        step = step_t.item()
        row_before = prior_shape if step <= 1 else row_shape
        column_before = prior_shape if step <= 1 else column_shape
    drift_step_size, noise_step_size = hp.step_sizes(step, kappa1, kappa2)
    return FactoredScalars(row_before, column_before, row_shape, column_shape,
                           drift_step_size, noise_step_size)


def expected_precision(row_shape: Any, row_rate: Tensor, column_shape: Any,
                       column_rate: Tensor) -> Tensor:
    """E[r_i] E[s_j] as (m, n), or E[r_i] as (m, 1) without columns (``expected_precision``)."""
    rows = (row_shape / row_rate).unsqueeze(1)
    if column_rate.numel() == 0:
        return rows
    return rows * (column_shape / column_rate).unsqueeze(0)


def update_factors_(
    row_rate: Tensor, column_rate: Tensor, residual: Tensor, scalars: FactoredScalars,
    prior_rate: float, prior_shape: float, step_size: Any,
) -> None:
    """In place: rows with the current columns, blended; columns with the new rows, blended;
    the gauge (``rules.factored.update_factors`` [factored-targets], [svi-blend],
    [factored-gauge]). ``residual`` (m, n) is D or N; the sums over a row or a column are
    matrix-vector products."""
    factored = column_rate.numel() > 0
    if factored:
        column_expectation = scalars.column_shape_before / column_rate
        row_target = torch.mv(residual, column_expectation).mul_(0.5).add_(prior_rate)
    else:
        row_target = residual.sum(dim=1).mul_(0.5).add_(prior_rate)
    svi_blend_(row_rate, row_target, step_size)
    if not factored:
        return
    row_expectation = scalars.row_shape / row_rate
    column_target = torch.mv(residual.t(), row_expectation).mul_(0.5).add_(prior_shape)
    svi_blend_(column_rate, column_target, step_size)
    scale = (scalars.column_shape / column_rate).mean()  # c = mean_j E[s_j]
    column_rate.mul_(scale)
    row_rate.div_(scale)


def factored_posterior_step_(
    grad: Tensor, gradient_mean: Tensor, drift_rows: Tensor, drift_columns: Tensor,
    noise_rows: Tensor, noise_columns: Tensor, step_t: Tensor, *, variance_ratio: float,
    prior_strength: float, kappa1: float, kappa2: float, init: str, factorization: str,
    maximize: bool,
) -> Tensor:
    """One tensor's posterior step in place (mu and the four rate vectors), at the step count
    in ``step_t`` (already advanced); returns sigma^2 in the shape of ``gradient_mean``.
    ``grad`` is the (real) gradient, read in the state dtype as its matrix view (m, n); the
    single-tensor and foreach paths both call this.

    The single-pass form of ``09_fast_paths.md`` with the factored precisions: with
    k = E[w_ghat] / (E[w_g] + E[w_ghat]) and e = g_hat - u, mu = u + k e [fast-gain],
    [fast-mean], sigma^2 = 1 / (E[w_g] + E[w_ghat]) [factored-local], and the residuals
    D = sigma^2 + (k e)^2, N = sigma^2 + ((1 - k) e)^2 [fast-residuals]; algebraically the
    rule's (eq:factored-local), in four (m, n) temporaries.
    """
    dtype = gradient_mean.dtype
    rows, columns = factored_hp.matrix_shape(tuple(grad.shape), factorization)
    scalars = factored_step_scalars(step_t, prior_strength, kappa1, kappa2, init, rows,
                                    columns, dtype)
    drift_prior_rate, noise_prior_rate = hp.prior_rates(prior_strength, variance_ratio, init)
    prior_shape = hp.prior_shape(prior_strength, init)
    gradient = grad.to(dtype).reshape(rows, columns)
    if maximize:
        gradient = -gradient
    mean = gradient_mean.reshape(rows, columns)  # a view when contiguous, else a copy
    drift_precision = expected_precision(
        scalars.row_shape_before, drift_rows, scalars.column_shape_before, drift_columns)
    gain = expected_precision(
        scalars.row_shape_before, noise_rows, scalars.column_shape_before, noise_columns)
    variance = (drift_precision + gain).reciprocal_().expand(rows, columns)
    gain = gain.mul(variance) if gain.shape != variance.shape else gain.mul_(variance)
    error = gradient - mean  # e
    drift_step = gain.mul_(error)  # k e = mu - u
    noise_step = error.sub_(drift_step)  # (1 - k) e = g_hat - mu
    if gradient_mean.is_contiguous():  # mean is a view of it: update in place
        mean.add_(drift_step)
    else:
        gradient_mean.copy_((mean + drift_step).reshape(gradient_mean.shape))
    drift_residual = drift_step.square_().add_(variance)
    noise_residual = noise_step.square_().add_(variance)
    update_factors_(drift_rows, drift_columns, drift_residual, scalars, drift_prior_rate,
                    prior_shape, scalars.drift_step_size)
    update_factors_(noise_rows, noise_columns, noise_residual, scalars, noise_prior_rate,
                    prior_shape, scalars.noise_step_size)
    return variance.reshape(gradient_mean.shape)


def single_tensor_factored_vsgd(
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    drift_row_rates: list[Tensor],
    drift_column_rates: list[Tensor],
    noise_row_rates: list[Tensor],
    noise_column_rates: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
    variance_ratio: float,
    prior_strength: float,
    kappa1: float,
    kappa2: float,
    weight_decay: float,
    eps: float,
    init: str,
    factorization: str,
    maximize: bool,
) -> None:
    """One Factored VSGD step on each parameter, one tensor at a time, in place.

    Real tensors only (the caller views complex ones as real); arithmetic in the state dtype;
    gradients are never modified; hyperparameters are not validated here.
    """
    for param, grad, gradient_mean, drift_rows, drift_columns, noise_rows, noise_columns, \
            step_t in zip(params, grads, gradient_means, drift_row_rates, drift_column_rates,
                          noise_row_rates, noise_column_rates, steps):
        step_t += 1
        variance = factored_posterior_step_(
            grad, gradient_mean, drift_rows, drift_columns, noise_rows, noise_columns, step_t,
            variance_ratio=variance_ratio, prior_strength=prior_strength, kappa1=kappa1,
            kappa2=kappa2, init=init, factorization=factorization, maximize=maximize)
        # [parameter-step], VSGD's
        step_in_state_dtype_(
            param,
            gradient_mean.dtype,
            lambda p: parameter_step_(p, gradient_mean, variance, lr, weight_decay, eps),
        )
