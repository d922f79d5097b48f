"""vsgd_bayes: Variational Stochastic Gradient Descent (Chen, Kuzina, Esmaeili & Tomczak, 2024).

One package per link of the chain of trust (``docs/design.md``), one module per method in each:

* :mod:`vsgd_bayes.hyperparameters`: defaults, validation, scalar schedules (no JAX, no torch).
* :mod:`vsgd_bayes.models`: the generative models, in NumPyro.
* :mod:`vsgd_bayes.rules`: the closed-form updates (and ELBOs) as pure JAX functions, the
  single source of truth.
* :mod:`vsgd_bayes.validation`: the checks of the rules against the ELBO and exact references.
* :mod:`vsgd_bayes.optax`: the optax transformations (JAX users).
* :mod:`vsgd_bayes.torch`: the production PyTorch optimizers ``VSGD``, ``ConstantVSGD`` and
  ``KalmanVSGD`` (no JAX needed).

The applications (the ``vsgd-bayes`` command, benchmarks, calibration) live in
:mod:`vsgd_bayes.apps`, which the library never imports.
"""

from vsgd_bayes.hyperparameters import DEFAULTS, VSGDHyperparameters, validate_hyperparameters

__version__ = "0.3.0"

__all__ = ["DEFAULTS", "VSGDHyperparameters", "validate_hyperparameters", "__version__"]
