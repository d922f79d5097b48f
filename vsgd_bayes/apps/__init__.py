"""Applications built on the library: the ``vsgd-bayes`` command line and what it runs.

The library is :mod:`vsgd_bayes.hyperparameters`, the JAX rules, the NumPyro model and its
checks, :mod:`vsgd_bayes.optax` and :mod:`vsgd_bayes.torch`. Everything here only *uses* it:

* :mod:`~vsgd_bayes.apps.cli`: the ``vsgd-bayes`` dispatcher;
* :mod:`~vsgd_bayes.apps.validate`: ``vsgd-bayes validate`` (the checks of
  :mod:`vsgd_bayes.validation`);
* :mod:`~vsgd_bayes.apps.demo`: ``vsgd-bayes demo``;
* :mod:`~vsgd_bayes.apps.bench`: ``vsgd-bayes bench`` (optimizers on small real tasks);
* :mod:`~vsgd_bayes.apps.paper`: ``vsgd-bayes paper`` (the paper's image-classification runs).

Nothing in the library imports this package.
"""
