"""NumPyro SVI driven by the optax VSGD: Bayesian logistic regression on breast-cancer data.

The model (site names are the symbols): weights w ~ N(0, I_30), bias b ~ N(0, 5^2),
labels y_n ~ Bernoulli(sigmoid(x_n . w + b)) for the 569 standardised samples of
scikit-learn's breast-cancer data (shipped with scikit-learn, nothing is downloaded). The guide
is a mean-field Gaussian (``AutoNormal``). The ELBO is estimated with one Monte-Carlo sample
per step, so the gradients are noisy: the regime VSGD models.

``numpyro.optim.optax_to_numpyro`` turns any optax transformation into a NumPyro optimizer:

    >>> optimizer = numpyro.optim.optax_to_numpyro(vsgd(learning_rate=0.01, init="paper"))

A finding worth knowing (see ``tests/test_optax_numpyro.py``): with the default
``init="reference"`` (the authors' code) the first step's posterior variance is ~2e-4 instead
of ~1, so the gain k = b_g / (b_g + b_ghat) of the second step is about 1 / (1 + K_g^2) ~ 1e-3
for first gradients of magnitude >~ 1 (1.3e-3 at |g_hat_1| = 1, against 0.34 with
``init="paper"``): an effective momentum 1 - k of ~0.999. On this short, noisy SVI run the
gains do not recover, and VSGD ends far below Adam's ELBO; ``init="paper"`` (Algorithm 1)
matches Adam. ``run`` returns the traces of both initialisations and of Adam.

Usage::

    python notebooks/snippets/numpyro_svi.py        # prints the final ELBOs
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from sklearn.datasets import load_breast_cancer

from vsgd_bayes.optax import vsgd


def load_data():
    """Standardised features (569, 30) and 0/1 labels (569,) of the breast-cancer data."""
    features, labels = load_breast_cancer(return_X_y=True)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    return jnp.asarray(features), jnp.asarray(labels, dtype=features.dtype)


def model(features, labels=None):
    """Bayesian logistic regression: w ~ N(0, I), b ~ N(0, 5^2), y ~ Bernoulli(logits)."""
    num_data, num_features = features.shape
    weights = numpyro.sample("weights", dist.Normal(0.0, 1.0).expand([num_features]).to_event(1))
    bias = numpyro.sample("bias", dist.Normal(0.0, 5.0))
    with numpyro.plate("data", num_data):
        numpyro.sample("labels", dist.Bernoulli(logits=features @ weights + bias), obs=labels)


def optimizers(learning_rate: float = 0.01) -> dict[str, object]:
    """The optimizers compared, same learning rate (VSGD's step is ~ lr * sign-like, as Adam's)."""
    return {
        "VSGD (init='paper')": numpyro.optim.optax_to_numpyro(
            vsgd(learning_rate=learning_rate, init="paper")
        ),
        "VSGD (init='reference')": numpyro.optim.optax_to_numpyro(
            vsgd(learning_rate=learning_rate, init="reference")
        ),
        "Adam": numpyro.optim.Adam(learning_rate),
    }


def fit(optimizer, num_steps: int, features, labels, seed: int = 0, guide=None):
    """Run SVI with one-sample ELBO gradients; returns (guide, numpyro SVIRunResult).

    A guide may be passed in to be reused (one ``AutoNormal`` serves several fits of the same
    model, and :func:`elbo_samples` then compiles once for all of them).
    """
    guide = AutoNormal(model) if guide is None else guide
    svi = SVI(model, guide, optimizer, Trace_ELBO())
    result = svi.run(jax.random.PRNGKey(seed), num_steps, features, labels, progress_bar=False)
    return guide, result


@functools.partial(jax.jit, static_argnums=(0, 4))
def _elbo_samples(guide, params, features, labels, num_samples, seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), num_samples)
    one = lambda key: -Trace_ELBO().loss(key, params, model, guide, features, labels)
    return jax.vmap(one)(keys)


def elbo_samples(guide, params, features, labels, num_samples: int = 1000, seed: int = 1):
    """Independent one-sample ELBO estimates at fixed guide parameters (mean: the ELBO)."""
    return _elbo_samples(guide, params, features, labels, num_samples, seed)


def run(num_steps: int = 2000, learning_rate: float = 0.01, seed: int = 0) -> dict[str, np.ndarray]:
    """ELBO traces (one-sample estimates, one per step) of SVI with VSGD and with Adam.

    Returns:
        {name: array of shape (num_steps,)} for "VSGD (init='paper')",
        "VSGD (init='reference')" and "Adam", all from the same seed and learning rate.
    """
    features, labels = load_data()
    traces = {}
    for name, optimizer in optimizers(learning_rate).items():
        _, result = fit(optimizer, num_steps, features, labels, seed)
        traces[name] = -np.asarray(result.losses)
    return traces


if __name__ == "__main__":
    for name, trace in run().items():
        print(f"{name}: mean ELBO over the last 200 steps {trace[-200:].mean():.2f}")
