"""Optimizer state memory: measured from ``state_dict()`` tensors, and computed from each
optimizer's state layout for the scaling figure.

Optimizers: torch's Adam and Adafactor, VSGD, KalmanVSGD, FactoredVSGD, CurvatureKalmanVSGD,
KroneckerVSGD and the structured peer SOAP (``pytorch_optimizer.SOAP``, defaults; float32
parameters). Measured: one step creates the state; the bytes of every tensor in
``optimizer.state_dict()["state"]`` (step counters included; the tensors of a list too, as
SOAP keeps its factors) over the parameters' bytes, on
ResNet-18's shapes (11.7M values in 62 tensors) and on 4 x 4096^2 (67M). Computed: the same
count from the layout of each optimizer's state (:func:`state_values`), checked against the
measurement on both shape sets (the script exits non-zero on a mismatch), then evaluated for
square 4-matrix models of 10^5 to 10^8 parameters.

Usage::

    python benchmarks/optimizer_memory.py --json benchmarks/optimizer_memory/memory.json \\
        --png benchmarks/optimizer_memory/scaling.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from step_time import resnet18_shapes  # noqa: E402

from vsgd_bayes.hyperparameters.kronecker import structured_sides  # noqa: E402
from vsgd_bayes.torch import (  # noqa: E402
    VSGD,
    CurvatureKalmanVSGD,
    FactoredVSGD,
    KalmanVSGD,
    KroneckerVSGD,
)


def _soap(params):
    from pytorch_optimizer import SOAP

    return SOAP(params, lr=1e-3)


OPTIMIZERS = {
    "Adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "Adafactor": lambda params: torch.optim.Adafactor(params, lr=1e-2),
    "VSGD": lambda params: VSGD(params, lr=1e-3),
    "KalmanVSGD": lambda params: KalmanVSGD(params, lr=1e-3),
    "FactoredVSGD": lambda params: FactoredVSGD(params, lr=1e-3),
    "CurvatureKalmanVSGD": lambda params: CurvatureKalmanVSGD(params, lr=1e-3),
    "KroneckerVSGD": lambda params: KroneckerVSGD(params, lr=1e-3),
    "SOAP": _soap,
}

#: SOAP's (pytorch-optimizer 4.1.0) default ``max_precondition_dim``: a longer side keeps no
#: factor.
SOAP_MAX_PRECONDITION_DIM = 10000

#: Each step counter is one 0-dim float32 tensor per parameter in every optimizer here but
#: SOAP, which counts its steps in the parameter group.
STEP_VALUES = 1


def state_values(name: str, shape: tuple[int, ...]) -> int:
    """Number of float32 values in one parameter's state, from the optimizer's layout.

    Adam: exp_avg, exp_avg_sq (2N). VSGD: mu, b_g, b_ghat (3N). KalmanVSGD: mu, S, ln lambda,
    s (4N). FactoredVSGD: mu (N) and row/column rates of both precisions, 2(m + n) for the
    matrix view (m, n) = (shape[0], N / shape[0]) of a tensor of rank >= 2, 2N for a vector
    (one per coordinate). CurvatureKalmanVSGD: m_g, m_h, P_gg, P_gh, P_hh, r, ln lambda_g,
    ln lambda_h, the 2 x 5 tangents, the 2 informations and the previous point (21N).
    KroneckerVSGD: mu~, b~_g, b~_ghat in the basis (3N) and, for each structured side of a
    2-D tensor (length 2 .. ``max_basis_dim`` = 2048, ``structured_sides``), its basis and its
    moment (2 m^2 for the rows, 2 n^2 for the columns); an unstructured side keeps two empty
    (0, 0) tensors. SOAP (pytorch-optimizer 4.1.0, defaults): exp_avg, exp_avg_sq (2N) and,
    for a tensor of rank >= 2, the Gram factor GG and eigenbasis Q of every dimension of length
    <= 10000 (2 d^2 per dimension d; a vector keeps none), no step counter.
    Adafactor (torch 2.13): for rank >= 2, row_var (shape[:-1]) and
    col_var (shape[:-2] + shape[-1:]), i.e. factored over the last two dimensions; for a vector
    the full variance (N). Plus the step counter.
    """
    numel = math.prod(shape)
    if name == "Adam":
        values = 2 * numel
    elif name == "VSGD":
        values = 3 * numel
    elif name == "KalmanVSGD":
        values = 4 * numel
    elif name == "CurvatureKalmanVSGD":
        values = 21 * numel
    elif name == "FactoredVSGD":
        if len(shape) >= 2:
            rows = shape[0]
            values = numel + 2 * (rows + (numel // rows if rows else 0))
        else:
            values = numel + 2 * numel
    elif name == "KroneckerVSGD":
        rows, cols = structured_sides(tuple(shape))
        values = 3 * numel + (2 * shape[0] ** 2 if rows else 0) + (2 * shape[1] ** 2 if cols else 0)
    elif name == "SOAP":
        factors = sum(2 * d * d for d in shape if d <= SOAP_MAX_PRECONDITION_DIM)
        return 2 * numel + (factors if len(shape) >= 2 else 0)
    elif name == "Adafactor":
        if len(shape) >= 2:
            values = math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]
        else:
            values = numel
    else:
        raise ValueError(f"Invalid name: {name!r} (must be one of {tuple(OPTIMIZERS)})")
    return values + STEP_VALUES


def _tensors(value) -> list:
    """The tensors of one state entry: itself, or those of a (nested) list or tuple."""
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def measured_state_bytes(name: str, shapes: list[tuple[int, ...]]) -> tuple[int, int]:
    """(state bytes from ``state_dict()`` after one step, parameter bytes)."""
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p in params:
        p.grad = torch.full_like(p, 0.01)
    optimizer = OPTIMIZERS[name](params)
    optimizer.step()
    state = optimizer.state_dict()["state"]
    state_bytes = sum(t.numel() * t.element_size() for entry in state.values()
                      for value in entry.values() for t in _tensors(value))
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    del optimizer, params, state
    return state_bytes, param_bytes


def measure(shape_sets: dict[str, list[tuple[int, ...]]]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for set_name, shapes in shape_sets.items():
        for name in OPTIMIZERS:
            state_bytes, param_bytes = measured_state_bytes(name, shapes)
            computed = 4 * sum(state_values(name, s) for s in shapes)
            table.setdefault(set_name, {})[name] = {
                "state_bytes": state_bytes,
                "param_bytes": param_bytes,
                "ratio": state_bytes / param_bytes,
                "computed_bytes": computed,
            }
    return table


def scaling(sizes: list[int]) -> dict[str, list[float]]:
    """State / parameter bytes for models of 4 square matrices of ``size`` values in all."""
    curves: dict[str, list[float]] = {name: [] for name in OPTIMIZERS}
    for total in sizes:
        side = max(1, round(math.sqrt(total / 4)))
        shapes = [(side, side)] * 4
        numel = 4 * side * side
        for name in OPTIMIZERS:
            curves[name].append(sum(state_values(name, s) for s in shapes) / numel)
    return curves


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 x 1024^2 instead of 4 x 4096^2")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--png", help="write the scaling figure here")
    args = parser.parse_args(argv)
    side = 1024 if args.quick else 4096
    shape_sets = {"resnet18": resnet18_shapes(), f"4x{side}^2": [(side, side)] * 4}
    table = measure(shape_sets)
    mismatches = []
    for set_name, rows in table.items():
        print(f"\n{set_name} ({rows['Adam']['param_bytes'] / 2**20:.1f} MiB of parameters)")
        print(f"{'optimizer':<20} {'state MiB':>10} {'state / params':>15} {'layout':>8}")
        for name, row in rows.items():
            agrees = row["computed_bytes"] == row["state_bytes"]
            if not agrees:
                mismatches.append((set_name, name, row["computed_bytes"], row["state_bytes"]))
            print(f"{name:<20} {row['state_bytes'] / 2**20:>10.2f} {row['ratio']:>15.4f} "
                  f"{'=' if agrees else 'DIFFERS':>8}")
    sizes = [int(10 ** (5 + k / 4)) for k in range(13)]  # 1e5 .. 1e8
    curves = scaling(sizes)
    print("\ncomputed state / params, 4 square matrices:")
    print(f"{'params':>12} " + " ".join(f"{n:>13}" for n in OPTIMIZERS))
    for index, total in enumerate(sizes):
        print(f"{total:>12.3g} " + " ".join(f"{curves[n][index]:>13.4f}" for n in OPTIMIZERS))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": platform.platform(), "torch": torch.__version__,
                       "measured": table, "scaling": {"params": sizes, **curves}}, f, indent=1)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 4))
        for name in OPTIMIZERS:
            axis.plot(sizes, curves[name], marker="o", markersize=3, label=name)
        small = table["resnet18"]
        axis.scatter([small["Adam"]["param_bytes"] / 4] * len(OPTIMIZERS),
                     [small[n]["ratio"] for n in OPTIMIZERS], color="black", marker="x",
                     zorder=3, label="measured (ResNet-18)")
        axis.set_xscale("log")
        axis.set_xlabel("parameters (4 square matrices; x: ResNet-18 shapes)")
        axis.set_ylabel("optimizer state / parameter bytes")
        axis.set_title("Optimizer memory (float32 state)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
        figure.savefig(args.png, dpi=120)
    if mismatches:
        print(f"\nlayout and measurement differ: {mismatches}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
