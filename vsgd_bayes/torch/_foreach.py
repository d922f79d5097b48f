r"""The multi-tensor ("foreach") VSGD path: pure PyTorch, nothing compiled.

One call steps a whole list of parameters with eager PyTorch operations (``torch._foreach_*``
on lists of tensors, plain ones on single cache-sized blocks on CPU) on the single-pass
algebraic form of the VSGD update (derived in ``derivations/09_fast_paths.md``, whose labels
the code cites in brackets; the reference is :func:`vsgd_bayes.rules.vsgd.step`). With the gain k,
the innovation e and the shape a before the step,

.. math::

    k &= \frac{b_g}{b_g + b_{\hat g}}, \qquad e = \hat g_t - \mu_{t-1}, \\
    \mu_t &= \mu_{t-1} + k\,e, \qquad \sigma_t^2 = \frac{k\,b_{\hat g}}{a}, \\
    b_g &\leftarrow (1-\rho_{t,1})\,b_g + \rho_{t,1}\left(\gamma
        + \tfrac12\left(\sigma_t^2 + (k e)^2\right)\right), \\
    b_{\hat g} &\leftarrow (1-\rho_{t,2})\,b_{\hat g} + \rho_{t,2}\left(K_g\gamma
        + \tfrac12\left(\sigma_t^2 + ((1-k) e)^2\right)\right), \\
    \theta_t &= \theta_{t-1}(1-\eta\lambda)
        - \eta\,\frac{\mu_t}{\sqrt{\mu_t^2 + \sigma_t^2} + \epsilon},

which is the closed-form update of :mod:`vsgd_bayes.rules.vsgd` rewritten so that every quantity is
read once: mu_t - mu_{t-1} = k e and mu_t - g_hat_t = -(1 - k) e [fast-residuals]; the
operations work with the scaled variance S = a sigma_t^2 = k b_ghat [fast-scaled].

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
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.torch._common import as_float, increment_steps

__all__ = [
    "foreach_vsgd", "BLOCK_SIZE", "StepConstants", "STEP_CONSTANT_NAMES", "step_constants"
]

#: Elements per block and per batch of blocks. On CPU, 2^18 float32 values are 1 MiB per
#: buffer: the 8 buffers a batch touches (5 inputs/states + 3 scratch) stay in the last-level
#: cache between the 17 passes of a step, and a batch is large enough that the fixed cost of
#: an operation (a few microseconds) is small against its arithmetic. On CUDA the foreach
#: launches, not the cache, set the cost: fewer, larger batches are faster, and the three
#: scratch rows bound the transient memory to 3 x 2^23 x 4 bytes = 96 MiB whatever the
#: model's size. Both values were chosen by measurement (``benchmarks/README.md``, "Constants
#: of the fast paths").
BLOCK_SIZE = {"cpu": 1 << 18, "cuda": 1 << 23}
_DEFAULT_BLOCK_SIZE = 1 << 22

class StepConstants(NamedTuple):
    """The per-tensor scalars of one step (functions of the tensor's step count t), float64.

    Mirrored field for field, in this order, by ``struct StepConstants`` of
    ``csrc/vsgd_cpu.cpp`` and by the loads of the Triton kernel (``_triton.py``);
    ``tests/test_derivations.py`` checks both against ``StepConstants._fields``.
    """

    inverse_shape: float  # 1 / a, a the shape before the step [fast-variance]
    drift_keep: float  # 1 - rho_1 [svi-blend]
    drift_prior: float  # rho_1 b_{0,g}, the prior rate gamma (hp.prior_rates)
    drift_half_step: float  # rho_1 / 2, the weight of (sigma^2 + (k e)^2) [fast-targets]
    noise_keep: float  # 1 - rho_2
    noise_prior: float  # rho_2 b_{0,ghat}, the prior rate K_g gamma
    noise_half_step: float  # rho_2 / 2, the weight of (sigma^2 + ((1 - k) e)^2)


#: Field names of :class:`StepConstants`, in order.
STEP_CONSTANT_NAMES = StepConstants._fields


def step_constants(
    step: float,
    *,
    variance_ratio: float,
    prior_strength: float,
    kappa1: float,
    kappa2: float,
    init: str,
) -> StepConstants:
    """The per-tensor scalars of step ``step`` (counted from 1), in Python float64."""
    shape = hp.shape_before_step(step, prior_strength, init)
    drift_prior_rate, noise_prior_rate = hp.prior_rates(prior_strength, variance_ratio, init)
    drift_step_size, noise_step_size = hp.step_sizes(float(step), kappa1, kappa2)
    return StepConstants(
        inverse_shape=1.0 / shape,
        drift_keep=1.0 - drift_step_size,
        drift_prior=drift_step_size * drift_prior_rate,
        drift_half_step=0.5 * drift_step_size,
        noise_keep=1.0 - noise_step_size,
        noise_prior=noise_step_size * noise_prior_rate,
        noise_half_step=0.5 * noise_step_size,
    )


def _is_flat_viewable(tensors: Sequence[Tensor]) -> bool:
    return all(t.is_contiguous() for t in tensors)


_Slot = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # (theta, g_hat, mu, b_g, b_ghat)


def _batches(slots: list[_Slot], block_size: int) -> list[list[_Slot]]:
    """Cuts every (theta, g, mu, b_g, b_ghat) into flat blocks and gathers them in batches.

    Blocks of one batch add up to at most ``block_size`` elements, so the scratch of a batch
    is views into three flat rows of ``block_size`` elements. Tensors that cannot be viewed
    flat (non-contiguous) form a batch of their own (the rows are then as long as the
    largest of them).
    """
    batches: list[list[_Slot]] = []
    current: list[_Slot] = []
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


def _into(name: str, a, out, *args):
    """``out = a.<name>(*args)`` (e.g. ``a + b``, ``a / b``, ``max(a, c)``) into scratch
    ``out``, which must not be one of ``args``.

    A tensor takes ``torch.<name>(a, *args, out=out)``; a list, which has no ``out=`` form,
    a copy and the in-place operation (the same rounding: one operation on the same values).
    """
    if isinstance(a, list):
        torch._foreach_copy_(out, a)
        getattr(torch, f"_foreach_{name}_")(out, *args)
    else:
        getattr(torch, name)(a, *args, out=out)
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
    batch: list[_Slot],
    scratch: Tensor,
    constants: StepConstants,
    priors: tuple[Tensor, Tensor],
    *,
    lr: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
) -> None:
    """One VSGD step on one batch of blocks (all of one state dtype and one step count).

    Seventeen elementwise passes (one or two more with weight decay or 16-bit parameters,
    and in foreach form four copies into the scratch rows): four that create k, e and
    S = a sigma^2, three for mu, three for each rate and four for theta [fast-scaled].
    Ternary operations (addcmul, addcdiv) replace pairs of binary ones; scalar factors such
    as 1/a and sqrt(a) are folded into the operations' scalars (what each kind of pass costs:
    ``benchmarks/README.md``, "Constants of the fast paths").

    ``priors`` holds ``constants.drift_prior`` and ``constants.noise_prior`` as 0-dim CPU
    tensors. The three rows of ``scratch`` (views of one batch) hold, in turn:

    * row 0, ``gain``: k; then k e = mu_t - mu_{t-1}; for 16-bit parameters, last, theta in
      the state dtype;
    * row 1, ``innovation``: e = g_hat - mu_{t-1}; then (1 - k) e = g_hat - mu_t;
    * row 2, ``variance``: b_g + b_ghat; then S = k b_ghat; then the scaled denominator
      sqrt(S + a mu_t^2) + sqrt(a) eps.
    """
    inverse_shape = constants.inverse_shape
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

    # [fast-gain] k = b_g / (b_g + b_ghat), the sum held in row 2 until S is formed
    _into("add", drift_rates, variance, noise_rates)
    _into("div", drift_rates, gain, variance)
    # [fast-gain] e = g_hat - mu_{t-1}, with g_hat = -grad when maximising (state dtype)
    if maximize:
        _into("add", means, innovation, grads)
        _inplace("neg", innovation)
    else:
        _into("sub", grads, innovation, means)
    # [fast-variance], [fast-scaled] S = a sigma^2 = k b_ghat (1/a goes into the scalars)
    scaled_variance = _into("mul", gain, variance, noise_rates)
    # [fast-residuals] from here on row 0 holds k e = mu_t - mu_{t-1}, row 1 (1 - k) e
    step_of_mean = gain
    _inplace("mul", step_of_mean, innovation)
    _inplace("add", means, step_of_mean)  # [fast-mean] mu_t = mu_{t-1} + k e
    residual = innovation
    _inplace("sub", residual, step_of_mean)
    # [svi-blend] of [fast-targets], in the form of [fast-scaled]:
    # b_g <- ((1 - rho_1) b_g + rho_1 gamma) + rho_1/(2a) S + rho_1/2 (k e)^2
    _affine_(drift_rates, constants.drift_keep, priors[0])
    _inplace("add", drift_rates, scaled_variance, alpha=constants.drift_half_step * inverse_shape)
    _inplace("addcmul", drift_rates, step_of_mean, step_of_mean, value=constants.drift_half_step)
    # b_ghat <- ((1 - rho_2) b_ghat + rho_2 K_g gamma) + rho_2/(2a) S + rho_2/2 ((1 - k) e)^2
    _affine_(noise_rates, constants.noise_keep, priors[1])
    _inplace("add", noise_rates, scaled_variance, alpha=constants.noise_half_step * inverse_shape)
    _inplace("addcmul", noise_rates, residual, residual, value=constants.noise_half_step)
    # [fast-scaled] denominator sqrt(a) (sqrt(mu_t^2 + sigma^2) + eps)
    # = sqrt(S + a mu_t^2) + sqrt(a) eps, into row 2 (S is no longer needed)
    denominator = scaled_variance
    _inplace("addcmul", denominator, means, means, value=shape_a)
    _inplace("sqrt", denominator)
    _inplace("add", denominator, root_shape * eps)
    # [parameter-step] theta <- theta (1 - eta lambda) - eta mu_t / (sqrt(mu_t^2 + sigma^2)
    # + eps), where mu_t / (sqrt(mu_t^2 + sigma^2) + eps) = sqrt(a) mu_t / denominator
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
    params: list[Tensor],
    grads: list[Tensor],
    gradient_means: list[Tensor],
    drift_rates: list[Tensor],
    noise_rates: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float | Tensor,
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
    groups: dict[tuple, list[_Slot]] = defaultdict(list)
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
        priors = (
            torch.tensor(constants.drift_prior, dtype=state_dtype),
            torch.tensor(constants.noise_prior, dtype=state_dtype),
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
