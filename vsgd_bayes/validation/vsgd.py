r"""``vsgd-bayes validate``: check the closed-form updates of the rule against the ELBO.

The closed-form updates in :mod:`vsgd_bayes.rules.vsgd` (local update, global targets, SVI blend)
are claimed to be coordinate-ascent and natural-gradient steps on the one-step ELBO of
:mod:`vsgd_bayes.rules.elbo`, which in turn is claimed to be the ELBO of the NumPyro model
:func:`vsgd_bayes.models.vsgd.one_step_model` with the guide
:func:`vsgd_bayes.models.vsgd.one_step_guide`.
Seven checks, each over randomly drawn cases (float64, wide log-ranges, both signs, both
initialisations a_0 = gamma and gamma + 5e-5):

1. ``local_stationary``: the ELBO gradient w.r.t. (mu, ln sigma^2) vanishes at
   ``rule.local_update``.
2. ``global_stationary``: the ELBO gradient w.r.t. (ln a, ln b) of each Gamma vanishes at
   a' = a_0 + 1/2, b' = ``rule.global_targets``.
3. ``natural_gradient``: ``rule.svi_blend`` equals lambda + rho F(lambda)^-1 grad_lambda ELBO for
   the Gamma natural parameters lambda = (a - 1, -b), F the Hessian of ln Gamma(a) - a ln b.
4. ``coordinate_ascent``: no exact CAVI update (local, drift, noise) decreases the ELBO.
5. ``elbo_estimator``: NumPyro's ``Trace_ELBO`` of model + guide agrees with the closed form.
6. ``svi_converges``: NumPyro ``SVI`` from a perturbed start reaches ``elbo.cavi_optimum``.
7. ``composed_step``: ``rule.posterior_update`` and ``rule.step`` over several steps from
   ``rule.init_state``, for both starts, equal the pieces composed by hand from
   :mod:`vsgd_bayes.hyperparameters` (the shape a_0 at t = 1 and a_0 + 1/2 after it,
   rho_t = t^(-kappa)): the composition, which checks 1-6 take apart, is checked whole.

Errors of checks 1-2 are Newton steps -H^-1 grad (the distance to the stationary point that
the local curvature predicts): relative to the data scale ``|mu_{t-1}| + |g_hat|`` for mu and
absolute for log-parameters. That is dimensionless and does not blow up where the gradient's
terms nearly cancel (a gain k ~ 1e-12 leaves mu - mu_{t-1} with a relative rounding error of
~1e-4, which a gradient-relative measure would flag although mu itself is exact to 1 ulp).

Usage::

    vsgd-bayes validate [--seed 0] [--cases 50] [--json PATH]

Example:
    >>> results = run_checks(seed=0, cases=50)  # doctest: +SKIP
    >>> all(result.passed for result in results)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import gammaln
from numpyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from numpyro.optim import optax_to_numpyro

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.models.vsgd import guide_variational, one_step_guide, one_step_model
from vsgd_bayes.rules import elbo as elbo_module
from vsgd_bayes.rules import vsgd as rule
from vsgd_bayes.rules.elbo import OneStepVariational
from vsgd_bayes.validation.harness import (
    CheckResult,
    checked_run_arguments,
    format_table,
    log_uniform,
    signed_log_uniform,
    worst_case_result,
)

__all__ = [
    "CheckResult",
    "Updates",
    "CHECKS",
    "draw_cases",
    "run_checks",
    "format_table",
    "TOLERANCES",
]

#: Tolerance of each check, with its reason.
TOLERANCES: dict[str, float] = {
    # Newton steps in units of the data scale / of log-parameters: the float64 floor measured
    # over 10^4 cases is ~1e-15; 1e-9 leaves a wide margin and is far below any wrong weight.
    "local_stationary": 1e-9,
    "global_stationary": 1e-9,
    # Relative difference of (a, b): solving with F loses ~2a ulps (det F ~ 1/(2a b^2)).
    "natural_gradient": 1e-9,
    # ELBO decrease relative to the sum of |terms|: a few ulps of rounding, nothing more.
    "coordinate_ascent": 1e-12,
    # Largest |z| over the cases (see _check_elbo_estimator for the false-alarm rate).
    "elbo_estimator": 4.0,
    # Largest distance to the optimum, from 3.0 at the start (see _check_svi_converges).
    "svi_converges": 0.2,
    # Relative difference from the hand composition: the same float64 formulas, possibly in
    # another operation order, so a few ulps; a wrong shape or exponent is off by >= 1e-6.
    "composed_step": 1e-12,
}


class Updates(NamedTuple):
    """The closed-form updates under test (defaults: the rule's). A test hook: a test passes a
    deliberately broken function to show that the matching check fails."""

    local_update: Callable = rule.local_update
    global_targets: Callable = rule.global_targets
    svi_blend: Callable = rule.svi_blend
    one_step_elbo: Callable = elbo_module.one_step_elbo
    posterior_update: Callable = rule.posterior_update
    step: Callable = rule.step


# --------------------------------------------------------------------------------------------
# Random cases
# --------------------------------------------------------------------------------------------


def draw_cases(seed: int, cases: int) -> dict[str, np.ndarray]:
    """Random one-step problems and VSGD states over wide log-ranges (float64 numpy arrays).

    mu_{t-1}, g_hat: +-[1e-6, 1e3]; rates b_g, b_ghat: [1e-10, 1e4]; gamma: [1e-10, 10];
    K_g: [0.1, 1e4]; the two initialisations alternate (a_0 = gamma, gamma + 5e-5); the shape
    before the step is a_0 (step 1) or a_0 + 1/2 at random; rho in (0, 1]; q(g) for the
    checks that start from an arbitrary q: mu anywhere between/around mu_{t-1} and g_hat,
    sigma^2 in [1e-12, 1e6]; Gamma shapes of an arbitrary q in [1e-2, 1e2].
    """
    rng = np.random.default_rng(seed)
    prior_strength = log_uniform(rng, 1e-10, 10.0, cases)
    inits = [hp.INITS[i % len(hp.INITS)] for i in range(cases)]
    prior_shape = np.array([hp.prior_shape(g, init) for g, init in zip(prior_strength, inits)])
    gradient_mean_prev = signed_log_uniform(rng, 1e-6, 1e3, cases)
    gradient = signed_log_uniform(rng, 1e-6, 1e3, cases)
    first_step = rng.random(cases) < 0.5
    return dict(
        gradient_mean_prev=gradient_mean_prev,
        gradient=gradient,
        prior_strength=prior_strength,
        variance_ratio=log_uniform(rng, 0.1, 1e4, cases),
        prior_shape=prior_shape,
        init_is_reference=np.array([init == "reference" for init in inits]),
        shape_before_step=np.where(first_step, prior_shape, prior_shape + 0.5),
        drift_rate=log_uniform(rng, 1e-10, 1e4, cases),
        noise_rate=log_uniform(rng, 1e-10, 1e4, cases),
        step_size=1.0 - rng.random(cases),  # in (0, 1]
        # An arbitrary q(g) and Gamma shapes, for checks that start anywhere.
        gradient_mean=gradient_mean_prev + rng.uniform(-0.5, 1.5, cases) * (
            gradient - gradient_mean_prev
        ),
        gradient_variance=log_uniform(rng, 1e-12, 1e6, cases),
        drift_shape=log_uniform(rng, 1e-2, 1e2, cases),
        noise_shape=log_uniform(rng, 1e-2, 1e2, cases),
        # Current rate / its CAVI target, for the natural-gradient check (see there).
        drift_rate_over_target=log_uniform(rng, 1e-3, 1e3, cases),
        noise_rate_over_target=log_uniform(rng, 1e-3, 1e3, cases),
    )


def _problem(case):
    """(mu_{t-1}, g_hat, gamma, K_g, a_0): the arguments of the one-step ELBO."""
    return (
        case["gradient_mean_prev"],
        case["gradient"],
        case["prior_strength"],
        case["variance_ratio"],
        case["prior_shape"],
    )


def _elbo_terms_sum(q, problem):
    """Per-case sum of |terms| of the ELBO: its scale."""
    terms = elbo_module.one_step_elbo_terms(q, *problem)
    return sum(jnp.abs(term) for term in terms)


def _newton_step(objective, x):
    """-H^-1 grad of a scalar objective at x (the step to its stationary point)."""
    gradient = jax.grad(objective)(x)
    hessian = jax.hessian(objective)(x)
    return -jnp.linalg.solve(hessian, gradient)


# --------------------------------------------------------------------------------------------
# Checks 1-4: deterministic, per case (vmapped)
# --------------------------------------------------------------------------------------------


def _check_local_stationary(cases, updates: Updates) -> CheckResult:
    def error(case):
        problem = _problem(case)
        mean_prev, gradient = problem[0], problem[1]
        shape = case["shape_before_step"]
        mean, variance = updates.local_update(
            mean_prev, case["drift_rate"], case["noise_rate"], gradient, shape
        )

        def objective(x):
            q = OneStepVariational(
                x[0], jnp.exp(x[1]), shape, case["drift_rate"], shape, case["noise_rate"]
            )
            return elbo_module.one_step_elbo(q, *problem)

        step = _newton_step(objective, jnp.stack([mean, jnp.log(variance)]))
        data_scale = jnp.abs(mean_prev) + jnp.abs(gradient)
        return jnp.maximum(jnp.abs(step[0]) / data_scale, jnp.abs(step[1]))

    errors = jax.jit(jax.vmap(error))(cases)
    return _result("local_stationary", errors, "max Newton step in (mu/|data|, ln sigma^2)")


def _local_then_targets(case, updates: Updates):
    """q(g) at the local update from the case's state, then the global targets."""
    problem = _problem(case)
    shape = case["shape_before_step"]
    mean, variance = updates.local_update(
        problem[0], case["drift_rate"], case["noise_rate"], problem[1], shape
    )
    drift_target, noise_target = updates.global_targets(mean, variance, *problem[:4])
    return mean, variance, drift_target, noise_target


def _check_global_stationary(cases, updates: Updates) -> CheckResult:
    def error(case):
        problem = _problem(case)
        mean, variance, drift_target, noise_target = _local_then_targets(case, updates)
        shape_target = case["prior_shape"] + 0.5
        optimum = OneStepVariational(
            mean, variance, shape_target, drift_target, shape_target, noise_target
        )

        def drift_objective(x):
            q = optimum._replace(drift_shape=jnp.exp(x[0]), drift_rate=jnp.exp(x[1]))
            return elbo_module.one_step_elbo(q, *problem)

        def noise_objective(x):
            q = optimum._replace(noise_shape=jnp.exp(x[0]), noise_rate=jnp.exp(x[1]))
            return elbo_module.one_step_elbo(q, *problem)

        drift_step = _newton_step(drift_objective, jnp.log(jnp.stack([shape_target, drift_target])))
        noise_step = _newton_step(noise_objective, jnp.log(jnp.stack([shape_target, noise_target])))
        return jnp.maximum(jnp.max(jnp.abs(drift_step)), jnp.max(jnp.abs(noise_step)))

    errors = jax.jit(jax.vmap(error))(cases)
    return _result("global_stationary", errors, "max Newton step in (ln a, ln b), both Gammas")


def _gamma_log_normaliser(natural):
    """A(lambda) = ln Gamma(a) - a ln b with lambda = (a - 1, -b), sufficient stats (ln w, w)."""
    shape, rate = natural[0] + 1.0, -natural[1]
    return gammaln(shape) - shape * jnp.log(rate)


def _check_natural_gradient(cases, updates: Updates) -> CheckResult:
    def error(case):
        problem = _problem(case)
        # Arbitrary current q: q(g) anywhere, Gammas with arbitrary shapes, and rates within
        # 1e-3..1e3 of their targets b'. (Further away, F^-1 grad recovers a' - a from gradient
        # components ~b'/b larger that cancel, and float64 loses log10(b'/b) digits: at
        # b'/b ~ 1e13 the check would measure rounding, not the update.)
        q = OneStepVariational(
            case["gradient_mean"],
            case["gradient_variance"],
            case["drift_shape"],
            jnp.ones(()),
            case["noise_shape"],
            jnp.ones(()),
        )
        rho = case["step_size"]
        drift_target, noise_target = updates.global_targets(
            q.gradient_mean, q.gradient_variance, *problem[:4]
        )
        q = q._replace(
            drift_rate=drift_target * case["drift_rate_over_target"],
            noise_rate=noise_target * case["noise_rate_over_target"],
        )
        shape_target = case["prior_shape"] + 0.5

        def relative_gap(shape, rate, rate_target, replace):
            def objective(natural):
                return elbo_module.one_step_elbo(
                    replace(natural[0] + 1.0, -natural[1]), *problem
                )

            natural = jnp.stack([shape - 1.0, -rate])
            fisher = jax.hessian(_gamma_log_normaliser)(natural)
            natural_gradient = jnp.linalg.solve(fisher, jax.grad(objective)(natural))
            stepped = natural + rho * natural_gradient
            blended_shape = updates.svi_blend(shape, shape_target, rho)
            blended_rate = updates.svi_blend(rate, rate_target, rho)
            return jnp.maximum(
                jnp.abs(stepped[0] + 1.0 - blended_shape) / blended_shape,
                jnp.abs(-stepped[1] - blended_rate) / blended_rate,
            )

        drift = relative_gap(
            q.drift_shape,
            q.drift_rate,
            drift_target,
            lambda a, b: q._replace(drift_shape=a, drift_rate=b),
        )
        noise = relative_gap(
            q.noise_shape,
            q.noise_rate,
            noise_target,
            lambda a, b: q._replace(noise_shape=a, noise_rate=b),
        )
        return jnp.maximum(drift, noise)

    errors = jax.jit(jax.vmap(error))(cases)
    return _result("natural_gradient", errors, "max relative gap in (a, b), both Gammas")


#: Rounds of (local, drift, noise) updates in the coordinate-ascent check.
_ASCENT_ROUNDS = 4


def _check_coordinate_ascent(cases, updates: Updates) -> CheckResult:
    def error(case):
        problem = _problem(case)
        # Start anywhere, with a common Gamma shape (VSGD's q(w_g), q(w_ghat) share theirs).
        q = OneStepVariational(
            case["gradient_mean"],
            case["gradient_variance"],
            case["drift_shape"],
            case["drift_rate"],
            case["drift_shape"],
            case["noise_rate"],
        )
        worst = jnp.zeros(())
        for _ in range(_ASCENT_ROUNDS):
            for update in ("local", "drift", "noise"):
                before = updates.one_step_elbo(q, *problem)
                scale = _elbo_terms_sum(q, problem)
                if update == "local":
                    q = elbo_module.local_step(q, *problem[:2], local_update=updates.local_update)
                else:
                    q = elbo_module.global_step(
                        q,
                        *problem,
                        update_drift=update == "drift",
                        update_noise=update == "noise",
                        global_targets=updates.global_targets,
                    )
                after = updates.one_step_elbo(q, *problem)
                worst = jnp.maximum(worst, (before - after) / scale)
        return worst

    errors = jax.jit(jax.vmap(error))(cases)
    return _result(
        "coordinate_ascent",
        errors,
        f"max ELBO decrease / sum|terms| over {_ASCENT_ROUNDS} rounds of local, drift, noise",
    )


# --------------------------------------------------------------------------------------------
# Check 5: NumPyro's Monte-Carlo ELBO against the closed form
# --------------------------------------------------------------------------------------------

#: Independent Monte-Carlo estimates per case, each from _ESTIMATOR_PARTICLES particles.
#: The standard error comes from the spread of the 200 estimates (a t-statistic with 199 degrees
#: of freedom, practically normal), and each estimate averages 50 particles so it is close to
#: normal even for the skewed log-densities. Under a correct closed form P(|z| > 4) ~ 6.3e-5
#: per case, so the chance that any of 50 cases exceeds 4 is <= 3.2e-3 (Bonferroni): a false
#: alarm is unlikely, and with the key fixed by --seed the outcome is deterministic. The SE is
#: ~1e-2 of the ELBO's per-case scale, so an error in any term of that size or more is caught.
_ESTIMATES = 200
_ESTIMATOR_PARTICLES = 50


def _check_elbo_estimator(seed, cases, updates: Updates) -> CheckResult:
    num_cases = len(cases["gradient"])
    rng = np.random.default_rng(seed + 1)
    # q with moderate shapes: a Gamma sample with shape << 1 underflows to 0 in float64 and the
    # Monte-Carlo ln w would be -inf; the closed form is checked at small shapes by checks 1-4.
    q = OneStepVariational(
        gradient_mean=cases["gradient_mean"],
        gradient_variance=cases["gradient_variance"],
        drift_shape=log_uniform(rng, 0.3, 30.0, num_cases),
        drift_rate=cases["drift_rate"],
        noise_shape=log_uniform(rng, 0.3, 30.0, num_cases),
        noise_rate=cases["noise_rate"],
    )
    estimator = Trace_ELBO(num_particles=_ESTIMATOR_PARTICLES, vectorize_particles=True)

    def estimate(key, q_case, case):
        params = {
            "gradient_mean": q_case.gradient_mean[None],
            "gradient_scale": jnp.sqrt(q_case.gradient_variance)[None],
            "drift_shape": q_case.drift_shape[None],
            "drift_rate": q_case.drift_rate[None],
            "noise_shape": q_case.noise_shape[None],
            "noise_rate": q_case.noise_rate[None],
        }
        loss = estimator.loss(
            key,
            params,
            one_step_model,
            one_step_guide,
            case["gradient_mean_prev"][None],
            case["gradient"][None],
            prior_strength=case["prior_strength"],
            variance_ratio=case["variance_ratio"],
            prior_shape=case["prior_shape"],
        )
        return -loss

    problem_cases = {k: cases[k] for k in ("gradient_mean_prev", "gradient", "prior_strength",
                                           "variance_ratio", "prior_shape")}

    def z_scores(key):
        # One flat vmap over (case, estimate) pairs: nested vmaps over NumPyro's Gamma sampler
        # compile several times slower.
        repeat = lambda x: jnp.repeat(x, _ESTIMATES, axis=0)  # noqa: E731
        keys = jax.random.split(key, num_cases * _ESTIMATES)
        estimates = jax.vmap(estimate)(
            keys, jax.tree_util.tree_map(repeat, q), jax.tree_util.tree_map(repeat, problem_cases)
        ).reshape(num_cases, _ESTIMATES)
        mean = jnp.mean(estimates, axis=1)
        standard_error = jnp.std(estimates, axis=1, ddof=1) / jnp.sqrt(_ESTIMATES)
        closed_form = jax.vmap(lambda q_case, case: updates.one_step_elbo(q_case, *_problem(case)))(
            q, problem_cases
        )
        scale = jax.vmap(lambda q_case, case: _elbo_terms_sum(q_case, _problem(case)))(
            q, problem_cases
        )
        return (mean - closed_form) / standard_error, standard_error / scale

    z, relative_se = jax.jit(z_scores)(jax.random.PRNGKey(seed))
    z = np.asarray(z)
    return CheckResult(
        "elbo_estimator",
        num_cases,
        float(np.max(np.abs(z))),
        TOLERANCES["elbo_estimator"],
        detail=(
            f"max |z| of Trace_ELBO ({_ESTIMATES} x {_ESTIMATOR_PARTICLES} particles) vs "
            f"closed form; median SE / sum|terms| = {np.median(np.asarray(relative_se)):.1e}"
        ),
        extra={"mean_z": float(np.mean(z)), "rms_z": float(np.sqrt(np.mean(z**2)))},
    )


# --------------------------------------------------------------------------------------------
# Check 6: NumPyro SVI converges to the CAVI optimum
# --------------------------------------------------------------------------------------------

_SVI_STEPS = 2500
_SVI_PARTICLES = 4
_SVI_LEARNING_RATE = 0.3
# Exponential decay to 3e-3 of the start: large early steps cross the e-fold perturbation,
# small late ones average the Monte-Carlo noise of the gradient down.
_SVI_FINAL_LEARNING_RATE_FRACTION = 3e-3


def _draw_svi_cases(seed: int, cases: int) -> dict[str, np.ndarray]:
    """Well-posed one-step problems: gamma / (g_hat - mu_{t-1})^2 in [1e-2, 1e2].

    Below ~1e-4 the priors are close to the improper 1/w and the one-step ELBO has an almost
    flat ridge (see :func:`vsgd_bayes.rules.elbo.cavi_optimum`), so "the optimum" is not a
    well-defined target; the other checks cover that range.
    """
    rng = np.random.default_rng(seed + 2)
    prior_strength = log_uniform(rng, 0.3, 10.0, cases)
    inits = [hp.INITS[i % len(hp.INITS)] for i in range(cases)]
    residual = rng.choice([-1.0, 1.0], cases) * np.sqrt(
        prior_strength / log_uniform(rng, 1e-2, 1e2, cases)
    )
    gradient_mean_prev = signed_log_uniform(rng, 1e-3, 1e2, cases)
    return dict(
        gradient_mean_prev=gradient_mean_prev,
        gradient=gradient_mean_prev + residual,
        prior_strength=prior_strength,
        variance_ratio=log_uniform(rng, 0.1, 1e3, cases),
        prior_shape=np.array([hp.prior_shape(g, init) for g, init in zip(prior_strength, inits)]),
    )


def _distance(q: OneStepVariational, optimum: OneStepVariational):
    """Per case: max of |mu - mu*| / sigma* and |ln x - ln x*| for sigma and the Gammas."""
    parts = [jnp.abs(q.gradient_mean - optimum.gradient_mean) / jnp.sqrt(optimum.gradient_variance),
             0.5 * jnp.abs(jnp.log(q.gradient_variance / optimum.gradient_variance))]
    for name in ("drift_shape", "drift_rate", "noise_shape", "noise_rate"):
        parts.append(jnp.abs(jnp.log(getattr(q, name) / getattr(optimum, name))))
    return jnp.max(jnp.stack(parts), axis=0)


def _scale_updates(scales) -> optax.GradientTransformation:
    """Multiply each update by a fixed per-coordinate scale (a diagonal preconditioner)."""

    def update(updates, state, params=None):
        return jax.tree_util.tree_map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _check_svi_converges(seed, cases, updates: Updates) -> CheckResult:
    problem = _draw_svi_cases(seed, cases)
    args = _problem(problem)
    # The fixed point of the updates under test: NumPyro's SVI optimises the model's own ELBO,
    # independently of the closed form, so a wrong update moves this target away from it.
    optimum = jax.jit(
        functools.partial(
            elbo_module.cavi_optimum,
            local_update=updates.local_update,
            global_targets=updates.global_targets,
        )
    )(*args)
    # Start an e-fold away in every positive parameter and 3 sigma* away in mu, random signs.
    rng = np.random.default_rng(seed + 3)
    sign = lambda: rng.choice([-1.0, 1.0], cases)  # noqa: E731
    start = OneStepVariational(
        gradient_mean=optimum.gradient_mean + 3.0 * sign() * jnp.sqrt(optimum.gradient_variance),
        gradient_variance=optimum.gradient_variance * jnp.exp(2.0 * sign()),
        drift_shape=optimum.drift_shape * jnp.exp(sign()),
        drift_rate=optimum.drift_rate * jnp.exp(sign()),
        noise_shape=optimum.noise_shape * jnp.exp(sign()),
        noise_rate=optimum.noise_rate * jnp.exp(sign()),
    )
    # Adam's steps are about the learning rate in parameter units. Positive parameters are
    # optimised on the log scale (scale-free); mu is not, so its step is measured in units of
    # the starting standard deviation of q(g) (known at the start, not the optimum's).
    scales = {name: 1.0 for name in ("gradient_scale", "drift_shape", "drift_rate",
                                     "noise_shape", "noise_rate")}
    scales["gradient_mean"] = jnp.sqrt(start.gradient_variance)
    schedule = optax.exponential_decay(
        _SVI_LEARNING_RATE, _SVI_STEPS, _SVI_FINAL_LEARNING_RATE_FRACTION
    )
    optimizer = optax_to_numpyro(
        optax.chain(
            optax.scale_by_adam(), _scale_updates(scales), optax.scale_by_learning_rate(schedule)
        )
    )
    # `initial` is the guide's own argument (the model has no use for it), hence the partial.
    guide = functools.partial(one_step_guide, initial=start)
    svi = SVI(
        one_step_model,
        guide,
        optimizer,
        TraceMeanField_ELBO(num_particles=_SVI_PARTICLES),
        prior_strength=args[2],
        variance_ratio=args[3],
        prior_shape=args[4],
    )
    result = svi.run(jax.random.PRNGKey(seed), _SVI_STEPS, args[0], args[1], progress_bar=False)
    reached = guide_variational(result.params)
    distances = np.asarray(_distance(reached, optimum))
    initial_distance = float(np.max(np.asarray(_distance(start, optimum))))
    # Tolerance 0.2 (the start is at 3.0). Measured with 50 cases: the worst case ends at
    # 0.073, 0.035, 0.037, 0.058 for seeds 0-3 (median ~1.5e-2). The slowest cases lag
    # rather than wander (1500 steps at a 0.1 start rate left one at 1.2 for seed 1; 6000
    # steps brought it to 0.03), hence the larger start rate; each sample costs ~50 us on CPU
    # (Gamma sampling and its reparameterised gradient), which bounds the number of steps.
    # tests/test_validation.py shows that the fixed point of a wrong update fails it.
    return CheckResult(
        "svi_converges",
        cases,
        float(np.max(distances)),
        TOLERANCES["svi_converges"],
        detail=(
            f"max distance to cavi_optimum after {_SVI_STEPS} SVI steps (started at "
            f"{initial_distance:.2f}); median {np.median(distances):.1e}"
        ),
        extra={"steps": _SVI_STEPS, "initial_distance": initial_distance},
    )


# --------------------------------------------------------------------------------------------
# Check 7: the composed step, both starts, several steps
# --------------------------------------------------------------------------------------------

#: Steps of the composed-step check: t = 1 (the shape switch) and enough later steps for the
#: exponents of rho_t = t^-kappa to matter (rho_1 = 1 for any exponent).
_COMPOSED_STEPS = 6


def _relative(got, expected, scale):
    return jnp.max(jnp.abs(jnp.asarray(got) - expected) / scale)


def _check_composed_step(seed: int, cases: int, updates: Updates) -> CheckResult:
    rng = np.random.default_rng(seed + 5)
    errors = []
    for init in hp.INITS:
        prior_strength = log_uniform(rng, 1e-10, 1.0, cases)
        variance_ratio = log_uniform(rng, 0.1, 1e3, cases)
        kappa1, kappa2 = 1.0 - 0.5 * rng.random(cases), 1.0 - 0.5 * rng.random(cases)  # (0.5, 1]
        options = dict(variance_ratio=variance_ratio, prior_strength=prior_strength,
                       kappa1=kappa1, kappa2=kappa2, init=init)
        lr, weight_decay = log_uniform(rng, 1e-4, 1.0, cases), rng.uniform(0.0, 0.1, cases)
        params = jnp.asarray(rng.normal(size=cases))
        state = rule.init_state(params, prior_strength, variance_ratio, init=init)
        drift_prior_rate, noise_prior_rate = hp.prior_rates(prior_strength, variance_ratio, init)
        errors += [_relative(state.drift_rate, drift_prior_rate, drift_prior_rate),
                   _relative(state.noise_rate, noise_prior_rate, noise_prior_rate)]
        for t in range(1, _COMPOSED_STEPS + 1):
            gradient = jnp.asarray(signed_log_uniform(rng, 1e-6, 1e3, cases))
            # By hand: the shape before step t, the local update, the targets, the blend with
            # rho_t = t^-kappa, the parameter step.
            shape = hp.shape_before_step(t, prior_strength, init)
            mean, variance = rule.local_update(
                state.gradient_mean, state.drift_rate, state.noise_rate, gradient, shape)
            drift_target, noise_target = rule.global_targets(
                mean, variance, state.gradient_mean, gradient, prior_strength, variance_ratio,
                init=init)
            drift_step_size, noise_step_size = hp.step_sizes(float(t), kappa1, kappa2)
            drift_rate = rule.svi_blend(state.drift_rate, drift_target, drift_step_size)
            noise_rate = rule.svi_blend(state.noise_rate, noise_target, noise_step_size)
            new_params = rule.parameter_step(params, mean, variance, lr, weight_decay, 1e-8)

            got_variance, got_state = updates.posterior_update(gradient, state, **options)
            got_params, stepped = updates.step(
                params, gradient, state, lr=lr, weight_decay=weight_decay, eps=1e-8, **options)
            data_scale = jnp.abs(state.gradient_mean) + jnp.abs(gradient)
            errors += [
                _relative(got_variance, variance, variance),
                _relative(got_params, new_params, jnp.abs(params) + lr),
            ]
            for candidate in (got_state, stepped):
                errors += [
                    _relative(candidate.gradient_mean, mean, data_scale),
                    _relative(candidate.drift_rate, drift_rate, drift_rate),
                    _relative(candidate.noise_rate, noise_rate, noise_rate),
                    jnp.where(candidate.step == t, 0.0, jnp.inf),
                ]
            # The next step starts from the state under test, so every step compares one
            # update from the same input (errors do not accumulate).
            params, state = got_params, stepped
    # NaN anywhere must fail: np.max propagates it and CheckResult.passed rejects it.
    worst = float(np.max(np.stack([np.asarray(e, dtype=float) for e in errors])))
    return CheckResult(
        "composed_step",
        cases * len(hp.INITS),
        worst,
        TOLERANCES["composed_step"],
        detail=(
            f"max relative difference of posterior_update and step from the hand composition, "
            f"{_COMPOSED_STEPS} steps from init_state, both starts"
        ),
        extra={"steps": _COMPOSED_STEPS},
    )


# --------------------------------------------------------------------------------------------


def _result(name: str, errors, detail: str) -> CheckResult:
    return worst_case_result(name, errors, TOLERANCES[name], detail)


#: The names of the VSGD checks, in the order they run.
CHECKS = (
    "local_stationary",
    "global_stationary",
    "natural_gradient",
    "coordinate_ascent",
    "elbo_estimator",
    "svi_converges",
    "composed_step",
)


def run_checks(
    seed: int = 0,
    cases: int = 50,
    *,
    updates: Updates | None = None,
    only: list[str] | None = None,
) -> list[CheckResult]:
    """Run the checks (all, or those named in ``only``) on ``cases`` random cases each.

    Args:
        seed: seeds the cases and the Monte-Carlo keys (the outcome is deterministic).
        cases: number of random cases per check.
        updates: the closed-form updates under test (default: the rule's); a test hook.
        only: names of the checks to run (default: all of :data:`CHECKS`).

    Returns:
        One :class:`CheckResult` per check, in the order of :data:`CHECKS`.
    """
    names = checked_run_arguments(seed, cases, only, CHECKS)
    updates = Updates() if updates is None else updates
    # The checks are float64 checks. 64-bit JAX is switched on for their duration only:
    # importing this module leaves the process's numerics as they were.
    with jax.enable_x64(True):
        return _run(seed, cases, updates, names)


def _run(seed: int, cases: int, updates: Updates, names: list[str]) -> list[CheckResult]:
    drawn = {k: jnp.asarray(v) for k, v in draw_cases(seed, cases).items()}
    runners = {
        "local_stationary": lambda: _check_local_stationary(drawn, updates),
        "global_stationary": lambda: _check_global_stationary(drawn, updates),
        "natural_gradient": lambda: _check_natural_gradient(drawn, updates),
        "coordinate_ascent": lambda: _check_coordinate_ascent(drawn, updates),
        "elbo_estimator": lambda: _check_elbo_estimator(seed, drawn, updates),
        "svi_converges": lambda: _check_svi_converges(seed, cases, updates),
        "composed_step": lambda: _check_composed_step(seed, cases, updates),
    }
    return [runners[name]() for name in CHECKS if name in names]
