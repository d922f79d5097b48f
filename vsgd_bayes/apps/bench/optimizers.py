"""The optimizers compared by the benchmarks: one registry, :data:`OPTIMIZERS`, one row each.

A row (:class:`OptimizerSpec`) gives the optimizer's label in tables and plots, a function
that builds it, the learning-rate grid the protocol starts from, its family (the VSGD family
or a peer, the optimizers a user would run instead), and what training with it needs beyond
``zero_grad, backward, step``:

* ``gradient_context(optimizer)``: a context entered once per step around the loss and its
  gradient (IVON takes the gradient at a posterior sample: ``sampled_params(train=True)``);
* ``set_mode(optimizer, training)``: a train/eval switch, called with ``True`` before the
  training steps and ``False`` before every evaluation or checkpoint (Schedule-Free AdamW
  steps at y and is evaluated at its average x: ``.train()`` / ``.eval()``);
* ``sample_context(optimizer)``: where set, a context in which the weights are one sample
  of the optimizer's posterior, for a Monte-Carlo predictive reading (IVON);
* ``schedule``: ``None`` (the protocol's ``--schedule`` applies), or the schedule the row
  always runs under because it replaces schedules by design (Schedule-Free: ``"warmup"``).

:class:`TrainingOptimizer` applies all of it, and the schedule, for every task's training
loop (the runner's supervised loop and the tasks with their own loop alike), so no task
knows which optimizer it trains with. To add an optimizer, append one row; every task, the
CLI's ``--optimizers`` and the tables pick it up.

``VSGD``, ``ConstantVSGD``, ``KalmanVSGD`` and ``FactoredVSGD`` come from
:mod:`vsgd_bayes.torch` (imported only when built, so that the baselines run without it); the
baselines are torch's ``AdamW`` and ``SGD`` with heavy-ball momentum 0.9; the peers a user
would pick instead are torch's ``Adafactor``, Schedule-Free AdamW
(``schedulefree.AdamWScheduleFree``), IVON (``ivon.IVON`` from ``ivon-opt``) and, where a
user would reach for structure, SOAP (``pytorch_optimizer.SOAP`` from ``pytorch-optimizer``),
the last three from the ``bench`` extra (imported only when built). Every optimizer takes the same
``weight_decay`` (decoupled for the VSGD family, AdamW, Adafactor and Schedule-Free AdamW, L2
for SGD, as each is usually run); IVON's is its prior precision, see :func:`_ivon`.

Example:
    >>> import torch
    >>> from vsgd_bayes.apps.bench.optimizers import make_optimizer
    >>> layer = torch.nn.Linear(2, 1)
    >>> make_optimizer("adamw", layer.parameters(), lr=1e-3).__class__.__name__
    'AdamW'
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from vsgd_bayes.apps.bench.schedules import check_schedule, schedule_factor

__all__ = [
    "OPTIMIZERS",
    "LABELS",
    "FAMILIES",
    "OptimizerSpec",
    "RunInfo",
    "TrainingOptimizer",
    "log_grid",
    "make_optimizer",
    "check_optimizer_name",
    "state_bytes_per_parameter",
]

#: The families of :attr:`OptimizerSpec.family`.
FAMILIES = ("vsgd", "peer")

#: Heavy-ball momentum of the SGD baseline (the usual value, and VSGD's K_g = 9 equivalent).
SGD_MOMENTUM = 0.9


def log_grid(lowest: float, points: int = 6, ratio: float = 10**0.5) -> tuple[float, ...]:
    """``points`` learning rates ``lowest * ratio**k``, rounded to 3 significant digits.

    The default, 6 points half a decade apart, spans 2.5 decades.
    """
    return tuple(float(f"{lowest * ratio**k:.3g}") for k in range(points))


@dataclass(frozen=True)
class RunInfo:
    """What a builder may need to know about the run: the number of training examples
    (``train_size``; IVON's effective sample size) and the budget's length in steps."""

    train_size: int | None = None
    total_steps: int | None = None


def _no_context(optimizer: torch.optim.Optimizer) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def _no_mode(optimizer: torch.optim.Optimizer, training: bool) -> None:
    return None


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of the benchmarks.

    Attributes:
        label: its name in tables and plots.
        build: ``build(params, lr, weight_decay, run, **options)`` returns the torch optimizer
            (``run``: a :class:`RunInfo`).
        lr_grid: the starting learning-rate grid (the protocol extends it at an edge).
        family: ``"vsgd"`` (the methods of this package) or ``"peer"`` (what a user would run
            instead; the best peer of a task is chosen among these).
        gradient_context: ``gradient_context(optimizer)``, the context of each step's loss
            and gradient (default: none).
        set_mode: ``set_mode(optimizer, training)``, the train/eval switch (default: none).
        sample_context: ``sample_context(optimizer)``, weights at a posterior sample, for a
            Monte-Carlo predictive reading (default ``None``: the row has no posterior).
        schedule: ``None`` (the protocol's schedule) or the schedule this row always uses.
    """

    label: str
    build: Callable[..., torch.optim.Optimizer]
    lr_grid: tuple[float, ...]
    family: str = "peer"
    gradient_context: Callable[[torch.optim.Optimizer], contextlib.AbstractContextManager] = (
        _no_context
    )
    set_mode: Callable[[torch.optim.Optimizer, bool], None] = _no_mode
    sample_context: Callable[[torch.optim.Optimizer], contextlib.AbstractContextManager] | None = (
        None
    )
    schedule: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"Invalid family: {self.family!r} (must be one of {FAMILIES})")
        if self.schedule is not None:
            check_schedule(self.schedule)


