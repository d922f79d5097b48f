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
elements. Each ``_foreach`` call works on one batch, so its temporaries (three scratch
buffers of one batch each, reused by every batch) are bounded and stay in the processor's
cache between the ~29 passes of a step instead of streaming the whole model through
memory 29 times.

Symbols -> arguments: eta ``lr``, K_g ``variance_ratio``, gamma ``prior_strength``,
kappa_i ``kappa1/kappa2``, lambda ``weight_decay``, epsilon ``eps``; state mu
``gradient_means``, b_g ``drift_rates``, b_ghat ``noise_rates``.

References:
    Chen, Kuzina, Esmaeili, Tomczak. Variational Stochastic Gradient Descent for Deep Neural
    Networks. arXiv:2404.06549 (2024).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp

__all__ = ["foreach_vsgd", "BLOCK_SIZE", "STEP_CONSTANT_NAMES", "step_constants"]

#: Elements per block and per batch of blocks. On CPU, 2^18 float32 values are 1 MiB per
#: buffer: the ~8 buffers a batch touches (5 inputs/states + 3 scratch) stay in the last-level
#: cache between the ~29 passes of a step, and a batch is large enough that the fixed cost of
#: one ``_foreach`` call (several microseconds) is small against its arithmetic (measured on
#: a 2-core AMD EPYC: 2^16 and smaller blocks were slower, whole tensors 3x slower).
#: On accelerators the blocks only bound the temporaries (launches are the cost there).
BLOCK_SIZE = {"cpu": 1 << 18, "cuda": 1 << 22}
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
        # One split per tensor (a single call) rather than one narrow per block.
        blocks = zip(*(t.view(-1).split(block_size) for t in slot))
        for block in blocks:
            length = block[0].numel()
            if filled + length > block_size:
                batches.append(current)
                current, filled = [], 0
            current.append(block)
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

    # Scratch views with the blocks' shapes: e (innovation), k (gain), s (sigma^2).
    if len(batch) == 1 and not _is_flat_viewable(batch[0]):
        innovation, gain, variance = ([torch.empty_like(means[0])] for _ in range(3))
    else:
        innovation, gain, variance = ([], [], [])
        offset = 0
        for mean in means:
            length = mean.numel()
            for views, buffer in zip((innovation, gain, variance), scratch):
                views.append(buffer.narrow(0, offset, length))
            offset += length

    # Only cheap in-place passes (copy, add, mul, reciprocal, one sqrt), each over one batch
    # that stays in cache: ternary ops (addcmul, addcdiv) cost several times more per element
    # on CPU than binary ones, so squares are formed in place and added with `alpha`, and the
    # factor 1/a of sigma^2 = k b_ghat / a is folded into the scalars (`scaled_variance` below
    # is a sigma^2), which saves a pass.
    shape = 1.0 / inverse_shape
    root_shape = math.sqrt(shape)

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
    # a sigma^2 = k b_ghat
    scaled_variance = variance
    torch._foreach_copy_(scaled_variance, gain)
    torch._foreach_mul_(scaled_variance, noise_rates)
    # from here on `gain` holds k e = mu_t - mu_{t-1}, and `innovation` (1 - k) e = g_hat - mu_t
    step_of_mean = gain
    torch._foreach_mul_(step_of_mean, innovation)
    torch._foreach_add_(means, step_of_mean)  # mu_t = mu_{t-1} + k e
    residual = innovation
    torch._foreach_sub_(residual, step_of_mean)
    torch._foreach_mul_(step_of_mean, step_of_mean)
    torch._foreach_mul_(residual, residual)
    # b_g <- (1 - rho_1) b_g + rho_1 (gamma + (sigma^2 + (mu_t - mu_{t-1})^2) / 2)
    torch._foreach_mul_(drift_rates, drift_keep)
    torch._foreach_add_(drift_rates, scaled_variance, alpha=drift_half_step * inverse_shape)
    torch._foreach_add_(drift_rates, step_of_mean, alpha=drift_half_step)
    torch._foreach_add_(drift_rates, drift_prior)
    # b_ghat <- (1 - rho_2) b_ghat + rho_2 (K_g gamma + (sigma^2 + (mu_t - g_hat_t)^2) / 2)
    torch._foreach_mul_(noise_rates, noise_keep)
    torch._foreach_add_(noise_rates, scaled_variance, alpha=noise_half_step * inverse_shape)
    torch._foreach_add_(noise_rates, residual, alpha=noise_half_step)
    torch._foreach_add_(noise_rates, noise_prior)
    # sqrt(a) (sqrt(mu_t^2 + sigma^2) + eps) = sqrt(a sigma^2 + a mu_t^2) + sqrt(a) eps
    mean_squared = gain
    torch._foreach_copy_(mean_squared, means)
    torch._foreach_mul_(mean_squared, mean_squared)
    denominator = scaled_variance
    torch._foreach_add_(denominator, mean_squared, alpha=shape)
    torch._foreach_sqrt_(denominator)
    torch._foreach_add_(denominator, root_shape * eps)
    # direction sqrt(a) mu_t / denominator = mu_t / (sqrt(mu_t^2 + sigma^2) + eps) * ...
    direction = residual
    torch._foreach_copy_(direction, means)
    torch._foreach_div_(direction, denominator)
    # theta <- theta (1 - eta lambda) - eta mu_t / (sqrt(mu_t^2 + sigma^2) + eps)
    if params[0].dtype == state_dtype:
        weights = params
    else:
        weights = gain  # mu_t^2 is no longer needed
        torch._foreach_copy_(weights, params)
    if weight_decay != 0.0:
        torch._foreach_mul_(weights, 1.0 - lr * weight_decay)
    torch._foreach_add_(weights, direction, alpha=-lr * root_shape)
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
        # Three rows (e, k, sigma^2) of one batch each, reused by every batch.
        scratch = list(
            torch.empty((3, min(largest, block_size)), dtype=state_dtype, device=device)
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
