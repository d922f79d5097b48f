r"""Curvature Kalman VSGD as an optax gradient transformation.

:func:`scale_by_curvature_kalman_vsgd` turns gradients into Curvature Kalman VSGD's step
rho_t * m_g / sqrt(m_g^2 + V_t) by calling :func:`vsgd_bayes.rules.curvature.posterior_update`,
:func:`vsgd_bayes.rules.curvature.rate_of` and
:func:`vsgd_bayes.rules.kalman.normalized_direction` on every leaf; :func:`curvature_kalman_vsgd`
composes it with decoupled weight decay and the sign. No maths is re-implemented here (tested
bitwise equal to :func:`vsgd_bayes.rules.curvature.step` eagerly, and within 1e-14 of each
array's largest value with both jitted, where XLA fuses the two programs' expressions
differently: the jitted rule is not bitwise its own eager self either). The conventions are
those of :mod:`vsgd_bayes.optax`: per-leaf step counters, ``None`` gradients skip their leaf,
complex leaves are real pairs on a trailing axis of size 2, state dtype at least float32,
validation when built.

Two things set this method apart from :mod:`vsgd_bayes.optax.kalman`, and shape its interface:

* **The point of the gradient.** The model's known input is the displacement Delta_t of the
  point at which each gradient was taken ([curvature-predict]), so ``update`` needs
  ``params`` (the parameters at which ``updates`` were computed; a ``ValueError`` naming
  ``params`` otherwise, as optax's transformations that need them raise) and the state keeps
  the previous point.
* **The learning rate is part of the step, not a scale after it.** The rate is lr or, with
  ``curvature_step="trust_region"``, min(lr, abs(m_g) / m_h) [curvature-trust-region], and
  lr also sets the unit of the curvature's starting ratio lambda_h,0 =
  ``initial_curvature_drift_to_noise`` / lr^2. So the scale transformation takes
  ``learning_rate`` (a float or an optax schedule, evaluated at ``count``, the number of
  updates so far, as :func:`optax.scale_by_learning_rate` evaluates it) and returns
  rho_t * direction; :func:`curvature_kalman_vsgd` then adds lr_t lambda_wd theta and flips
  the sign, which keeps the step bitwise the rule's (lr * (rho / lr * direction) would round
  differently wherever the trust region binds).

References:
    Chen, Kuzina, Esmaeili & Tomczak, "Variational Stochastic Gradient Descent for Deep Neural
    Networks", 2024, https://arxiv.org/abs/2404.06549; Ljung, "Analysis of recursive
    stochastic algorithms", IEEE TAC 1977 (the recursive prediction-error method);
    ``derivations/15_curvature_kalman_vsgd.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.optax._common import (
    as_real,
    check_unless_traced,
    from_real,
    place_like,
    transpose_states,
    unzip_updates,
)
from vsgd_bayes.rules import curvature as curvature_rule
from vsgd_bayes.rules.kalman import normalized_direction

__all__ = [
    "ScaleByCurvatureKalmanVSGDState",
    "scale_by_curvature_kalman_vsgd",
    "curvature_kalman_vsgd",
]

_DEFAULTS = hp.CURVATURE_DEFAULTS
_RULE_STATE = curvature_rule.CurvatureKalmanVSGDState


class ScaleByCurvatureKalmanVSGDState(NamedTuple):
    """State of :func:`scale_by_curvature_kalman_vsgd`: pytrees with the structure of the
    parameters, one per field of :class:`vsgd_bayes.rules.curvature.CurvatureKalmanVSGDState`
    (in its order), and the update count of the learning rate.

    A complex leaf has real fields with a trailing axis of size 2 (real part, imaginary part)
    after the rule's leading axes (``ratio_sensitivities``: ``(2, 5) + shape + (2,)``).

    Attributes:
        step: per-leaf int32 step counters (t - 1 before step t; a ``None`` gradient does not
            advance its leaf's).
        count: the number of updates so far (int32 scalar, every leaf's): a schedule
            ``learning_rate`` is evaluated at it, as :func:`optax.scale_by_learning_rate`
            evaluates one, so that every leaf takes the same lr_t, as in a torch param group.
    """

    step: Any
    gradient_mean: Any
    curvature_mean: Any
    gradient_variance: Any
    cross_covariance: Any
    curvature_variance: Any
    noise_variance: Any
    log_drift_to_noise: Any
    log_curvature_drift_to_noise: Any
    ratio_sensitivities: Any
    ratio_information: Any
    previous_point: Any
    count: Any


_NO_PARAMS = (
    "scale_by_curvature_kalman_vsgd needs params: call update(updates, state, params) with the "
    "parameters at which the gradients were taken (the model's input is their displacement)"
)


def _with_count(fields, count) -> ScaleByCurvatureKalmanVSGDState:
    # ``fields``: a rule state whose fields hold trees (transpose_states' result).
    return ScaleByCurvatureKalmanVSGDState(*fields, count=count)


def _learning_rate_at(learning_rate, count):
    return learning_rate(count) if callable(learning_rate) else learning_rate


def scale_by_curvature_kalman_vsgd(
    learning_rate: optax.ScalarOrSchedule = _DEFAULTS["lr"],
    initial_drift_to_noise: float = _DEFAULTS["initial_drift_to_noise"],
    initial_curvature_drift_to_noise: float = _DEFAULTS["initial_curvature_drift_to_noise"],
    ratio_step_scale: float = _DEFAULTS["ratio_step_scale"],
    max_ratio_change: float = _DEFAULTS["max_ratio_change"],
    kappa: float = _DEFAULTS["kappa"],
    eps: float = _DEFAULTS["eps"],
    step_variance: str = _DEFAULTS["step_variance"],
    curvature_step: str = _DEFAULTS["curvature_step"],
    initial_learning_rate: float | None = None,
) -> optax.GradientTransformation:
    r"""Turn gradients into Curvature Kalman VSGD's step, oriented like a gradient (the
    parameters move by minus it).

    Per coordinate: an exact 2 x 2 Kalman filter of the true gradient g and its curvature h
    along the step, g_t = g_(t-1) + h_(t-1) Delta_t + w_g, h_t = h_(t-1) + w_h, g_hat_t = g_t + v,
    with Delta_t the move of ``params`` since the previous gradient; the ratios lambda_g =
    q_g / r, lambda_h = q_h / r learned by the recursive prediction-error method, r by its
    running maximum likelihood (``derivations/15_curvature_kalman_vsgd.md``). Symbols:
    eta_t = ``learning_rate`` at ``count``, lambda_g,0 = ``initial_drift_to_noise``,
    lambda_h,0 eta_0^2 = ``initial_curvature_drift_to_noise``, c = ``ratio_step_scale``,
    Delta_phi = ``max_ratio_change``, kappa = ``kappa``, epsilon = ``eps``.

    .. math::

        u_t = \rho_t\,\frac{m_g}{\max(\sqrt{m_g^2 + V_t} + \epsilon,\ \mathrm{tiny})},\qquad
        \rho_t = \eta_t \ \text{or}\ \min(\eta_t, |m_g| / m_h)\ \text{where}\ m_h > 0

    with V_t = r (P_gg + lambda_g + 1) (``step_variance="predictive"``) or r P_gg
    (``"posterior"``) [curvature-step-variance], [curvature-trust-region]. Each leaf is
    :func:`vsgd_bayes.rules.curvature.posterior_update` at its parameter, then
    :func:`vsgd_bayes.rules.curvature.rate_of` and
    :func:`vsgd_bayes.rules.kalman.normalized_direction`, the product rho_t * direction of
    :func:`vsgd_bayes.rules.curvature.parameter_step` [parameter-step].

    Args:
        learning_rate: eta, a scalar (>= 0) or an optax schedule of the update count: the
            rate of the step (and the trust region's radius).
        initial_drift_to_noise: lambda_g,0 = q_g / r at the start, in [1e-12, 1e12].
        initial_curvature_drift_to_noise: lambda_h,0 eta_0^2, in [1e-12, 1e12]: the
            curvature's drift against the noise, per unit of the first step's squared rate.
        ratio_step_scale: c of the Gauss-Newton steps c / t on ln lambda_g, ln lambda_h (>= 0).
        max_ratio_change: Delta_phi, the largest change of a ln lambda in one step (> 0).
        kappa: exponent of the averaging weight t^-kappa of r and of the information, in
            (0.5, 1].
        eps: added to the direction's denominator (>= 0; 0 keeps it scale-invariant).
        step_variance: ``"predictive"`` (default) or ``"posterior"``: V_t above.
        curvature_step: ``"none"`` (rate eta_t, default) or ``"trust_region"`` (rate
            min(eta_t, abs(m_g) / m_h) where the posterior curvature m_h > 0).
        initial_learning_rate: eta_0, the rate whose square is the unit of lambda_h,0 (>= 0;
            0 counts as 1). Default: ``learning_rate``, or a schedule's value at count 0. Pass
            the base rate when a schedule starts low (a warm-up): torch's ``initial_lr``, which
            a torch scheduler records and
            :class:`vsgd_bayes.torch.curvature.CurvatureKalmanVSGD` reads.

    Returns:
        An :class:`optax.GradientTransformation` with a
        :class:`ScaleByCurvatureKalmanVSGDState`; its ``update`` requires ``params``.

    Raises:
        ValueError: naming the argument and its value, if a hyperparameter is invalid (when
            built); naming ``params``, if ``update`` is called without them.

    Example:
        >>> import jax.numpy as jnp
        >>> transformation = scale_by_curvature_kalman_vsgd(learning_rate=0.1)
        >>> params = {"w": jnp.zeros(2)}
        >>> state = transformation.init(params)
        >>> updates, state = transformation.update({"w": jnp.array([0.3, -0.1])}, state, params)
        >>> state.step, state.count
        ({'w': Array(1, dtype=int32)}, Array(1, dtype=int32))

    References:
        Ljung, "Analysis of recursive stochastic algorithms", IEEE TAC 1977;
        ``derivations/15_curvature_kalman_vsgd.md``.
    """
    check_unless_traced(
        lr=learning_rate,
        initial_drift_to_noise=initial_drift_to_noise,
        initial_curvature_drift_to_noise=initial_curvature_drift_to_noise,
        ratio_step_scale=ratio_step_scale,
        max_ratio_change=max_ratio_change,
        kappa=kappa,
        eps=eps,
        step_variance=step_variance,
        curvature_step=curvature_step,
    )
    if initial_learning_rate is not None:
        check_unless_traced(initial_learning_rate=initial_learning_rate)

    def init_leaf(param, lr):
        leaf = curvature_rule.init_state(
            as_real(jnp.asarray(param)), lr, initial_drift_to_noise,
            initial_curvature_drift_to_noise,
        )
        return leaf._replace(**{
            name: place_like(getattr(leaf, name), param) for name in _RULE_STATE._fields[1:]
        })

    def init_fn(params):
        # the rate is read here, not when built: under inject_hyperparams and jit the
        # transformation is rebuilt with a traced rate at every update (init stays static)
        lr = initial_learning_rate
        if lr is None:
            lr = _learning_rate_at(learning_rate, jnp.zeros([], jnp.int32))
        fields = transpose_states(
            jax.tree.map(lambda param: init_leaf(param, lr), params),
            jax.tree.structure(params),
            _RULE_STATE,
            _RULE_STATE,
        )
        return _with_count(fields, jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(_NO_PARAMS)
        lr = _learning_rate_at(learning_rate, state.count)

        def update_leaf(gradient, point, *fields):
            leaf_state = _RULE_STATE(*fields)
            if gradient is None:  # no gradient for this leaf: skip it, like torch's grad None
                return None, leaf_state
            gradient_variance, leaf_state = curvature_rule.posterior_update(
                as_real(gradient),
                as_real(jnp.asarray(point)),
                leaf_state,
                ratio_step_scale=ratio_step_scale,
                max_ratio_change=max_ratio_change,
                kappa=kappa,
                step_variance=step_variance,
            )
            rate = curvature_rule.rate_of(
                leaf_state.gradient_mean, leaf_state.curvature_mean, lr, curvature_step
            )
            direction = normalized_direction(leaf_state.gradient_mean, gradient_variance, eps)
            return from_real(rate * direction, gradient.dtype), leaf_state

        pairs = jax.tree.map(
            update_leaf, updates, params, *state[:-1], is_leaf=lambda x: x is None
        )
        new_updates, fields = unzip_updates(pairs, updates, _RULE_STATE, _RULE_STATE)
        return new_updates, _with_count(fields, optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def curvature_kalman_vsgd(
    learning_rate: optax.ScalarOrSchedule = _DEFAULTS["lr"],
    initial_drift_to_noise: float = _DEFAULTS["initial_drift_to_noise"],
    initial_curvature_drift_to_noise: float = _DEFAULTS["initial_curvature_drift_to_noise"],
    ratio_step_scale: float = _DEFAULTS["ratio_step_scale"],
    max_ratio_change: float = _DEFAULTS["max_ratio_change"],
    kappa: float = _DEFAULTS["kappa"],
    eps: float = _DEFAULTS["eps"],
    weight_decay: float = _DEFAULTS["weight_decay"],
    mask: Any | Callable[[optax.Params], Any] | None = None,
    step_variance: str = _DEFAULTS["step_variance"],
    curvature_step: str = _DEFAULTS["curvature_step"],
    initial_learning_rate: float | None = None,
) -> optax.GradientTransformation:
    r"""Curvature Kalman VSGD with decoupled weight decay:
    ``chain(scale_by_curvature_kalman_vsgd(learning_rate, ...),
    add_decayed_weights(eta_t * weight_decay, mask), scale(-1))``.

    .. math::

        \theta_t = \theta_{t-1} - (u_t + \eta_t\lambda_{wd}\,\theta_{t-1})
                 = \theta_{t-1}(1 - \eta_t\lambda_{wd}) - u_t

    with u_t = rho_t * direction of :func:`scale_by_curvature_kalman_vsgd`. The decay is
    scaled by eta_t (a schedule evaluated at the same update count), as
    :func:`vsgd_bayes.optax.vsgd` and torch do, not by the trust region's rho_t. With
    ``weight_decay=0`` the result is bitwise equal to :func:`vsgd_bayes.rules.curvature.step`
    (eagerly; see the module docstring for ``jax.jit``); otherwise it equals it up to the
    rounding of the two algebraically equal forms above.
    ``update`` requires ``params`` (the parameters at which the gradients were taken).

    The arguments not listed below are those of :func:`scale_by_curvature_kalman_vsgd`.

    Args:
        learning_rate: eta, a scalar (>= 0) or an optax schedule of the update count: the
            step's rate, the trust region's radius and the decay's factor.
        weight_decay: lambda_wd, decoupled weight decay (>= 0).
        mask: as in :func:`optax.adamw`, a tree of booleans (or a function of the parameters
            returning one) selecting the leaves that are decayed.

    Returns:
        An :class:`optax.GradientTransformation`.

    Raises:
        ValueError: naming the argument and its value, if a hyperparameter is invalid.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> loss = lambda params: jnp.sum((params["w"] - 3.0) ** 2)
        >>> optimizer = curvature_kalman_vsgd(learning_rate=0.1, curvature_step="trust_region")
        >>> params = {"w": jnp.zeros(2)}
        >>> state = optimizer.init(params)
        >>> for _ in range(500):
        ...     updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(jnp.allclose(params["w"], 3.0, atol=0.1))
        True

    References:
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    check_unless_traced(lr=learning_rate, weight_decay=weight_decay)
    if callable(learning_rate):
        decay = lambda count: weight_decay * learning_rate(count)
    else:
        decay = weight_decay * learning_rate
    return optax.chain(
        scale_by_curvature_kalman_vsgd(
            learning_rate=learning_rate,
            initial_drift_to_noise=initial_drift_to_noise,
            initial_curvature_drift_to_noise=initial_curvature_drift_to_noise,
            ratio_step_scale=ratio_step_scale,
            max_ratio_change=max_ratio_change,
            kappa=kappa,
            eps=eps,
            step_variance=step_variance,
            curvature_step=curvature_step,
            initial_learning_rate=initial_learning_rate,
        ),
        optax.add_decayed_weights(decay, mask),
        optax.scale(-1.0),
    )
