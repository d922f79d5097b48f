# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 — Validating the closed-form updates against the ELBO
#
# VSGD's updates (`vsgd_bayes.rules.vsgd`: local update, global targets, SVI blend) are claimed to be
# coordinate-ascent and natural-gradient steps on the ELBO of the one-step model
#
# $$ w_g \sim \mathrm{Gamma}(a_0, \gamma),\ w_{\hat g} \sim \mathrm{Gamma}(a_0, K_g\gamma),\
#    g \sim N(\mu_{t-1}, 1/w_g),\ \hat g \sim N(g, 1/w_{\hat g}) $$
#
# with the mean-field family $q(g)q(w_g)q(w_{\hat g})$. This notebook checks the claim four
# independent ways, with plots, and then runs the same table of checks as
# `vsgd-bayes validate` (`vsgd_bayes.validation.run_checks`):
#
# 1. coordinate ascent with the closed-form updates never decreases the closed-form ELBO
#    (`vsgd_bayes.rules.elbo.one_step_elbo`) and converges to `elbo.cavi_optimum`;
# 2. NumPyro SVI on `model.one_step_model` / `model.one_step_guide`, which knows nothing of the
#    closed forms, converges to the same optimum;
# 3. the SVI blend $b \leftarrow (1-\rho)b + \rho b'$ is a natural-gradient step on the ELBO
#    (checked with `jax.grad` and `jax.hessian`);
# 4. NumPyro's Monte-Carlo ELBO (`Trace_ELBO`) agrees with the closed form.

# %% tags=["parameters"]
# Small settings by default (CI); VSGD_NOTEBOOK_FULL=1 for the full `vsgd-bayes validate` size.
import os

FULL = os.environ.get("VSGD_NOTEBOOK_FULL", "0") == "1"
SEED = 0
CHECK_CASES = 50 if FULL else 4  # random cases per check in run_checks (CLI default: 50)
SVI_STEPS = 6000 if FULL else 1500
MC_ESTIMATES, MC_PARTICLES = (400, 100) if FULL else (100, 50)
SNIPPET_STEPS = 2000 if FULL else 200  # NumPyro SVI with the optax VSGD (notebooks/snippets)
# Where the notebook writes its key numbers (the tests read them); None: do not write.
RESULTS_PATH = os.environ.get("VSGD_NOTEBOOK_RESULTS")
# The folder holding snippets/ (the tests run the notebook from a temporary directory).
NOTEBOOK_DIR = os.environ.get("VSGD_NOTEBOOK_DIR", os.getcwd())

# %%
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

jax.config.update("jax_enable_x64", True)  # the checks are float64 checks

import numpyro.optim
import optax
from numpyro.infer import SVI, Trace_ELBO

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.models.vsgd import guide_variational, one_step_guide, one_step_model
from vsgd_bayes.rules import elbo
from vsgd_bayes.rules import vsgd as rule
from vsgd_bayes.rules.elbo import OneStepVariational
from vsgd_bayes.validation import vsgd as validation

results = {}

# %% [markdown]
# ## A one-step problem
#
# Three coordinates with different previous means $\mu_{t-1}$ and observed gradients
# $\hat g$. We take a moderately informative prior, $\gamma = 0.1$: with the default
# $\gamma = 10^{-8}$ the priors are nearly the improper $1/w$ and the one-step ELBO has an almost
# flat ridge, so "the optimum" would be ill-defined for SVI (the rule itself is checked at
# small $\gamma$ too, by `run_checks` below).

# %%
GRADIENT_MEAN_PREV = jnp.array([0.0, 0.5, -1.0])  # mu_{t-1}
GRADIENT = jnp.array([1.0, 0.3, 2.0])  # g_hat
PRIOR_STRENGTH = 0.1  # gamma
VARIANCE_RATIO = 10.0  # K_g
PRIOR_SHAPE = hp.prior_shape(PRIOR_STRENGTH, "paper")  # a_0 = gamma
problem = (GRADIENT_MEAN_PREV, GRADIENT, PRIOR_STRENGTH, VARIANCE_RATIO, PRIOR_SHAPE)


