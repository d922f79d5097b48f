"""PyTorch front end of VSGD: the optimizers ``VSGD``, ``ConstantVSGD``, ``KalmanVSGD``,
``FactoredVSGD``, ``CurvatureKalmanVSGD`` and ``KroneckerVSGD``.

This subpackage imports torch but never JAX. The update is the one of :mod:`vsgd_bayes.rules.vsgd`
(ported line by line in ``_single_tensor.py``, tested for float64 parity with it), with
hyperparameters, defaults and validation from :mod:`vsgd_bayes.hyperparameters`.

Example:
    >>> import torch
    >>> from vsgd_bayes.torch import VSGD
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = VSGD([w], lr=0.1)
    >>> w.grad = torch.tensor([0.5, -0.5, 0.0])
    >>> opt.step()
    >>> posterior = opt.gradient_posterior(w)
"""

from vsgd_bayes.torch._functional import vsgd
from vsgd_bayes.torch.constant import ConstantVSGD
from vsgd_bayes.torch.curvature import CurvatureKalmanVSGD, CurvaturePosterior
from vsgd_bayes.torch.factored import FactoredVSGD
from vsgd_bayes.torch.kalman import KalmanVSGD
from vsgd_bayes.torch.kronecker import KroneckerVSGD
from vsgd_bayes.torch.vsgd import VSGD, GradientPosterior, state_dtype

__all__ = [
    "VSGD",
    "ConstantVSGD",
    "KalmanVSGD",
    "FactoredVSGD",
    "CurvatureKalmanVSGD",
    "KroneckerVSGD",
    "CurvaturePosterior",
    "GradientPosterior",
    "state_dtype",
    "vsgd",
]
