"""Step time and transient memory of the VSGD execution paths against torch's Adam.

Paths: VSGD single-tensor / foreach / fused (the functional paths the optimizer dispatches
to, on shared parameters and state), ``VSGD(params)`` with its default flags (the optimizer
as a user constructs it, with its own state; the path it picked is printed), Kalman VSGD
single-tensor / foreach (its own state), Factored VSGD single-tensor / foreach (its own
state), Curvature Kalman VSGD single-tensor / foreach / fused (its own state; fused on CPU
only), Kronecker VSGD and the structured peer SOAP (``pytorch_optimizer.SOAP``, defaults but
``weight_decay=0``; both refresh their eigenbases every 10th step, so one timed call of theirs
is 10 steps, one refresh included, and its time is reported per step), ``torch.optim.Adam``
(foreach=True and fused=True), ``torch.optim.Adafactor`` (foreach=True) and, when installed,
``pytorch_optimizer.VSGD`` (third party). Rounds are
interleaved in one process (round r runs every path once), so a change in the machine's load
hits all paths
alike; we report the minimum and the median per path, and the ratio of minima to fused Adam.

Transient memory is the peak of memory allocated during one step beyond what was allocated
before it (parameters, gradients and persistent state are allocated before), as a multiple
of the parameters' size. CPU: torch's profiler with ``profile_memory=True`` reports every
allocation and free of torch's CPU allocator; the peak of its running total ("Total
Allocated" of the ``[memory]`` events in the trace) minus its first value is the transient
peak. CUDA: ``torch.cuda.max_memory_allocated`` minus ``torch.cuda.memory_allocated``
before the step.

Usage (see benchmarks/README.md)::

    python benchmarks/step_time.py --threads 1 --shapes both --json out.json --png out.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vsgd_bayes import hyperparameters as hp  # noqa: E402
from vsgd_bayes.torch._foreach import foreach_vsgd  # noqa: E402
from vsgd_bayes.torch._fused import fused_is_available, fused_vsgd  # noqa: E402

LR = 1e-3  # small, so parameters stay bounded over many benchmark steps


def resnet18_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's ResNet-18 (11,689,512 values in 62 tensors)."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    in_channels = 64
    for stage, channels in enumerate([64, 128, 256, 512]):
        for block in range(2):
            first_in = in_channels if block == 0 else channels
            shapes += [(channels, first_in, 3, 3), (channels,), (channels,)]
            shapes += [(channels, channels, 3, 3), (channels,), (channels,)]
            if stage > 0 and block == 0:  # downsampling shortcut: 1x1 conv + batch norm
                shapes += [(channels, in_channels, 1, 1), (channels,), (channels,)]
        in_channels = channels
    return shapes + [(1000, 512), (1000,)]


#: Steps per timed call of a path that refreshes a basis every this many steps (Kronecker
#: VSGD's ``basis_update_every`` and SOAP's ``precondition_frequency``, both 10 by default).
REFRESH_WINDOW = 10

#: SOAP's eigendecompositions of 4096-long sides every 10 steps would take this benchmark's
#: rounds to hours on a CPU; it is timed on shape sets whose sides are at most this long.
SOAP_MAX_SIDE = 2048


def shape_sets(which: str, quick: bool) -> dict[str, list[tuple[int, ...]]]:
    """``resnet18``, ``big`` (4 x 4096^2) and ``matrices`` (4 x 1024^2, every side structured
    by Kronecker VSGD, whose ``max_basis_dim`` is 2048); ``both`` is the first two."""
    side = 1024 if quick else 4096
    matrix_side = 128 if quick else 1024
    sets = {
        "resnet18": resnet18_shapes(),
        "big": [(side, side)] * 4,
        "matrices": [(matrix_side, matrix_side)] * 4,
    }
    if quick:
        sets["resnet18"] = [s for s in sets["resnet18"] if len(s) == 1] + [(256, 256, 3, 3)]
    if which == "all":
        return sets
    if which == "both":
        return {name: sets[name] for name in ("resnet18", "big")}
    return {which: sets[which]}


def windowed(step: Callable[[], None], steps: int) -> Callable[[], None]:
    """``steps`` consecutive steps as one timed call; ``benchmark`` divides its time by
    ``window``."""

    def run():
        for _ in range(steps):
            step()

    run.window = steps
    return run


class Problem:
    """Parameters with gradients and the VSGD state, shared by every path."""

    def __init__(self, shapes, device, dtype=torch.float32, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.params = [
            torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype).to(device))
            for s in shapes
        ]
        for p in self.params:
            p.grad = (0.1 * torch.randn(p.shape, generator=generator, dtype=dtype)).to(device)
        drift, noise = hp.prior_rates(hp.DEFAULTS["prior_strength"], hp.DEFAULTS["variance_ratio"])
        self.means = [torch.zeros_like(p) for p in self.params]
        self.drifts = [torch.full_like(p, drift) for p in self.params]
        self.noises = [torch.full_like(p, noise) for p in self.params]
        self.steps = [torch.tensor(0.0) for _ in self.params]
        # Kalman VSGD's state: mu, S, ln(lambda), s (a start with S > 0, s != 0, so that every
        # operation of a step does real work from the first timed step on).
        self.kalman_state = [
            [torch.zeros_like(p) for p in self.params],
            [torch.full_like(p, 0.01) for p in self.params],
            [torch.zeros_like(p) for p in self.params],
            [torch.full_like(p, 0.1) for p in self.params],
        ]
        self.kalman_steps = [torch.tensor(0.0) for _ in self.params]
        self.numel = sum(p.numel() for p in self.params)
        self.bytes = sum(p.numel() * p.element_size() for p in self.params)

    def vsgd(self, path) -> Callable[[], None]:
        hyper = {k: v for k, v in hp.DEFAULTS.items() if k != "lr"}

        def step():
            path(
                [p.data for p in self.params],
                [p.grad for p in self.params],
                self.means,
                self.drifts,
                self.noises,
                self.steps,
                lr=LR,
                maximize=False,
                **hyper,
            )

        return step

    def kalman(self, path) -> Callable[[], None]:
        hyper = {
            k: v for k, v in hp.KALMAN_DEFAULTS.items() if k not in ("lr", "initial_drift_to_noise")
        }

        def step():
            path(
                [p.data for p in self.params],
                [p.grad for p in self.params],
                *self.kalman_state,
                self.kalman_steps,
                lr=LR,
                maximize=False,
                **hyper,
            )

        return step


def make_paths(problem: Problem, device: torch.device) -> dict[str, Callable[[], None]]:
    paths: dict[str, Callable[[], None]] = {}
    adam_fused = torch.optim.Adam(problem.params, lr=LR, fused=True)
    adam_foreach = torch.optim.Adam(problem.params, lr=LR, foreach=True)
    paths["adam_fused"] = adam_fused.step
    paths["adam_foreach"] = adam_foreach.step
    try:
        from vsgd_bayes.torch._single_tensor import single_tensor_vsgd
    except Exception as error:  # the single-tensor path lives in another module
        print(f"# single-tensor VSGD unavailable: {error}")
    else:
        paths["vsgd_single_tensor"] = problem.vsgd(single_tensor_vsgd)
    paths["vsgd_foreach"] = problem.vsgd(foreach_vsgd)
    if fused_is_available(device):
        paths["vsgd_fused"] = problem.vsgd(fused_vsgd)
    # What a user gets from `VSGD(params)`: the optimizer with foreach=None, fused=None (its
    # own state; one step outside the timed rounds creates it). The path it picks is printed.
    from vsgd_bayes.torch import VSGD
    from vsgd_bayes.torch._functional import default_fused

    default_path = "fused" if default_fused(problem.params) else "foreach"
    print(f"# VSGD(params) default path on {device}: {default_path}")
    default_optimizer = VSGD(problem.params, lr=LR)
    default_optimizer.step()
    paths["vsgd_default"] = default_optimizer.step
    # The same with Schedule-Free averaging (its own state; one untimed step creates it).
    schedule_free = VSGD(problem.params, lr=LR, schedule_free_momentum=0.9)
    schedule_free.step()
    paths["vsgd_schedule_free"] = schedule_free.step
    from vsgd_bayes.torch._kalman_foreach import foreach_kalman_vsgd
    from vsgd_bayes.torch._kalman_single_tensor import single_tensor_kalman_vsgd

    paths["kalman_single_tensor"] = problem.kalman(single_tensor_kalman_vsgd)
    paths["kalman_foreach"] = problem.kalman(foreach_kalman_vsgd)
    # Factored VSGD (its own state, one untimed step creates it) and torch's Adafactor, the
    # optimizer a user picks when memory binds.
    from vsgd_bayes.torch import FactoredVSGD

    for name, foreach in (("factored_single_tensor", False), ("factored_foreach", True)):
        factored = FactoredVSGD(problem.params, lr=LR, foreach=foreach)
        factored.step()
        paths[name] = factored.step
    # Curvature Kalman VSGD (its own state, one untimed step creates it): the 2 x 2 filter, its
    # tangents and the previous point, 21 values per coordinate.
    from vsgd_bayes.torch import CurvatureKalmanVSGD

    for name, foreach in (("curvature_single_tensor", False), ("curvature_foreach", True)):
        curvature = CurvatureKalmanVSGD(problem.params, lr=LR, foreach=foreach, fused=False)
        curvature.step()
        paths[name] = curvature.step
    # its fused kernel (CPU only): one pass per element over the 21 state values
    from vsgd_bayes.torch._curvature_fused import curvature_fused_is_available

    if curvature_fused_is_available(device):
        curvature = CurvatureKalmanVSGD(problem.params, lr=LR, fused=True)
        curvature.step()
        paths["curvature_fused"] = curvature.step
    adafactor = torch.optim.Adafactor(problem.params, lr=LR, foreach=True)
    adafactor.step()
    paths["adafactor_foreach"] = adafactor.step
    # Kronecker VSGD (its own state; the untimed steps run it to just before a refresh, so
    # every timed window of 10 consecutive steps holds exactly one refresh)
    from vsgd_bayes.torch import KroneckerVSGD

    kronecker = KroneckerVSGD(problem.params, lr=LR)
    for _ in range(REFRESH_WINDOW - 1):
        kronecker.step()
    paths["kronecker"] = windowed(kronecker.step, REFRESH_WINDOW)
    longest = max((max(p.shape, default=1) for p in problem.params), default=1)
    try:
        from pytorch_optimizer import SOAP
    except Exception as error:
        print(f"# pytorch_optimizer.SOAP unavailable: {type(error).__name__}: {error}")
    else:
        if longest > SOAP_MAX_SIDE:
            print(f"# soap not timed: a side of {longest} > {SOAP_MAX_SIDE} (see SOAP_MAX_SIDE)")
        else:
            soap = SOAP(problem.params, lr=LR, weight_decay=0.0)
            soap.step()  # its first step builds the bases and takes no step
            paths["soap"] = windowed(soap.step, REFRESH_WINDOW)
    try:
        import pytorch_optimizer

        third_party = pytorch_optimizer.VSGD(problem.params, lr=LR)
        third_party.step()  # creates its state outside the timed rounds
    except Exception as error:
        print(f"# pytorch_optimizer.VSGD unavailable: {type(error).__name__}: {error}")
    else:
        paths["pytorch_optimizer_vsgd"] = third_party.step
    return paths


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def transient_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated during one step beyond those allocated before it."""
    if device.type == "cuda":
        _synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as profiler:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        profiler.export_chrome_trace(path)
        with open(path) as file:
            events = json.load(file)["traceEvents"]
    totals = [
        e["args"]["Total Allocated"]
        for e in events
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0
    ]
    if not totals:
        return 0
    first = totals[0] - events_bytes_first(events)
    return max(0, max(totals) - first)