def closed_form_elbo(q):
    return float(elbo.one_step_elbo(q, *problem))


optimum = elbo.cavi_optimum(*problem)
optimum_elbo = closed_form_elbo(optimum)
results["cavi_optimum_elbo"] = optimum_elbo
print(f"ELBO at the CAVI optimum: {optimum_elbo:.10f}")
print("optimum:", {name: np.round(np.asarray(value), 5).tolist() for name, value in optimum._asdict().items()})

# %% [markdown]
# ## 1. Coordinate ascent is monotone
#
# Start from VSGD's state before its first step (prior rates, shape $a_0$, $\sigma^2 = 1$) and
# cycle the three exact updates: the local one ($q(g)$, `rule.local_update`) and the two global
# ones ($q(w_g)$, $q(w_{\hat g})$: shape $a_0 + \frac12$, rates `rule.global_targets`, i.e.
# the blend with $\rho = 1$). Each is the exact maximiser of the ELBO over its factor, so the
# ELBO can only go up. (VSGD itself does one such round per mini-batch, with $\rho_t < 1$.)

# %%
q = OneStepVariational(
    gradient_mean=GRADIENT_MEAN_PREV,
    gradient_variance=jnp.ones(3),
    drift_shape=jnp.full(3, PRIOR_SHAPE),
    drift_rate=jnp.full(3, PRIOR_STRENGTH),
    noise_shape=jnp.full(3, PRIOR_SHAPE),
    noise_rate=jnp.full(3, VARIANCE_RATIO * PRIOR_STRENGTH),
)
ascent = [closed_form_elbo(q)]
labels = ["start"]
for _ in range(25):
    q = elbo.local_step(q, GRADIENT_MEAN_PREV, GRADIENT)
    ascent.append(closed_form_elbo(q))
    labels.append("local")
    for factor in ("drift", "noise"):
        q = elbo.global_step(
            q, *problem, update_drift=factor == "drift", update_noise=factor == "noise"
        )
        ascent.append(closed_form_elbo(q))
        labels.append(factor)
