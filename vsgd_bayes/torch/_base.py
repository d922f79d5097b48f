"""The skeleton every torch optimizer of the package is built on: :class:`VSGDFamilyOptimizer`.

It holds what does not depend on the update rule: the template ``step()`` (closure, checks of
every group and gradient before anything changes, lazy state creation, dispatch to the
functional entry point), state dtypes for 16-bit parameters, ``__setstate__`` for older
state dicts and a ``load_state_dict`` that honours the load pre-hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from vsgd_bayes import hyperparameters as hp
from vsgd_bayes.hyperparameters.schedule_free import check_schedule_free_momentum
from vsgd_bayes.torch import _schedule_free as schedule_free
from vsgd_bayes.torch._common import check_flag, state_dtype

__all__ = ["VSGDFamilyOptimizer", "StateInit", "PATHS"]

#: The execution paths an optimizer may declare, as in torch.optim: one tensor at a time,
#: ``torch._foreach_*`` on lists, one compiled kernel per step.
PATHS = ("single_tensor", "foreach", "fused")

#: Creates one state tensor: (parameter, its param group, the state dtype) -> tensor.
StateInit = Callable[[Tensor, dict[str, Any], torch.dtype], Tensor]


class VSGDFamilyOptimizer(Optimizer):
    """Base class of ``VSGD``, ``ConstantVSGD`` and any further optimizer of the family.

    A subclass declares four things and writes ``__init__`` (its documented signature, which
    builds the defaults dict and calls ``super().__init__(params, defaults)``):

    * ``state_fields``: ``{name: init}`` in the order of the rule's state NamedTuple (after
      ``step``); ``init(param, group, dtype)`` returns the initial tensor, in ``dtype``
      (promote(param dtype, float32), see :func:`~vsgd_bayes.torch._common.state_dtype`).
      ``step`` (a 0-dim float32 CPU tensor, like torch Adam's) is created by the base.
    * ``hyperparameters``: the names of the group entries checked by
      :func:`vsgd_bayes.hyperparameters.check_hyperparameter` (construction, every
      ``add_param_group`` and every step) and passed by name to the functional entry point.
    * ``paths``: the subset of ``PATHS`` it implements; ``"single_tensor"`` and
      ``"foreach"`` always (the ``foreach`` flag exists for every optimizer), ``"fused"``
      adds a ``fused`` flag.
    * ``functional``: ``staticmethod(f)`` with
      ``f(params, grads, *state_lists, steps, *, foreach, [fused,] <hyperparameters>,
      maximize)``: one step on the lists in place (state lists in ``state_fields`` order,
      ``steps`` advanced by one), with no validation (done here, before it is called).

    Adding an optimizer ``X`` (``ConstantVSGD`` in ``constant.py`` is the pattern):

    1. its defaults (a ``X_DEFAULTS`` dict) in :mod:`vsgd_bayes.hyperparameters`, and for a
       new hyperparameter name its requirement in ``REQUIREMENTS`` (what
       ``check_hyperparameter`` enforces);
    2. ``_x_single_tensor.py``: a port of the JAX rule, one tensor at a time, tested for
       float64 parity with the rule (``tests/test_torch_parity.py``); ``_x_foreach.py``
       (and a fused kernel, if any) with the same signature, tested against it;
    3. ``x.py``: the functional entry point ``x(params, grads, *state_lists, steps, *,
       foreach, ...)``, which hands ``{"single_tensor": ..., "foreach": ...}`` to
       :func:`vsgd_bayes.torch._functional.run_path`, and the class: the four declarations
       above and ``__init__``; methods that read a parameter's posterior use
       ``_group_of`` and ``_stepped_state``;
    4. a row in ``tests/test_torch_battery.py``, which then runs every generic behaviour
       (paths, state dicts, hooks, dtypes, errors) on it.

    **Schedule-Free averaging** (every optimizer of the family, argument
    ``schedule_free_momentum``; Defazio et al. 2024; ``derivations/13_schedule_free.md``):
    beta in (0, 1) turns it on for a param group. Gradients are taken at
    y = beta x + (1 - beta) z, z takes the optimizer's own step and x is the average of the z
    iterates (:mod:`vsgd_bayes.hyperparameters.schedule_free`). Call ``eval()`` before
    evaluating or saving the model (the parameters then hold x) and ``train()`` before the
    next step (a step in eval mode raises ``RuntimeError`` and changes nothing). It costs one
    more tensor per parameter (the state ``schedule_free_z``). None (default): off.

    (VSGD's own entry point ``vsgd`` lives next to ``run_path`` in ``_functional.py``.)
    """

    state_fields: ClassVar[dict[str, StateInit]]
    #: State fields that stay real for a complex parameter (e.g. factored rates, which are
    #: per row or column of its real view rather than per coordinate).
    real_state_fields: ClassVar[frozenset[str]] = frozenset()
    hyperparameters: ClassVar[tuple[str, ...]]
    paths: ClassVar[tuple[str, ...]]
    functional: ClassVar[Callable[..., None]]
    #: the module of the ``"fused"`` path, asked ``fused_is_available(device)`` before a step
    #: with ``fused=True`` (VSGD's by default)
    fused_module_name: ClassVar[str] = "vsgd_bayes.torch._fused"

    def __init__(self, params: Iterable[Tensor | dict[str, Any]], defaults: dict) -> None:
        self._validate_group(defaults)
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ validation
    @classmethod
    def _flags(cls) -> tuple[str, ...]:
        return ("maximize", "foreach", "fused") if "fused" in cls.paths else (
            "maximize", "foreach"
        )

    @classmethod
    def _validate_group(cls, group: dict[str, Any]) -> None:
        """Raise on an invalid hyperparameter or flag of ``group`` (named, with its value)."""
        for name in cls.hyperparameters:
            hp.check_hyperparameter(name, group[name])
        for flag in cls._flags():
            check_flag(flag, group[flag], allow_none=flag != "maximize")
        check_schedule_free_momentum(group.get("schedule_free_momentum"))
        if group["foreach"] and group.get("fused"):
            raise ValueError("foreach=True and fused=True are mutually exclusive; choose one path")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group after validating its hyperparameters (merged with the defaults)."""
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._validate_group(merged)
        super().add_param_group(param_group)

    def _check_before_step(self) -> None:
        """Everything that can make a step fail, checked before any parameter or state changes."""
        name = type(self).__name__
        for group_index, group in enumerate(self.param_groups):
            self._validate_group(group)
            if schedule_free.is_on(group) and not schedule_free.in_train_mode(group):
                raise RuntimeError(
                    f"{name} with schedule_free_momentum: param group {group_index} is in eval "
                    "mode (its parameters hold the average x); call optimizer.train() before "
                    "step()"
                )
            for param_index, param in enumerate(group["params"]):
                grad = param.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError(
                        f"{name} does not support sparse gradients: parameter {param_index} of "
                        f"param group {group_index} has a gradient with layout {grad.layout}"
                    )
                if group.get("fused"):
                    from vsgd_bayes.torch._functional import fused_module

                    module = fused_module(type(self).fused_module_name)
                    if not module.fused_is_available(param.device):
                        raise RuntimeError(
                            f"fused=True: the fused {name} kernel is not available on "
                            f"{param.device} (parameter {param_index} of param group "
                            f"{group_index})"
                        )

    def _path_arguments(self, params: list[Tensor]) -> dict[str, Any]:
        """Extra keyword arguments of the functional for this step's ``params`` of one group,
        prepared by :meth:`_check_before_step` (none here; KroneckerVSGD's planned refreshes)."""
        del params
        return {}

    # ------------------------------------------------------------------ state
    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        fields: list[list[Tensor]],
        steps: list[Tensor],
    ) -> None:
        """Append the parameters with a gradient, their gradients, their state (one list per
        state field) and step counters; a parameter's state is created here at its first
        gradient (lazily). The name and the fill-the-lists form are torch.optim's, which
        ``torch.compile`` recognises (it runs this method eagerly, outside the graph)."""
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if len(state) == 0:
                dtype = state_dtype(param.dtype)
                # step is a float32 CPU scalar, like torch Adam's: reading it costs no sync.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                for key, init in self.state_fields.items():
                    state[key] = init(param, group, dtype)
            params.append(param)
            grads.append(param.grad)
            for column, key in zip(fields, self.state_fields):
                column.append(state[key])
            steps.append(state["step"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore (also called by ``load_state_dict``): groups of older state dicts get the
        flags' defaults, and a step count saved as a Python number becomes a float32 tensor
        again (torch.optim's contract for loading older state dicts)."""
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("schedule_free_momentum", None)
            if "fused" in self.paths:
                group.setdefault("fused", None)
            for param in group["params"]:
                param_state = self.state.get(param, {})
                if "step" in param_state and not torch.is_tensor(param_state["step"]):
                    param_state["step"] = torch.tensor(
                        float(param_state["step"]), dtype=torch.float32
                    )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict, keeping the state in promote(param dtype, float32).

        ``torch.optim.Optimizer.load_state_dict`` casts floating state to the parameter's
        dtype, which would round the float32 state of 16-bit parameters to 16 bits (and
        gamma ~ 1e-8 to zero in float16). The state tensors are therefore re-read in the state
        dtype from the dict that the load pre-hooks returned (a last pre-hook, registered for
        the duration of the call, records it), so a hook's changes are honoured.
        """
        seen: list[dict[str, Any]] = []

        def record(optimizer: Optimizer, loaded: dict[str, Any]) -> None:
            seen.append(loaded)

        handle = self.register_load_state_dict_pre_hook(record)
        try:
            super().load_state_dict(state_dict)
        finally:
            handle.remove()
        loaded = seen[-1]
        saved_ids = [i for g in loaded["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, param in zip(saved_ids, params):
            dtype = state_dtype(param.dtype)
            for key, value in loaded["state"].get(saved_id, {}).items():
                if key != "step" and torch.is_tensor(value):
                    key_dtype = dtype.to_real() if key in self.real_state_fields else dtype
                    self.state[param][key] = value.to(
                        device=param.device, dtype=key_dtype, copy=True
                    )

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one step on every parameter that has a gradient.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss (run
                with gradients enabled, before the step).

        Returns:
            The closure's loss, or None.

        Raises:
            ValueError, TypeError: an invalid hyperparameter or flag in a param group.
            RuntimeError: a sparse gradient, or ``fused=True`` where no fused kernel exists.
            In each case nothing (no parameter, no state) has been modified.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_before_step()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            fields: list[list[Tensor]] = [[] for _ in self.state_fields]
            steps: list[Tensor] = []
            self._init_group(group, params, grads, fields, steps)
            if not params:
                continue
            flags = {flag: group[flag] for flag in self._flags()}
            hyperparameters = {name: group[name] for name in self.hyperparameters}
            if schedule_free.is_on(group):
                states = [self.state[p] for p in params]
                ys = schedule_free.start_(params, states)
            type(self).functional(params, grads, *fields, steps, **flags, **hyperparameters,
                                  **self._path_arguments(params))  # fmt: skip
            if schedule_free.is_on(group):
                schedule_free.average_(params, ys, states, group)
        return loss

    # ------------------------------------------------------------------ Schedule-Free modes
    def train(self) -> None:
        """Train mode (the default): the parameters of Schedule-Free groups hold y, where
        gradients are taken. A no-op for groups without ``schedule_free_momentum``, and when
        already in train mode."""
        schedule_free.to_train_(self.param_groups, self.state)

    def eval(self) -> None:
        """Eval mode: the parameters of Schedule-Free groups hold the average x, the point to
        evaluate, checkpoint or export; ``step()`` refuses until ``train()``. A no-op for
        groups without ``schedule_free_momentum``."""
        schedule_free.to_eval_(self.param_groups, self.state)

    # ------------------------------------------------------------------ posterior helpers
    def _group_of(self, param: Tensor, what: str) -> dict[str, Any]:
        """The param group holding ``param``; ValueError if there is none."""
        for group in self.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise ValueError(
            f"{what}: the parameter (shape {tuple(param.shape)}) is not in this optimizer's "
            "param groups"
        )

    def _stepped_state(self, param: Tensor, what: str) -> dict[str, Any]:
        """The state of ``param`` after at least one step; ValueError before its first."""
        state = self.state.get(param, {})
        if any(key not in state for key in self.state_fields) or float(state["step"]) < 1:
            raise ValueError(
                f"{what}: the parameter (shape {tuple(param.shape)}) has no "
                f"{type(self).__name__} state yet: it has not taken a step with a gradient"
            )
        return state
