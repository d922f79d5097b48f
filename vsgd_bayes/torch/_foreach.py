r"""The multi-tensor ("foreach") VSGD path: pure PyTorch, nothing compiled.

One call steps a whole list of parameters with eager PyTorch operations (``torch._foreach_*``
on lists of tensors, plain ones on single cache-sized blocks on CPU) on the single-pass
algebraic form of the VSGD update (derived in ``derivations/``; the reference is
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

Memory and speed: every tensor is processed as flat views split into blocks of at most
:data:`BLOCK_SIZE` elements, and the blocks are gathered into batches of about that many
elements. The only temporaries are three scratch rows of one batch, reused by every batch
(no other memory is allocated). On CPU a batch of one block is stepped with plain tensor
operations that write into the rows (``out=``), a batch of several small blocks with
``torch._foreach_*`` operations; the batch stays in the last-level cache between the 17
passes of a step (:func:`_step_batch` lists them) instead of streaming the whole model
through memory 17 times. On a GPU every batch takes the foreach form.

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
from vsgd_bayes.torch._common import as_float, increment_steps

__all__ = ["foreach_vsgd", "BLOCK_SIZE", "STEP_CONSTANT_NAMES", "step_constants"]

#: Elements per block and per batch of blocks. On CPU, 2^18 float32 values are 1 MiB per
#: buffer: the 8 buffers a batch touches (5 inputs/states + 3 scratch) stay in the last-level
#: cache between the 17 passes of a step, and a batch is large enough that the fixed cost of
#: an operation (a few microseconds) is small against its arithmetic (measured on the
#: project's 2-core AMD EPYC, 1 and 2 threads: 2^17 and 2^19 were 5-10% slower, 2^16 and
#: 2^20 20-60% slower). On CUDA the foreach launches, not the cache, set the cost: fewer,
#: larger batches are faster (a ResNet-18 step is bound by host-side launch work), and the
#: three scratch rows bound the transient memory to 3 x 2^23 x 4 bytes = 96 MiB whatever
#: the model's size (``benchmarks/gpu_tune.py`` on an H100: 2^23 against 2^22 was 11.0x
#: against 12.2x fused Adam on ResNet-18 shapes and 7.6x against 9.1x on 4 x 4096^2).
BLOCK_SIZE = {"cpu": 1 << 18, "cuda": 1 << 23}
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


def _is_flat_viewable(tensors: Sequence[Tensor]) -> bool:
    return all(t.is_contiguous() for t in tensors)


_Slot = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # (theta, g_hat, mu, b_g, b_ghat)


def _batches(slots: List[_Slot], block_size: int) -> List[List[_Slot]]:
    """Cuts every (theta, g, mu, b_g, b_ghat) into flat blocks and gathers them in batches.

    Blocks of one batch add up to at most ``block_size`` elements, so the scratch of a batch
    is views into three flat rows of ``block_size`` elements. Tensors that cannot be viewed
    flat (non-contiguous) form a batch of their own (the rows are then as long as the
    largest of them).
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


# The operations of one step, written once for two kinds of operands: a tensor (one block on
# CPU) or a list of tensors (a batch of blocks: one torch._foreach_* call per operation).
# Results that are not state go to views of three scratch rows, never to new memory.


def _binary(name: str, a, b, out):
    """``out = a <name> b`` (add, sub, mul, div) into scratch ``out``, which must not be ``b``.

    A tensor takes ``torch.<name>(a, b, out=out)``; a list, which has no ``out=`` form,
    a copy and the in-place operation (the same rounding: one operation on the same values).
    """
    if isinstance(a, list):
        torch._foreach_copy_(out, a)
        getattr(torch, f"_foreach_{name}_")(out, b)
    else:
        getattr(torch, name)(a, b, out=out)
    return out


def _inplace(name: str, a, *args, **kwargs) -> None:
    """``a.<name>_(*args)``: one in-place operation on a tensor or on a list of tensors."""
    if isinstance(a, list):
        getattr(torch, f"_foreach_{name}_")(a, *args, **kwargs)
    else:
        getattr(a, f"{name}_")(*args, **kwargs)


