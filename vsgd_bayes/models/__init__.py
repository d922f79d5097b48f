"""The generative models of true and noisy gradients, written explicitly in NumPyro.

* :mod:`~vsgd_bayes.models.vsgd`: VSGD's model (the true gradient a random walk, the
  mini-batch gradient its noisy observation, Gamma priors on both precisions), the one-step
  model and guide whose ELBO the closed-form updates optimise, and a simulator of gradient
  streams. Constant VSGD and Kalman VSGD are inference schemes for the same model (Constant
  VSGD with the ratio of the precisions fixed), so they have no model of their own.
* :mod:`~vsgd_bayes.models.factored`: Factored VSGD's one-step model, VSGD's with each
  precision a row factor times a column factor of the parameter's matrix view, and its guide.
* :mod:`~vsgd_bayes.models.kronecker`: Kronecker VSGD's one-step model, VSGD's in an
  orthogonal Kronecker basis written in the original coordinates (full Gaussians), and a
  simulator of streams with matrix-normal noise.
* :mod:`~vsgd_bayes.models.curvature`: Curvature Kalman VSGD's model (the true gradient follows
  the parameter step through a drifting curvature, observed with noise) and its simulator.
"""