def events_bytes_first(events) -> int:
    # "Total Allocated" is reported after the allocation it belongs to: the total before the
    # first event is its value minus that event's own bytes.
    for e in events:
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0:
            return e["args"]["Bytes"]
    return 0


def benchmark(shapes, device, rounds, only=None) -> dict[str, dict[str, float]]:
    problem = Problem(shapes, device)
    paths = make_paths(problem, device)
    if only:
        unknown = set(only) - set(paths)
        if unknown:
            raise SystemExit(f"unknown --paths {sorted(unknown)}; available: {sorted(paths)}")
        paths = {k: v for k, v in paths.items() if k == "adam_fused" or k in only}
    for step in paths.values():  # warm-up: state creation, kernel build/compile, caches
        step()
        if not hasattr(step, "window"):  # a window is already 10 steps
            step()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, step in paths.items():
            _synchronize(device)
            start = time.perf_counter()
            step()
            _synchronize(device)
            times[name].append((time.perf_counter() - start) / getattr(step, "window", 1))
    reference = min(times["adam_fused"])
    results = {}
    for name, step in paths.items():
        memory = transient_memory(step, device)
        results[name] = {
            "min_ms": 1e3 * min(times[name]),
            "median_ms": 1e3 * statistics.median(times[name]),
            "ratio_to_fused_adam": min(times[name]) / reference,
            "transient_memory_x_params": memory / problem.bytes,
            "steps_per_timed_call": getattr(step, "window", 1),
        }
    results["_problem"] = {"tensors": len(shapes), "values": problem.numel}
    return results