def _family_builder(class_name: str) -> Callable[..., torch.optim.Optimizer]:
    """The builder of the VSGD-family optimizer ``vsgd_bayes.torch.<class_name>``, with the
    protocol's ``weight_decay`` (decoupled)."""

    def build(
        params: Iterable[Any],
        lr: float,
        weight_decay: float,
        run: RunInfo | None = None,
        **options,
    ) -> torch.optim.Optimizer:
        # Imported lazily: the baselines must run even where vsgd_bayes.torch is unavailable.
        import vsgd_bayes.torch as family

        return getattr(family, class_name)(params, lr=lr, weight_decay=weight_decay, **options)

    build.__name__ = f"build_{class_name}"
    return build


_vsgd = _family_builder("VSGD")
_constant_vsgd = _family_builder("ConstantVSGD")
_kalman_vsgd = _family_builder("KalmanVSGD")
_factored_vsgd = _family_builder("FactoredVSGD")
_curvature_kalman_vsgd = _family_builder("CurvatureKalmanVSGD")
_kronecker_vsgd = _family_builder("KroneckerVSGD")


def _curvature_trust_region(
    params: Iterable[Any], lr: float, weight_decay: float, run: RunInfo | None = None, **options
) -> torch.optim.Optimizer:
    # The step that uses the curvature posterior (issue 19 part 5): the rate
    # min(lr, |m_g| / m_h) where m_h > 0.
    options.setdefault("curvature_step", "trust_region")
    return _curvature_kalman_vsgd(params, lr, weight_decay, run, **options)


def _schedule_free_vsgd(
    params: Iterable[Any], lr: float, weight_decay: float, run: RunInfo | None = None, **options
) -> torch.optim.Optimizer:
    # Schedule-Free AdamW's beta (0.9); no warm-up: on digits-vae SF-AdamW's warm-up carried
    # none of its lead, and VSGD with the same warm-up was further behind the best peer on
    # digits-contrastive (-7.5 SE against -2.7 SE without; benchmarks/RESULTS.md, the ablation).
    options.setdefault("schedule_free_momentum", SCHEDULE_FREE_MOMENTUM)
    return _vsgd(params, lr, weight_decay, run, **options)


def _adamw(
    params: Iterable[Any], lr: float, weight_decay: float, run: RunInfo | None = None, **options
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **options)


def _sgd(
    params: Iterable[Any], lr: float, weight_decay: float, run: RunInfo | None = None, **options
) -> torch.optim.Optimizer:
    options.setdefault("momentum", SGD_MOMENTUM)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, **options)


def _adafactor(
    params: Iterable[Any], lr: float, weight_decay: float, run: RunInfo | None = None, **options
) -> torch.optim.Optimizer:
    # torch's defaults otherwise: beta2_decay -0.8, eps (None, 1e-3), d = 1 (update clipping),
    # factored second moment for matrices; the relative step lr * max(eps2, RMS(theta)) with
    # the rate capped by 1/sqrt(t).
    return torch.optim.Adafactor(params, lr=lr, weight_decay=weight_decay, **options)


