"""vsgd_bayes: Variational Stochastic Gradient Descent (Chen, Kuzina, Esmaeili & Tomczak, 2024).

The package is split so that each front end imports only its own framework:

* :mod:`vsgd_bayes.hyperparameters`: defaults, validation, schedules (no JAX, no torch).
* :mod:`vsgd_bayes.rule`: the closed-form update as pure JAX functions (source of truth).
* :mod:`vsgd_bayes.model`, :mod:`vsgd_bayes.elbo`, :mod:`vsgd_bayes.validation`: the NumPyro
  model, the closed-form ELBO and the checks of the rule against it.
* :mod:`vsgd_bayes.optax`: the optax transformation (JAX users).
* :mod:`vsgd_bayes.torch`: the production PyTorch optimizers ``VSGD`` and ``ConstantVSGD``.
"""

from vsgd_bayes.hyperparameters import DEFAULTS, VSGDHyperparameters, validate_hyperparameters

__version__ = "0.1.0"

__all__ = ["DEFAULTS", "VSGDHyperparameters", "validate_hyperparameters", "__version__"]
