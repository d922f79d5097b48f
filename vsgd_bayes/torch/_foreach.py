r"""The multi-tensor ("foreach") VSGD path: pure PyTorch, nothing compiled.

One call steps a whole list of parameters with ``torch._foreach_*`` operations on the
single-pass algebraic form of the VSGD update (derived in ``derivations/``; the reference is
:func:`vsgd_bayes.rule.step`). With the gain k, the innovation e and the shape a before the
step,

.. math::

    k &= \frac{b_g}{b_g + b_{\hat g}}, \qquad e = \hat g_t - \mu_{t-1}, \\
    \mu_t &= \mu_{t-1} + k\,e, \qquad \sigma_t^2 = \frac{k\,b_{\hat g}}{a}, \\
    b_g &\leftarrow (1-\rho_{t,1})\,b_g + \rho_{t,1}\left(\gamma
        + \tfrac12\left(\sigma_t^2 + (k e)^2\right)\right), \\
    b_{\hat g} &\leftarrow (1-\rho_{t,2})\,b_{\hat g} + \rho_{t,2}\left(K_g\gamma
        + \tfrac12\left(\sigma_t^2 + ((1-k) e)^2\right)\right), \\
    \theta_t &= \theta_{t-1}(1-\eta\lambda)
        - \eta\,\frac{\mu_t}{\sqrt{\mu_t^2 + \sigma_t^2} + \epsilon},

which is the closed-form update of :mod:`vsgd_bayes.rule` rewritten so that every quantity is
read once: mu_t - mu_{t-1} = k e and mu_t - g_hat_t = -(1 - k) e.

Memory: every tensor is processed as flat views split into blocks of at most
:data:`BLOCK_SIZE` elements, and the blocks are gathered into batches of about that many
elements. Each ``_foreach`` call works on one batch, so its temporaries (four scratch
buffers of one batch each, reused by every batch) are bounded and stay in the processor's
cache between the ~25 operations of a step instead of streaming the whole model through
memory 25 times.

Symbols -> arguments: eta ``lr``, K_g ``variance_ratio``, gamma ``prior_strength``,
kappa_i ``kappa1/kappa2``, lambda ``weight_decay``, epsilon ``eps``; state mu
``gradient_means``, b_g ``drift_rates``, b_ghat ``noise_rates``.

References:
    Chen, Kuzina, Esmaeili, Tomczak. Variational Stochastic Gradient Descent for Deep Neural
    Networks. arXiv:2404.06549 (2024).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp

__all__ = ["foreach_vsgd", "BLOCK_SIZE", "STEP_CONSTANT_NAMES", "step_constants"]

#: Elements per block and per batch of blocks on CPU. 2^16 float32 values are 256 KiB per
#: buffer: the ~9 buffers one operation touches (5 inputs/states + 4 scratch) fit in the
#: L2/L3 caches of current processors, while a batch is still large enough that the fixed
#: cost of one ``_foreach`` call (a few microseconds) is small against its arithmetic.
#: On accelerators the blocks only bound the temporaries (launches are the cost there).
BLOCK_SIZE = {"cpu": 1 << 16, "cuda": 1 << 22}
_DEFAULT_BLOCK_SIZE = 1 << 22

#: Per-tensor constants of one step, in the order :func:`step_constants` returns them.
STEP_CONSTANT_NAMES = (
    "inverse_shape",  # 1 / a, a the shape before the step
    "drift_keep",  # 1 - rho_1
    "drift_prior",  # rho_1 * gamma
    "drift_half_step",  # rho_1 / 2
    "noise_keep",  # 1 - rho_2
    "noise_prior",  # rho_2 * K_g * gamma
    "noise_half_step",  # rho_2 / 2
)


def step_constants(
    step: float,
    *,
    variance_ratio: float,
    prior_strength: float,
    kappa1: float,
    kappa2: float,
    init: str,
) -> Tuple[float, ...]:
    """The scalars of step ``step`` (counted from 1), in Python float64.

    Returns:
        The values named by :data:`STEP_CONSTANT_NAMES`.
    """
    shape = hp.shape_before_step(step, prior_strength, init)
    drift_step_size, noise_step_size = hp.step_sizes(float(step), kappa1, kappa2)
    return (
        1.0 / shape,
        1.0 - drift_step_size,
        drift_step_size * prior_strength,
        0.5 * drift_step_size,
        1.0 - noise_step_size,
        noise_step_size * variance_ratio * prior_strength,
        0.5 * noise_step_size,
    )


def _as_float(value: Union[float, Tensor]) -> float:
    # A tensor learning rate (e.g. driven by a scheduler) is read once per step; on an
    # accelerator this synchronises, which the foreach path accepts (it is not capturable).
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _is_flat_viewable(tensors: Sequence[Tensor]) -> bool:
    return all(t.is_contiguous() for t in tensors)


_Slot = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # (theta, g_hat, mu, b_g, b_ghat)


def _batches(slots: List[_Slot], block_size: int) -> List[List[_Slot]]:
    """Cuts every (theta, g, mu, b_g, b_ghat) into flat blocks and gathers them in batches.

    Blocks of one batch add up to at most ``block_size`` elements, so the scratch buffers of
    a batch are views into four flat buffers of ``block_size`` elements. Tensors that cannot
    be viewed flat (non-contiguous) form a batch of their own, with full-size scratch.
    """
    batches: List[List[_Slot]] = []
    current: List[_Slot] = []
    filled = 0
    for slot in slots:
        if not _is_flat_viewable(slot):
            batches.append([slot])
            continue
        flat = [t.view(-1) for t in slot]
        for start in range(0, slot[0].numel(), block_size):
            length = min(block_size, slot[0].numel() - start)
            if filled + length > block_size:
                batches.append(current)
                current, filled = [], 0
            current.append(tuple(t.narrow(0, start, length) for t in flat))
            filled += length
    if current:
        batches.append(current)
    return batches


def _step_batch(
    batch: List[_Slot],
    scratch: List[Tensor],
    constants: Tuple[float, ...],
    *,
    lr: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
) -> None:
    """One VSGD step on one batch of blocks (all of one state dtype and one step count)."""
    (
        inverse_shape,
        drift_keep,
        drift_prior,
        drift_half_step,
        noise_keep,
        noise_prior,
        noise_half_step,
    ) = constants
    params, grads, means, drift_rates, noise_rates = (list(x) for x in zip(*batch))
    state_dtype = means[0].dtype

    # Scratch views with the blocks' shapes: e (innovation), k (gain), s (sigma^2), w (work).
    if len(batch) == 1 and not _is_flat_viewable(batch[0]):
        like = means[0]
        innovation, gain, variance, work = ([torch.empty_like(like)] for _ in range(4))
    else:
        innovation, gain, variance, work = ([], [], [], [])
        offset = 0
        for mean in means:
            length = mean.numel()
            for views, buffer in zip((innovation, gain, variance, work), scratch):
                views.append(buffer.narrow(0, offset, length))
            offset += length

    # e = g_hat - mu_{t-1}   (g_hat = -grad when maximising; copy_ casts to the state dtype)
    torch._foreach_copy_(innovation, grads)
    if maximize:
        torch._foreach_neg_(innovation)
    torch._foreach_sub_(innovation, means)
    # k = b_g / (b_g + b_ghat)
    torch._foreach_copy_(gain, drift_rates)
    torch._foreach_add_(gain, noise_rates)
    torch._foreach_reciprocal_(gain)
    torch._foreach_mul_(gain, drift_rates)
    # sigma^2 = k b_ghat / a
    torch._foreach_copy_(variance, gain)
    torch._foreach_mul_(variance, noise_rates)
    torch._foreach_mul_(variance, inverse_shape)
    # mu_t = mu_{t-1} + k e
    torch._foreach_addcmul_(means, gain, innovation)
    # w = k e = mu_t - mu_{t-1};  b_g <- (1 - rho_1) b_g + rho_1 gamma + rho_1/2 (sigma^2 + w^2)
    torch._foreach_copy_(work, gain)
    torch._foreach_mul_(work, innovation)
    torch._foreach_mul_(drift_rates, drift_keep)
    torch._foreach_add_(drift_rates, drift_prior)
    torch._foreach_add_(drift_rates, variance, alpha=drift_half_step)
    torch._foreach_addcmul_(drift_rates, work, work, drift_half_step)
    # e <- (1 - k) e = g_hat - mu_t;  b_ghat likewise with K_g gamma and rho_2
    torch._foreach_sub_(innovation, work)
    torch._foreach_mul_(noise_rates, noise_keep)
    torch._foreach_add_(noise_rates, noise_prior)
    torch._foreach_add_(noise_rates, variance, alpha=noise_half_step)
    torch._foreach_addcmul_(noise_rates, innovation, innovation, noise_half_step)
    # denominator sqrt(mu_t^2 + sigma^2) + eps, in place of sigma^2
    torch._foreach_addcmul_(variance, means, means)
    torch._foreach_sqrt_(variance)
    torch._foreach_add_(variance, eps)
    # theta <- theta (1 - eta lambda) - eta mu_t / denominator, in the state dtype
    if params[0].dtype == state_dtype:
        weights = params
    else:
        weights = work  # k e is no longer needed
        torch._foreach_copy_(weights, params)
    if weight_decay != 0.0:
        torch._foreach_mul_(weights, 1.0 - lr * weight_decay)
    torch._foreach_addcdiv_(weights, means, variance, -lr)
    if weights is not params:
        torch._foreach_copy_(params, weights)


def foreach_vsgd(
    params: List[Tensor],
    grads: List[Tensor],
    gradient_means: List[Tensor],
    drift_rates: List[Tensor],
    noise_rates: List[Tensor],
    steps: List[Tensor],
    *,
    lr: Union[float, Tensor],
    variance_ratio: float,
    prior_strength: float,
    kappa1: float,
    kappa2: float,
    weight_decay: float,
    eps: float,
    init: str,
    maximize: bool,
) -> None:
    """One VSGD step on a list of parameters with multi-tensor operations, in place.

    Same contract as the single-tensor path: ``params`` and the state tensors are updated in
    place, ``steps`` (0-dim float32 CPU tensors) are incremented by one, ``grads`` are only
    read. Hyperparameters are not validated here (the optimizer validates them once). The
    state is in promote(param dtype, float32); parameters keep their own dtype, and 16-bit
    parameters are stepped in the state dtype and rounded once.

    Args:
        params: parameters theta (real tensors).
        grads: gradients g_hat_t, one per parameter (any floating dtype).
        gradient_means, drift_rates, noise_rates: state mu, b_g, b_ghat.
        steps: step counters t - 1; may differ between parameters.
        lr, variance_ratio, prior_strength, kappa1, kappa2, weight_decay, eps, init: see
            :mod:`vsgd_bayes.hyperparameters`.
        maximize: ascend instead of descend (the model sees g_hat = -grad).

    Example:
        >>> import torch
        >>> p, g = torch.ones(3), torch.full((3,), 0.5)
        >>> mu, bg, bn = torch.zeros(3), torch.full((3,), 1e-8), torch.full((3,), 3e-7)
        >>> foreach_vsgd([p], [g], [mu], [bg], [bn], [torch.tensor(0.0)], lr=0.1,
        ...     variance_ratio=30.0, prior_strength=1e-8, kappa1=0.81, kappa2=0.9,
        ...     weight_decay=0.0, eps=1e-8, init="reference", maximize=False)
        >>> mu  # g / (1 + K_g)
        tensor([0.0161, 0.0161, 0.0161])
    """
    if not params:
        return
    torch._foreach_add_(steps, 1.0)
    lr = _as_float(lr)

    # Group by device, state dtype, parameter dtype and step count: within a group every
    # scalar is one Python float and every _foreach list is homogeneous.
    groups: Dict[tuple, List[_Slot]] = defaultdict(list)
    step_of_group: Dict[tuple, float] = {}
    for param, grad, mean, drift, noise, step in zip(
        params, grads, gradient_means, drift_rates, noise_rates, steps
    ):
        if param.numel() == 0:
            continue
        step_value = float(step.item())
        key = (param.device, mean.dtype, param.dtype, grad.dtype, step_value)
        groups[key].append((param, grad, mean, drift, noise))
        step_of_group[key] = step_value

    for key, slots in groups.items():
        device, state_dtype = key[0], key[1]
        constants = step_constants(
            step_of_group[key],
            variance_ratio=variance_ratio,
            prior_strength=prior_strength,
            kappa1=kappa1,
            kappa2=kappa2,
            init=init,
        )
        block_size = BLOCK_SIZE.get(device.type, _DEFAULT_BLOCK_SIZE)
        batches = _batches(slots, block_size)
        largest = max(sum(slot[2].numel() for slot in b) for b in batches)
        # Four rows (e, k, sigma^2, work) of one batch each, reused by every batch.
        scratch = list(
            torch.empty((4, min(largest, block_size)), dtype=state_dtype, device=device)
        )
        for batch in batches:
            _step_batch(
                batch,
                scratch,
                constants,
                lr=lr,
                weight_decay=weight_decay,
                eps=eps,
                maximize=maximize,
            )