def _schedule_free_adamw(
    params: Iterable[Any], lr: float, weight_decay: float, run: RunInfo | None = None, **options
) -> torch.optim.Optimizer:
    import schedulefree

    # Its warm-up (which its documentation advises) is the row's schedule "warmup", applied by
    # TrainingOptimizer to group["lr"] in the budget's unit, so that it also works where the
    # number of optimizer steps is not known in advance (cartpole-pg counts environment
    # steps). With warmup_steps = 0 the optimizer's own schedule factor is 1 and its averaging
    # weight uses lr_max = max over the steps of group["lr"]: the same arithmetic as its
    # internal warm-up (schedulefree 1.4.1, adamw_schedulefree.py).
    options.setdefault("warmup_steps", 0)
    return schedulefree.AdamWScheduleFree(params, lr=lr, weight_decay=weight_decay, **options)


def _schedule_free_mode(optimizer: torch.optim.Optimizer, training: bool) -> None:
    # train(): the parameters hold y, where gradients are taken; eval(): x, the average.
    # (schedulefree's optimizers and the VSGD family's with schedule_free_momentum alike.)
    optimizer.train() if training else optimizer.eval()


#: beta of the Schedule-Free rows of the VSGD family: Schedule-Free AdamW's default.
SCHEDULE_FREE_MOMENTUM = 0.9


#: IVON's prior precision delta (its ``weight_decay``) when the protocol's is 0: IVON's own
#: default. delta = 0 would make the prior improper and the posterior's standard deviation
#: 1 / sqrt(ess (h + delta)) unbounded where the Hessian estimate h goes to 0.
IVON_PRIOR_PRECISION = 1e-4


def _soap(
    params: Iterable[Any], lr: float, weight_decay: float, run: RunInfo | None = None, **options
) -> torch.optim.Optimizer:
    from pytorch_optimizer import SOAP

    # Its defaults otherwise (pytorch-optimizer 4.1.0): betas (0.95, 0.95), eigenbases of the
    # gradient's Kronecker factors refreshed every 10 steps, sides up to 10,000, 1-D tensors
    # unpreconditioned, Adam's bias correction. Its default weight decay (0.01) is replaced by
    # the protocol's, as for every row.
    return SOAP(params, lr=lr, weight_decay=weight_decay, **options)


def _ivon(
    params: Iterable[Any], lr: float, weight_decay: float, run: RunInfo | None = None, **options
) -> torch.optim.Optimizer:
    import ivon

    if run is None or run.train_size is None:
        raise ValueError("Invalid run: IVON needs the training-set size (RunInfo.train_size)")
    # ess = the training-set size (as its documentation says); its other defaults are kept
    # (hess_init 1, beta1 0.9, beta2 0.99999, one Monte-Carlo sample per step).
    options.setdefault("ess", run.train_size)
    return ivon.IVON(params, lr=lr, weight_decay=weight_decay or IVON_PRIOR_PRECISION, **options)


def _ivon_gradient_context(optimizer: torch.optim.Optimizer) -> contextlib.AbstractContextManager:
    # Weights at theta ~ q for the loss and its gradient; the mean is restored at exit, and the
    # gradient collected for the next step().
    return optimizer.sampled_params(train=True)


def _ivon_sample_context(optimizer: torch.optim.Optimizer) -> contextlib.AbstractContextManager:
    return optimizer.sampled_params(train=False)