def _affine_(a, scale: float, shift: Tensor) -> None:
    """``a <- shift + scale * a`` in place; ``shift`` is a 0-dim CPU tensor.

    On CPU one pass per tensor: ``torch.add`` broadcasts the 0-dim ``shift`` (half the cost
    of a mul and an add), for a list tensor by tensor, so a tensor gets the same arithmetic
    alone as in a list (a frozen parameter's twin, stepped alone, stays bitwise equal). On
    a GPU (always a list) a foreach mul and add: two launches rather than two per tensor.
    """
    tensors = a if isinstance(a, list) else [a]
    if tensors[0].device.type == "cpu":
        for tensor in tensors:
            torch.add(shift, tensor, alpha=scale, out=tensor)
    else:
        torch._foreach_mul_(tensors, scale)
        torch._foreach_add_(tensors, shift.item())


def _step_batch(
    batch: List[_Slot],
    scratch: Tensor,
    constants: Tuple[float, ...],
    priors: Tuple[Tensor, Tensor],
    *,
    lr: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
) -> None:
    """One VSGD step on one batch of blocks (all of one state dtype and one step count).

    Seventeen elementwise passes (one or two more with weight decay or 16-bit parameters,
    and in foreach form four copies into the scratch rows): four that create k, e and
    sigma^2, three for mu, three for each rate and four for theta. Ternary operations
    (addcmul, addcdiv) replace pairs of binary ones; scalar factors such as 1/a and sqrt(a)
    are folded into the operations' scalars. Measured on the project's 2-core CPU: an
    in-cache pass costs ~0.15 ns per element, a ternary one ~0.2 ns, sqrt ~0.55 ns (``lerp_``
    against a constant buffer, which would merge a rate's decay and prior terms, was slower
    than the mul and add it replaces).
    """
    (
        inverse_shape,
        drift_keep,
        _,  # drift_prior: priors[0], as a tensor
        drift_half_step,
        noise_keep,
        _,  # noise_prior: priors[1], as a tensor
        noise_half_step,
    ) = constants
    if len(batch) == 1 and batch[0][2].device.type == "cpu":
        # One block on CPU: plain tensors, whose out-of-place operations write straight into
        # the scratch rows. (On a GPU every batch takes the foreach form: its kernels differ
        # from the plain ones in rounding, and a tensor must get the same arithmetic however
        # it was batched.)
        params, grads, means, drift_rates, noise_rates = batch[0]
        shape = means.shape
        gain, innovation, variance = (row[: means.numel()].view(shape) for row in scratch)
    else:
        params, grads, means, drift_rates, noise_rates = (list(x) for x in zip(*batch))
        gain, innovation, variance = ([], [], [])
        offset = 0
        for mean in means:
            length = mean.numel()
            for views, row in zip((gain, innovation, variance), scratch):
                view = row.narrow(0, offset, length)  # blocks are flat, whole tensors not
                views.append(view if mean.dim() == 1 else view.view(mean.shape))
            offset += length
    state_dtype = (means if isinstance(means, Tensor) else means[0]).dtype
    shape_a = 1.0 / inverse_shape
    root_shape = math.sqrt(shape_a)

    # k = b_g / (b_g + b_ghat), the sum held in the sigma^2 row until sigma^2 is formed
    _binary("add", drift_rates, noise_rates, out=variance)
    _binary("div", drift_rates, variance, out=gain)
    # e = g_hat - mu_{t-1}, with g_hat = -grad when maximising (computed in the state dtype)
    if maximize:
        _binary("add", means, grads, out=innovation)
        _inplace("neg", innovation)
    else:
        _binary("sub", grads, means, out=innovation)
    # a sigma^2 = k b_ghat (the factor 1/a is folded into the scalars below)
    scaled_variance = _binary("mul", gain, noise_rates, out=variance)
    # from here on `gain` holds k e = mu_t - mu_{t-1}, `innovation` (1 - k) e = g_hat - mu_t
    step_of_mean = gain
    _inplace("mul", step_of_mean, innovation)
    _inplace("add", means, step_of_mean)  # mu_t = mu_{t-1} + k e
    residual = innovation
    _inplace("sub", residual, step_of_mean)
    # b_g <- (1 - rho_1) b_g + rho_1 gamma + rho_1/2 (sigma^2 + (mu_t - mu_{t-1})^2)
    _affine_(drift_rates, drift_keep, priors[0])
    _inplace("add", drift_rates, scaled_variance, alpha=drift_half_step * inverse_shape)
    _inplace("addcmul", drift_rates, step_of_mean, step_of_mean, value=drift_half_step)
    # b_ghat <- (1 - rho_2) b_ghat + rho_2 K_g gamma + rho_2/2 (sigma^2 + (g_hat - mu_t)^2)
    _affine_(noise_rates, noise_keep, priors[1])
    _inplace("add", noise_rates, scaled_variance, alpha=noise_half_step * inverse_shape)
    _inplace("addcmul", noise_rates, residual, residual, value=noise_half_step)
    # sqrt(a) (sqrt(mu_t^2 + sigma^2) + eps) = sqrt(a sigma^2 + a mu_t^2) + sqrt(a) eps
    denominator = scaled_variance
    _inplace("addcmul", denominator, means, means, value=shape_a)
    _inplace("sqrt", denominator)
    _inplace("add", denominator, root_shape * eps)
    # theta <- theta (1 - eta lambda) - eta mu_t / (sqrt(mu_t^2 + sigma^2) + eps), where
    # mu_t / (sqrt(mu_t^2 + sigma^2) + eps) = sqrt(a) mu_t / denominator
    param_dtype = (params if isinstance(params, Tensor) else params[0]).dtype
    if param_dtype == state_dtype:
        weights = params
    else:  # 16-bit parameters: step in the state dtype, round once
        weights = step_of_mean  # k e is no longer needed
        _inplace("copy", weights, params)
    if weight_decay != 0.0:
        _inplace("mul", weights, 1.0 - lr * weight_decay)
    _inplace("addcdiv", weights, means, denominator, value=-lr * root_shape)
    if weights is not params:
        _inplace("copy", params, weights)


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
    increment_steps(steps)
    lr = as_float(lr)

    # Group by device, state dtype, parameter dtype and step count: within a group every
    # scalar is one Python float and every _foreach list is homogeneous.
    groups: Dict[tuple, List[_Slot]] = defaultdict(list)
    for param, grad, mean, drift, noise, step in zip(
        params, grads, gradient_means, drift_rates, noise_rates, steps
    ):
        if param.numel() == 0:
            continue
        key = (param.device, mean.dtype, param.dtype, grad.dtype, float(step.item()))
        groups[key].append((param, grad, mean, drift, noise))

    for (device, state_dtype, _, _, step), slots in groups.items():
        constants = step_constants(
            step,
            variance_ratio=variance_ratio,
            prior_strength=prior_strength,
            kappa1=kappa1,
            kappa2=kappa2,
            init=init,
        )
        block_size = BLOCK_SIZE.get(device.type, _DEFAULT_BLOCK_SIZE)
        batches = _batches(slots, block_size)
        largest = max(sum(slot[2].numel() for slot in b) for b in batches)
        # Three rows (k, e, sigma^2) of one batch each, reused by every batch.
        scratch = torch.empty((3, largest), dtype=state_dtype, device=device)
        # rho_1 gamma and rho_2 K_g gamma as 0-dim CPU tensors (usable with any device)
        priors = tuple(
            torch.tensor(constants[STEP_CONSTANT_NAMES.index(name)], dtype=state_dtype)
            for name in ("drift_prior", "noise_prior")
        )
        for batch in batches:
            _step_batch(
                batch,
                scratch,
                constants,
                priors,
                lr=lr,
                weight_decay=weight_decay,
                eps=eps,
                maximize=maximize,
            )