def print_table(name: str, results) -> None:
    info = results["_problem"]
    print(f"\n{name}: {info['values']:,} values in {info['tensors']} tensors")
    print(
        f"{'path':<24}{'min ms':>10}{'median ms':>11}{'x fused Adam':>14}{'transient x params':>20}"
    )
    for path, r in results.items():
        if path.startswith("_"):
            continue
        print(
            f"{path:<24}{r['min_ms']:>10.2f}{r['median_ms']:>11.2f}"
            f"{r['ratio_to_fused_adam']:>14.2f}{r['transient_memory_x_params']:>20.3f}"
        )


def plot(all_results, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(all_results), figsize=(6 * len(all_results), 4))
    axes = [axes] if len(all_results) == 1 else axes
    for axis, (name, results) in zip(axes, all_results.items()):
        names = [k for k in results if not k.startswith("_")]
        ratios = [results[k]["ratio_to_fused_adam"] for k in names]
        bars = axis.barh(
            names, ratios, color=["tab:gray" if "adam" in k else "tab:blue" for k in names]
        )
        for bar, k in zip(bars, names):
            axis.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {results[k]['min_ms']:.1f} ms",
                va="center",
                fontsize=8,
            )
        axis.axvline(1.0, color="black", linewidth=0.8)
        axis.set_xlabel("step time / fused Adam (min over rounds)")
        axis.set_title(name)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--shapes", default="both", choices=["resnet18", "big", "matrices", "both", "all"]
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument(
        "--paths",
        default=None,
        help="comma-separated paths to time (default: all; adam_fused, the reference, always)",
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 rounds (smoke test)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--png", default=None, help="write a bar chart to this PNG file")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds = args.rounds or (3 if args.quick else 20)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    header = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "load_average_before": load,
        "dtype": "float32",
    }
    print("# " + json.dumps(header))
    all_results = {}
    for name, shapes in shape_sets(args.shapes, args.quick).items():
        only = args.paths.split(",") if args.paths else None
        all_results[name] = benchmark(shapes, device, rounds, only)
        print_table(name, all_results[name])
    header["load_average_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"setup": header, "results": all_results}, file, indent=2)
    if args.png:
        plot(
            all_results,
            args.png,
            f"VSGD step time, {header['device']}, {header['threads']} threads",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