#: The registry, in the order the tables list the optimizers. Grids: 6 points half a decade
#: apart (2.5 decades). AdamW's step is normalised (|step| <~ lr) and its usual rate is 1e-3;
#: VSGD's and ConstantVSGD's step mu / sqrt(mu^2 + sigma^2) shrinks where the gradient
#: posterior is uncertain, so their grids sit half a decade higher and reach the authors'
#: default 0.1; SGD's step scales with the gradient and its usual rate is 0.1 (momentum 0.9).
#: Adafactor's step is lr * RMS(theta) (relative step), its rate capped by 1/sqrt(t): with
#: weights of RMS ~0.1 its rates sit about two decades above Adam's (torch's default 1e-2),
#: so its grid spans 3e-3..0.95. Schedule-Free AdamW's usual rate (its default 2.5e-3) is a
#: few times AdamW's: 3e-4..0.095. IVON's (rescale_lr: the step is lr * m / (h + delta)) is
#: of order 0.1 in its paper: 3e-3..0.95.
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "vsgd": OptimizerSpec("VSGD", _vsgd, log_grid(1e-3), family="vsgd"),
    "constant-vsgd": OptimizerSpec("ConstantVSGD", _constant_vsgd, log_grid(1e-3), family="vsgd"),
    # Kalman VSGD takes VSGD's step (|step| < lr) with another inference: VSGD's grid.
    "kalman-vsgd": OptimizerSpec("KalmanVSGD", _kalman_vsgd, log_grid(1e-3), family="vsgd"),
    # Factored VSGD takes VSGD's step with shared precisions: VSGD's grid.
    "factored-vsgd": OptimizerSpec("FactoredVSGD", _factored_vsgd, log_grid(1e-3), family="vsgd"),
    # Curvature Kalman VSGD (issue 19) takes VSGD's step (|step| <= lr) with the
    # step-following model's posterior: VSGD's grid; "-tr" rates it by the curvature posterior
    # within a trust region of radius lr (so its rates are at most lr): the same grid.
    "curvature-kalman-vsgd": OptimizerSpec(
        "CurvatureKalmanVSGD", _curvature_kalman_vsgd, log_grid(1e-3), family="vsgd"
    ),
    "curvature-kalman-vsgd-tr": OptimizerSpec(
        "CurvatureKalmanVSGD-TR", _curvature_trust_region, log_grid(1e-3), family="vsgd"
    ),
    # Kronecker VSGD (issue 21) takes VSGD's step in a rotated basis: |step| per coordinate of
    # the basis < lr, the same norm bound: VSGD's grid.
    "kronecker-vsgd": OptimizerSpec(
        "KroneckerVSGD", _kronecker_vsgd, log_grid(1e-3), family="vsgd"
    ),
    # VSGD's step, Schedule-Free: gradients at y, evaluated at the average x (issue 23: the
    # averaged iterate carried most of SF-AdamW's lead on digits-vae). Its own schedule:
    # a constant rate under every --schedule, as Schedule-Free replaces the schedule.
    "sf-vsgd": OptimizerSpec(
        "SF-VSGD",
        _schedule_free_vsgd,
        log_grid(1e-3),
        family="vsgd",
        set_mode=_schedule_free_mode,
        schedule="constant",
    ),
    "adamw": OptimizerSpec("AdamW", _adamw, log_grid(1e-4)),
    "sgd": OptimizerSpec("SGD-momentum", _sgd, log_grid(1e-3)),
    "adafactor": OptimizerSpec("Adafactor", _adafactor, log_grid(3e-3)),
    "sf-adamw": OptimizerSpec(
        "SF-AdamW",
        _schedule_free_adamw,
        log_grid(3e-4),
        set_mode=_schedule_free_mode,
        schedule="warmup",
    ),
    # SOAP (Vyas et al. 2024): Adam in the eigenbasis of Shampoo's factors, the structured
    # baseline of issue 21; its step is Adam's (|step| <~ lr): AdamW's grid.
    "soap": OptimizerSpec("SOAP", _soap, log_grid(1e-4)),
    "ivon": OptimizerSpec(
        "IVON",
        _ivon,
        log_grid(3e-3),
        gradient_context=_ivon_gradient_context,
        sample_context=_ivon_sample_context,
    ),
}

#: How the tables and plots name them.
LABELS: dict[str, str] = {name: spec.label for name, spec in OPTIMIZERS.items()}


def check_optimizer_name(name: Any) -> str:
    """Return ``name`` if it is one of :data:`OPTIMIZERS`, else raise ``ValueError``."""
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer: {name!r} (must be one of {tuple(OPTIMIZERS)})")
    return name