ascent = np.array(ascent)
increments = np.diff(ascent)
results["cavi_min_increment"] = float(increments.min())
results["cavi_final_gap"] = float(optimum_elbo - ascent[-1])
print(f"smallest ELBO increment over {len(increments)} updates: {increments.min():.3e}")
print(f"gap to the CAVI optimum after 25 rounds: {optimum_elbo - ascent[-1]:.3e}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
axes[0].plot(ascent, "o-", ms=3)
axes[0].axhline(optimum_elbo, color="k", ls="--", label="elbo.cavi_optimum")
axes[0].set_xlabel("update (local, drift, noise, local, ...)")
axes[0].set_ylabel("closed-form ELBO")
axes[0].legend()
axes[1].semilogy(np.maximum(optimum_elbo - ascent, 1e-16), "o-", ms=3)
axes[1].set_xlabel("update")
axes[1].set_ylabel("optimum ELBO − ELBO")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. NumPyro SVI converges to the CAVI optimum
#
# SVI maximises a Monte-Carlo estimate of the same ELBO by gradient ascent on the guide's
# parameters (Adam, positive parameters on the log scale, a decaying step size to average the
# Monte-Carlo noise). It starts from the guide's default, VSGD's first local step from the
# prior. Below: the closed-form ELBO at SVI's iterates against the CAVI optimum.

# %%
schedule = optax.exponential_decay(0.05, SVI_STEPS, 1e-3)
svi = SVI(
    one_step_model,
    one_step_guide,
    numpyro.optim.optax_to_numpyro(optax.adam(schedule)),
    Trace_ELBO(num_particles=16),
    prior_strength=PRIOR_STRENGTH,
    variance_ratio=VARIANCE_RATIO,
    prior_shape=PRIOR_SHAPE,
)
svi_state = svi.init(jax.random.PRNGKey(SEED), GRADIENT_MEAN_PREV, GRADIENT)


def svi_step(state, _):
    state, loss = svi.update(state, GRADIENT_MEAN_PREV, GRADIENT)
    params = svi.get_params(state)
    return state, (loss, elbo.one_step_elbo(guide_variational(params), *problem))


svi_state, (svi_losses, svi_elbos) = jax.lax.scan(svi_step, svi_state, None, length=SVI_STEPS)
svi_params = guide_variational(svi.get_params(svi_state))
results["svi_final_elbo"] = closed_form_elbo(svi_params)
print(f"closed-form ELBO at SVI's final parameters {results['svi_final_elbo']:.6f}, optimum {optimum_elbo:.6f}")
for name in OneStepVariational._fields:
    print(f"  {name:18s} SVI {np.round(np.asarray(getattr(svi_params, name)), 4)}  CAVI {np.round(np.asarray(getattr(optimum, name)), 4)}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
axes[0].plot(-np.asarray(svi_losses), color="0.7", lw=0.5, label="Monte-Carlo ELBO (SVI's objective)")
axes[0].plot(np.asarray(svi_elbos), "C0", label="closed-form ELBO at SVI's parameters")
axes[0].axhline(optimum_elbo, color="k", ls="--", label="CAVI optimum")
axes[0].set_ylim(optimum_elbo - 5, optimum_elbo + 2)
axes[0].set_xlabel("SVI step")
axes[0].legend(fontsize=8)
axes[1].loglog(np.arange(1, SVI_STEPS + 1), np.maximum(optimum_elbo - np.asarray(svi_elbos), 1e-12))
axes[1].set_xlabel("SVI step")
axes[1].set_ylabel("optimum ELBO − ELBO at SVI's parameters")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. The SVI blend is a natural-gradient step
#
# A Gamma factor $q(w) \propto w^{a-1}e^{-bw}$ has natural parameters $\lambda = (a-1, -b)$,
# sufficient statistics $(\ln w, w)$ and log-normaliser $A(\lambda) = \ln\Gamma(a) - a\ln b$;
# its Fisher information is $F = \nabla^2 A$. For conditionally conjugate models
# (Hoffman et al. 2013) $F^{-1}\nabla_\lambda \mathcal L = \lambda^\star - \lambda$, so
#
# $$ \lambda + \rho\,F^{-1}\nabla_\lambda\mathcal L = (1-\rho)\lambda + \rho\lambda^\star, $$
#
# exactly `rule.svi_blend` on $(a, b)$ with the targets $(a_0 + \frac12, b')$. We compute the
# left side with `jax.grad` of the closed-form ELBO and `jax.hessian` of $A$, at an arbitrary
# $q$, for several $\rho$; we also plot the ELBO along the blend path: it peaks at $\rho = 1$,
# the CAVI update.


# %%
def gamma_log_normaliser(natural):
    shape, rate = natural[0] + 1.0, -natural[1]
    return jax.scipy.special.gammaln(shape) - shape * jnp.log(rate)


# An arbitrary current q for the first coordinate (one Gamma factor at a time).
q_now = OneStepVariational(
    jnp.array([0.3]), jnp.array([0.2]), jnp.array([2.0]), jnp.array([0.7]), jnp.array([1.5]), jnp.array([3.0])
)
problem_1 = (GRADIENT_MEAN_PREV[:1], GRADIENT[:1], PRIOR_STRENGTH, VARIANCE_RATIO, PRIOR_SHAPE)
drift_target, noise_target = rule.global_targets(
    q_now.gradient_mean, q_now.gradient_variance, GRADIENT_MEAN_PREV[:1], GRADIENT[:1], PRIOR_STRENGTH, VARIANCE_RATIO
)
shape_target = PRIOR_SHAPE + 0.5
factors = {
    "drift": ("drift_shape", "drift_rate", drift_target),
    "noise": ("noise_shape", "noise_rate", noise_target),
}
natural_gradient_errors = []
blend_path = {}
step_sizes = np.linspace(0.0, 1.5, 31)
for factor, (shape_name, rate_name, rate_target) in factors.items():
    shape, rate = getattr(q_now, shape_name)[0], getattr(q_now, rate_name)[0]

    def elbo_of_natural(natural):
        replaced = q_now._replace(**{shape_name: jnp.array([natural[0] + 1.0]), rate_name: jnp.array([-natural[1]])})
        return elbo.one_step_elbo(replaced, *problem_1)

    natural = jnp.stack([shape - 1.0, -rate])
    natural_gradient = jnp.linalg.solve(jax.hessian(gamma_log_normaliser)(natural), jax.grad(elbo_of_natural)(natural))
    for step_size in [0.1, 0.5, 0.9, 1.0]:
        stepped = natural + step_size * natural_gradient
        blended = (rule.svi_blend(shape, shape_target, step_size), rule.svi_blend(rate, rate_target[0], step_size))
        error = max(abs(float(stepped[0] + 1.0 - blended[0])) / float(blended[0]), abs(float(-stepped[1] - blended[1])) / float(blended[1]))
        natural_gradient_errors.append(error)
        print(f"{factor:5s} rho={step_size:.1f}: natural-gradient step vs svi_blend, relative error {error:.1e}")
    blended_natural = lambda s: jnp.stack(  # noqa: E731
        [rule.svi_blend(shape, shape_target, s) - 1.0, -rule.svi_blend(rate, rate_target[0], s)]
    )
    blend_path[factor] = np.asarray(
        jax.jit(jax.vmap(lambda s: elbo_of_natural(blended_natural(s))))(jnp.asarray(step_sizes))
    )
results["natural_gradient_max_error"] = max(natural_gradient_errors)

fig, ax = plt.subplots(figsize=(6, 4))
for factor, values in blend_path.items():
    ax.plot(step_sizes, values, label=f"blend of q(w_{'g' if factor == 'drift' else 'ghat'})")
ax.axvline(1.0, color="k", ls=":", label=r"$\rho = 1$ (CAVI)")
ax.set_xlabel(r"step size $\rho$")
ax.set_ylabel("closed-form ELBO")
ax.legend()
plt.show()

# %% [markdown]
# ## 4. Monte-Carlo ELBO against the closed form
#
# NumPyro's `Trace_ELBO` estimates $E_q[\ln p(\hat g, g, w) - \ln q(g, w)]$ by sampling the guide;
# it shares no code with `elbo.one_step_elbo`. At the CAVI optimum we draw `MC_ESTIMATES`
# independent estimates of `MC_PARTICLES` particles each; the closed form must lie within a
# few standard errors of their mean.

# %%
estimator = Trace_ELBO(num_particles=MC_PARTICLES, vectorize_particles=True)
optimum_params = {
    "gradient_mean": optimum.gradient_mean,
    "gradient_scale": jnp.sqrt(optimum.gradient_variance),
    "drift_shape": optimum.drift_shape,
    "drift_rate": optimum.drift_rate,
    "noise_shape": optimum.noise_shape,
    "noise_rate": optimum.noise_rate,
}


def monte_carlo_elbo(key):
    return -estimator.loss(
        key, optimum_params, one_step_model, one_step_guide, GRADIENT_MEAN_PREV, GRADIENT,
        prior_strength=PRIOR_STRENGTH, variance_ratio=VARIANCE_RATIO, prior_shape=PRIOR_SHAPE,
    )


estimates = np.asarray(jax.jit(jax.vmap(monte_carlo_elbo))(jax.random.split(jax.random.PRNGKey(SEED + 1), MC_ESTIMATES)))
standard_error = estimates.std(ddof=1) / np.sqrt(MC_ESTIMATES)
results.update(mc_elbo=float(estimates.mean()), mc_elbo_standard_error=float(standard_error), closed_form_elbo=optimum_elbo)
print(f"Monte-Carlo ELBO {estimates.mean():.5f} ± {standard_error:.5f} (1 s.e.), closed form {optimum_elbo:.5f}, "
      f"z = {(estimates.mean() - optimum_elbo) / standard_error:+.2f}")
fig, ax = plt.subplots(figsize=(6, 4))
ax.hist(estimates, bins=30, color="C0", alpha=0.6, label=f"Trace_ELBO, {MC_PARTICLES} particles each")
ax.axvline(optimum_elbo, color="k", ls="--", label="closed form")
ax.set_xlabel("ELBO")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 5. The table of `vsgd-bayes validate`
#
# `validation.run_checks(seed, cases)` runs the checks of `validation.CHECKS` over random cases drawn over wide
# log-ranges (both signs, $\gamma$ down to the default scale, both initialisations); the CLI
# `vsgd-bayes validate` prints the same table with 50 cases per check. The error of each check
# is dimensionless and compared with a tolerance justified in `validation.TOLERANCES`:
#
# | check | what it measures |
# |---|---|
# | `local_stationary` | Newton step of the ELBO in $(\mu, \ln\sigma^2)$ at `rule.local_update`: the local update is a stationary point |
# | `global_stationary` | Newton step in $(\ln a, \ln b)$ of each Gamma at $a_0+\frac12$, `rule.global_targets` |
# | `natural_gradient` | `rule.svi_blend` against $\lambda + \rho F^{-1}\nabla_\lambda\mathcal L$ (section 3, over many cases) |
# | `coordinate_ascent` | largest ELBO decrease of any exact update (section 1, over many cases) |
# | `elbo_estimator` | largest $\lvert z\rvert$ of NumPyro's `Trace_ELBO` against the closed form (section 4) |
# | `svi_converges` | distance of NumPyro SVI's end point to `elbo.cavi_optimum` from a perturbed start (section 2) |
# | `composed_step` | `rule.posterior_update` and `rule.step` over several steps, both starts, against the pieces composed by hand (shape $a_0$ at $t = 1$, $\rho_t = t^{-\kappa}$) |

# %%
check_results = validation.run_checks(SEED, CHECK_CASES)
print(validation.format_table(check_results))
for check in check_results:
    print(f"  {check.name}: {check.detail}")
results["run_checks"] = [check.as_dict() for check in check_results]
results["run_checks_all_passed"] = all(check.passed for check in check_results)

# %% [markdown]
# ## 6. The optax VSGD inside NumPyro SVI
#
# VSGD is an optimizer for any stochastic objective, including SVI's. The snippet
# `notebooks/snippets/numpyro_svi.py` (also usable on its own) runs NumPyro SVI with the optax
# VSGD transformation (both initialisations) and with Adam on a Bayesian logistic regression,
# one Monte-Carlo sample per step, and returns their ELBO traces (one-sample estimates, hence
# the noise). See the snippet's docstring for why the reference initialisation can lag on
# short SVI runs with gradients of order 1 (notebook 01, section 4, shows the same effect).

# %%
spec = importlib.util.spec_from_file_location(
    "numpyro_svi", pathlib.Path(NOTEBOOK_DIR) / "snippets" / "numpyro_svi.py"
)
numpyro_svi = importlib.util.module_from_spec(spec)
spec.loader.exec_module(numpyro_svi)
traces = numpyro_svi.run(SNIPPET_STEPS)
fig, ax = plt.subplots(figsize=(7, 4))
for name, trace in traces.items():
    trace = np.asarray(trace)
    ax.plot(trace, lw=0.8, label=name)
    tenth = max(1, len(trace) // 10)
    first, last = float(trace[:tenth].mean()), float(trace[-tenth:].mean())
    print(f"{name}: mean ELBO over the first 10% of steps {first:.4f}, over the last 10% {last:.4f}")
    results.setdefault("snippet", {})[name] = {"first": first, "last": last}
ax.set_xlabel("SVI step")
ax.set_ylabel("ELBO")
ax.legend()
plt.show()

# %%
if RESULTS_PATH:
    with open(RESULTS_PATH, "w") as handle:
        json.dump(results, handle, indent=2)
print(json.dumps({key: value for key, value in results.items() if key != "run_checks"}, indent=1))
