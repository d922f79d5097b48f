r"""VSGD as an optax gradient transformation.

:func:`scale_by_vsgd` turns gradients into the VSGD direction
mu_t / (sqrt(mu_t^2 + sigma_t^2) + eps) by calling the closed-form rule of
:mod:`vsgd_bayes.rules.vsgd` on every leaf; :func:`vsgd` composes it with decoupled weight decay and
the learning rate exactly as :func:`optax.adamw` composes :func:`optax.scale_by_adam`. No maths
is re-implemented here: the rule is the single source of truth and this module is tested to
be bitwise equal to :func:`vsgd_bayes.rules.vsgd.step`.

Conventions of this front end (each one tested in ``tests/test_optax.py``):

* **Per-leaf step counts.** ``ScaleByVSGDState.step`` is a pytree with one int32 counter per
  leaf, so leaves are independent, as in the authors' per-parameter counter: a leaf whose
  gradient is ``None`` is skipped (its state is unchanged and its update is ``None``; note
  that :func:`optax.apply_updates` does not accept ``None`` updates, so skip them with
  ``jax.tree.map(..., is_leaf=lambda x: x is None)``), and a leaf first updated late goes
  through the step-1 branch then. Leaves masked out with :func:`optax.masked` have no state
  at all (``optax.MaskedNode``).
* **Complex leaves** are pairs of real coordinates (real part, imaginary part): their state is
  real, with a trailing axis of size 2 (``[..., 0]`` real, ``[..., 1]`` imaginary), and the
  result equals running VSGD on the real pair. Note that :func:`jax.grad` of a real loss with
  respect to a complex parameter returns the *conjugate* of dL/dx + i dL/dy; as with every
  optax optimizer, pass ``jax.tree.map(jnp.conj, grads)`` to descend.
* **Dtypes.** The state and the arithmetic use :func:`vsgd_bayes.rules.vsgd.state_dtype` (the
  gradient's dtype, at least float32); the updates are returned in the gradient's dtype
  (float32 stays float32, bfloat16 stays bfloat16).
* **Sharding.** ``init`` called outside ``jax.jit`` on sharded parameters places the state
  of real leaves with the parameters' sharding (complex leaves, with their extra axis, get the
  default placement); updates keep the gradients' sharding.
* **Validation** happens when the transformation is built, never inside jitted code; values
  that are already traced (e.g. hyperparameters injected by :func:`optax.inject_hyperparams`
  under ``jax.jit``) cannot be checked and are passed through.
* **inject_hyperparams.** ``optax.inject_hyperparams(vsgd)(learning_rate=...)`` works, also
  under ``jax.jit``: every hyperparameter, gamma and K_g included, may be traced (the shapes
  a_0, a are computed from gamma by :mod:`vsgd_bayes.hyperparameters` with plain arithmetic);
  only ``init`` must stay static.

References:
    Chen, Kuzina, Esmaeili & Tomczak, "Variational Stochastic Gradient Descent for Deep
    Neural Networks", 2024, https://arxiv.org/abs/2404.06549
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
from vsgd_bayes.rules import vsgd as rule

__all__ = ["ScaleByVSGDState", "scale_by_vsgd", "vsgd"]


class ScaleByVSGDState(NamedTuple):
    """State of :func:`scale_by_vsgd`: pytrees with the structure of the parameters.

    The field names are those of :class:`vsgd_bayes.rules.vsgd.VSGDState` and of the torch
    optimizer's state keys. A complex leaf has real ``gradient_mean``, ``drift_rate`` and
    ``noise_rate`` with a trailing axis of size 2 (real part, imaginary part).

    Attributes:
        step: per-leaf int32 step counters (t - 1 before step t).
        gradient_mean: posterior means mu of the true gradient.
        drift_rate: rates b_g of q(w_g), the precision of the true gradient's drift.
        noise_rate: rates b_ghat of q(w_ghat), the precision of the mini-batch noise.
    """

    step: Any
    gradient_mean: Any
    drift_rate: Any
    noise_rate: Any


def scale_by_vsgd(
    variance_ratio: float = hp.DEFAULTS["variance_ratio"],
    prior_strength: float = hp.DEFAULTS["prior_strength"],
    kappa1: float = hp.DEFAULTS["kappa1"],
    kappa2: float = hp.DEFAULTS["kappa2"],
    eps: float = hp.DEFAULTS["eps"],
    init: str = hp.DEFAULTS["init"],
) -> optax.GradientTransformation:
    r"""Rescale gradients by the VSGD posterior over the true gradient.

    Per coordinate the observed gradient ``g_hat`` updates the Gaussian posterior
    q(g_t) = N(mu_t, sigma_t^2) of the true gradient and the Gamma posteriors of its drift and
    noise precisions (rates ``drift_rate`` = b_g, ``noise_rate`` = b_ghat). Symbols:
    K_g = ``variance_ratio``, gamma = ``prior_strength``, kappa_1, kappa_2 = ``kappa1``,
    ``kappa2``, epsilon = ``eps``, a = prior shape a_0 at step 1 and a_0 + 1/2 afterwards
    (a_0 = gamma for ``init="paper"``, gamma + 5e-5 for ``init="reference"``, whose a_0 and
    prior rates are rounded to float32 as in the authors' code; see
    :mod:`vsgd_bayes.hyperparameters`).

    .. math::

        \sigma_t^2 &= (a/b_g + a/b_{\hat g})^{-1}, \qquad
        \mu_t = \sigma_t^2\,(a\,\mu_{t-1}/b_g + a\,\hat g_t/b_{\hat g}) \\
        b_g &\leftarrow (1-t^{-\kappa_1})\,b_g
            + t^{-\kappa_1}\left(\gamma + \tfrac12(\sigma_t^2 + (\mu_t-\mu_{t-1})^2)\right) \\
        b_{\hat g} &\leftarrow (1-t^{-\kappa_2})\,b_{\hat g}
            + t^{-\kappa_2}\left(K_g\gamma + \tfrac12(\sigma_t^2 + (\mu_t-\hat g_t)^2)\right) \\
        u_t &= \mu_t / (\sqrt{\mu_t^2 + \sigma_t^2} + \epsilon)

    The update of each leaf is computed by :func:`vsgd_bayes.rules.vsgd.posterior_update` followed
    by :func:`vsgd_bayes.rules.vsgd.normalized_direction`; see the module docstring for per-leaf
    counters, ``None`` gradients, complex leaves, dtypes and sharding.

    Args:
        variance_ratio: prior ratio K_g = Var(g_hat - g) / Var(g_t - g_{t-1}) (> 0).
        prior_strength: strength gamma of the Gamma priors on the precisions (> 0).
        kappa1: Robbins-Monro exponent of the drift rate's step size, in (0.5, 1].
        kappa2: Robbins-Monro exponent of the noise rate's step size, in (0.5, 1].
        eps: added to the denominator of the direction (>= 0).
        init: ``"reference"`` (the authors' code, default) or ``"paper"`` (Algorithm 1).

    Returns:
        An :class:`optax.GradientTransformation` whose state is a :class:`ScaleByVSGDState`.

    Raises:
        ValueError: naming the argument and its value, if a hyperparameter is invalid.

    Example:
        >>> import jax.numpy as jnp
        >>> import optax
        >>> from vsgd_bayes.optax import scale_by_vsgd
        >>> transformation = scale_by_vsgd()
        >>> params = {"w": jnp.array([1.0, -2.0])}
        >>> state = transformation.init(params)
        >>> updates, state = transformation.update({"w": jnp.array([0.3, -0.1])}, state)
        >>> state.step
        {'w': Array(1, dtype=int32)}

    References:
        Chen, Kuzina, Esmaeili & Tomczak, "Variational Stochastic Gradient Descent for Deep
        Neural Networks", 2024, Algorithm 1, https://arxiv.org/abs/2404.06549
    """
    check_unless_traced(
        variance_ratio=variance_ratio,
        prior_strength=prior_strength,
        kappa1=kappa1,
        kappa2=kappa2,
        eps=eps,
        init=init,
    )

    def init_leaf(param):
        leaf_state = rule.init_state(
            as_real(jnp.asarray(param)),
            prior_strength=prior_strength,
            variance_ratio=variance_ratio,
            init=init,
        )
        return rule.VSGDState(
            step=leaf_state.step,
            gradient_mean=place_like(leaf_state.gradient_mean, param),
            drift_rate=place_like(leaf_state.drift_rate, param),
            noise_rate=place_like(leaf_state.noise_rate, param),
        )

    def init_fn(params):
        leaf_states = jax.tree.map(init_leaf, params)
        return transpose_states(
            leaf_states, jax.tree.structure(params), rule.VSGDState, ScaleByVSGDState
        )

    def update_leaf(gradient, step, gradient_mean, drift_rate, noise_rate):
        leaf_state = rule.VSGDState(step, gradient_mean, drift_rate, noise_rate)
        if gradient is None:  # no gradient for this leaf: skip it, like torch's grad None
            return None, leaf_state
        gradient_variance, leaf_state = rule.posterior_update(
            as_real(gradient),
            leaf_state,
            variance_ratio=variance_ratio,
            prior_strength=prior_strength,
            kappa1=kappa1,
            kappa2=kappa2,
            init=init,
        )
        direction = rule.normalized_direction(
            leaf_state.gradient_mean, gradient_variance, eps
        )
        return from_real(direction, gradient.dtype), leaf_state

    def update_fn(updates, state, params=None):
        del params  # VSGD's direction does not depend on the parameters
        pairs = jax.tree.map(
            update_leaf,
            updates,
            state.step,
            state.gradient_mean,
            state.drift_rate,
            state.noise_rate,
            is_leaf=lambda x: x is None,
        )
        return unzip_updates(pairs, updates, rule.VSGDState, ScaleByVSGDState)

    return optax.GradientTransformation(init_fn, update_fn)


def vsgd(
    learning_rate: optax.ScalarOrSchedule = hp.DEFAULTS["lr"],
    variance_ratio: float = hp.DEFAULTS["variance_ratio"],
    prior_strength: float = hp.DEFAULTS["prior_strength"],
    kappa1: float = hp.DEFAULTS["kappa1"],
    kappa2: float = hp.DEFAULTS["kappa2"],
    eps: float = hp.DEFAULTS["eps"],
    weight_decay: float = hp.DEFAULTS["weight_decay"],
    mask: Any | Callable[[optax.Params], Any] | None = None,
    init: str = hp.DEFAULTS["init"],
) -> optax.GradientTransformation:
    r"""Variational Stochastic Gradient Descent (VSGD) with decoupled weight decay.

    The parameter step of the authors' optimizer, with eta = ``learning_rate``,
    lambda = ``weight_decay`` and the direction u_t of :func:`scale_by_vsgd`:

    .. math::

        \theta_t = \theta_{t-1}(1 - \eta_t\lambda) - \eta_t\,u_t
                 = \theta_{t-1} - \eta_t\,(u_t + \lambda\,\theta_{t-1})

    which is ``optax.chain(scale_by_vsgd(...), optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate))``, the way :func:`optax.adamw` is built. A
    schedule eta_t is evaluated at the number of updates so far and used for both terms, as
    the authors' code reads the current learning rate for the decay and the step. With
    ``weight_decay=0`` the result is bitwise equal to :func:`vsgd_bayes.rules.vsgd.step`; otherwise
    it equals it up to the rounding of the two algebraically equal forms above.

    Args:
        learning_rate: eta, a scalar (>= 0) or an optax schedule. VSGD's step is
            ~ eta * sign-like, as Adam's, so Adam's learning rates are a sensible start.
        variance_ratio: prior ratio K_g = Var(g_hat - g) / Var(g_t - g_{t-1}) (> 0).
        prior_strength: strength gamma of the Gamma priors on the precisions (> 0).
        kappa1: Robbins-Monro exponent of the drift rate's step size, in (0.5, 1].
        kappa2: Robbins-Monro exponent of the noise rate's step size, in (0.5, 1].
        eps: added to the denominator of the direction (>= 0).
        weight_decay: lambda, decoupled weight decay (>= 0).
        mask: as in :func:`optax.adamw`, a tree of booleans (or a function of the parameters
            returning one) selecting the leaves that are decayed.
        init: ``"reference"`` (the authors' code, default) or ``"paper"`` (Algorithm 1).

    Returns:
        An :class:`optax.GradientTransformation`.

    Raises:
        ValueError: naming the argument and its value, if a hyperparameter is invalid.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import optax
        >>> from vsgd_bayes.optax import vsgd
        >>> loss = lambda params: jnp.sum((params["w"] - 3.0) ** 2)
        >>> optimizer = vsgd(learning_rate=0.1)
        >>> params = {"w": jnp.zeros(2)}
        >>> state = optimizer.init(params)
        >>> for _ in range(500):
        ...     updates, state = optimizer.update(jax.grad(loss)(params), state, params)
        ...     params = optax.apply_updates(params, updates)
        >>> bool(jnp.allclose(params["w"], 3.0, atol=0.1))
        True

    References:
        Chen, Kuzina, Esmaeili & Tomczak, "Variational Stochastic Gradient Descent for Deep
        Neural Networks", 2024, https://arxiv.org/abs/2404.06549;
        Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    check_unless_traced(lr=learning_rate, weight_decay=weight_decay)
    return optax.chain(
        scale_by_vsgd(
            variance_ratio=variance_ratio,
            prior_strength=prior_strength,
            kappa1=kappa1,
            kappa2=kappa2,
            eps=eps,
            init=init,
        ),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