def make_optimizer(
    name: str,
    params: Iterable[Any],
    lr: float,
    weight_decay: float = 0.0,
    run: RunInfo | None = None,
    **options: Any,
) -> torch.optim.Optimizer:
    """Build the optimizer called ``name`` (one of :data:`OPTIMIZERS`) over ``params``.

    Args:
        name: a key of :data:`OPTIMIZERS`, e.g. ``"vsgd"`` or ``"adamw"``.
        params: parameters or parameter groups.
        lr: learning rate eta.
        weight_decay: lambda; decoupled for VSGD/ConstantVSGD/AdamW, L2 for SGD.
        run: what the builder may need about the run (IVON needs ``train_size``).
        **options: passed on to the optimizer (e.g. ``variance_ratio`` for VSGD).

    Returns:
        the ``torch.optim.Optimizer``.
    """
    check_optimizer_name(name)
    return OPTIMIZERS[name].build(params, lr=lr, weight_decay=weight_decay, run=run, **options)


def state_bytes_per_parameter(optimizer: torch.optim.Optimizer) -> float:
    """Bytes of the optimizer's tensors (its ``state`` and any tensors kept in its parameter
    groups, as IVON does) per parameter value; 0-dim step counters included."""
    seen: set[int] = set()
    total = 0

    def add(value: Any) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            if value.data_ptr() not in seen or value.numel() == 0:
                seen.add(value.data_ptr())
                total += value.numel() * value.element_size()
        elif isinstance(value, dict):
            for item in value.values():
                add(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                add(item)

    add(dict(optimizer.state))
    for group in optimizer.param_groups:
        add({key: value for key, value in group.items() if key != "params"})
    count = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    return total / max(count, 1)


class TrainingOptimizer:
    """One run's optimizer with what its row declares: its gradient context, its train/eval
    mode and the learning-rate schedule (eta_t = eta * f(t, T),
    :func:`~vsgd_bayes.apps.bench.schedules.schedule_factor`).

    A training loop calls ``train()`` before its steps, takes each step's loss and gradient
    inside ``with gradients():``, calls ``step(t)`` (t = 1..T in the budget's unit), and
    ``eval()`` before every evaluation or checkpoint.

    Example:
        >>> layer = torch.nn.Linear(2, 1)
        >>> opt = TrainingOptimizer("adamw", layer.parameters(), 1e-3, "step", total_steps=9)
        >>> with opt.gradients():
        ...     layer(torch.ones(2)).sum().backward()
        >>> opt.step(4)
        >>> opt.optimizer.param_groups[0]["lr"]
        0.0005
    """

    def __init__(
        self,
        name: str,
        params: Iterable[Any],
        lr: float,
        schedule: str,
        total_steps: int,
        train_size: int | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        check_optimizer_name(name)
        check_schedule(schedule)
        self.name, self.spec = name, OPTIMIZERS[name]
        #: The schedule actually run: the row's own where it replaces schedules by design.
        self.schedule = self.spec.schedule or schedule
        self.total_steps = total_steps
        self.optimizer = make_optimizer(
            name,
            params,
            lr=lr,
            weight_decay=weight_decay,
            run=RunInfo(train_size=train_size, total_steps=total_steps),
        )
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            # torch.optim.lr_scheduler's record of the base rate, which the schedule here
            # scales: Curvature Kalman VSGD starts its curvature ratio in units of it
            group.setdefault("initial_lr", group["lr"])
        #: How many times the gradient context was entered (one per step; tested).
        self.gradient_contexts = 0

    @contextlib.contextmanager
    def gradients(self):
        """The context of one step's loss and ``backward()``; zeroes the gradients first."""
        self.gradient_contexts += 1
        with self.spec.gradient_context(self.optimizer):
            self.optimizer.zero_grad(set_to_none=True)
            yield

    def step(self, t: int) -> None:
        """Set eta_t for step ``t`` of ``total_steps`` and take the step."""
        factor = schedule_factor(self.schedule, t, self.total_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self.optimizer.step()

    def train(self) -> None:
        self.spec.set_mode(self.optimizer, True)

    def eval(self) -> None:
        self.spec.set_mode(self.optimizer, False)

    def sample(self) -> contextlib.AbstractContextManager | None:
        """A context with the weights at a posterior sample, or ``None`` without a posterior."""
        if self.spec.sample_context is None:
            return None
        return self.spec.sample_context(self.optimizer)

    def state_bytes_per_parameter(self) -> float:
        return state_bytes_per_parameter(self.optimizer)
