"""The closed-form rules: each method's update as pure JAX functions, the single source of truth.

One module per method, named after the method, each function named after its symbol and citing
the label of the equation it computes (``derivations/``):

* :mod:`~vsgd_bayes.rules.vsgd`: VSGD (local update, global targets, SVI blend, step).
* :mod:`~vsgd_bayes.rules.elbo`: the closed-form one-step ELBO of VSGD's model, which the
  updates are checked against (:mod:`vsgd_bayes.validation`), and its CAVI optimum.
* :mod:`~vsgd_bayes.rules.constant`: Constant VSGD (one precision, fixed ratio) and its ELBO.
* :mod:`~vsgd_bayes.rules.kalman`: Kalman VSGD (exact filtering, recursive maximum likelihood).
* :mod:`~vsgd_bayes.rules.factored`: Factored VSGD (row x column precisions) and its ELBO.

Nothing is imported here, so that ``import vsgd_bayes.rules.vsgd`` loads only what it needs.
"""
