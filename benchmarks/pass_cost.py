"""What one elementwise pass costs on this CPU, and what it implies for the foreach path.

The foreach VSGD path (``vsgd_bayes/torch/_foreach.py``) is a fixed sequence of 17 eager
PyTorch operations per cache-sized block. A simple model of its step time is the sum of

* the in-cache cost of each of those operations (measured here on 2^18-element buffers that
  stay in cache, the path's block size), and
* reading the 5 arrays it needs (theta, g, mu, b_g, b_ghat) from memory (measured here as the
  best per-array rate of a blocked operation over large arrays; the write-backs of the 4
  arrays it changes are left out, which makes the model optimistic).

The script prints each cost, the model in ns per element and as a multiple of
``torch.optim.Adam(fused=True)`` on 4 tensors of 4096x4096, next to the measured foreach
VSGD and foreach Adam steps on the same tensors, interleaved in one process. The in-cache
part alone shows how far eager PyTorch operations are from one fused pass.

Usage: ``python benchmarks/pass_cost.py --threads 1 --json pass_cost.json``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step_time  # noqa: E402

from vsgd_bayes.torch._foreach import foreach_vsgd  # noqa: E402

BLOCK = 1 << 18

#: The foreach path's operations on one block (tensor form), in order, by kind.
FOREACH_STEP = [
    "add_out", "div_out", "sub_out", "mul_out",  # b_g + b_ghat, k, e, a sigma^2
    "mul_", "add_", "sub_",  # k e, mu_t, (1 - k) e
    "affine", "add_alpha", "addcmul_",  # b_g
    "affine", "add_alpha", "addcmul_",  # b_ghat
    "addcmul_", "sqrt_", "add_scalar", "addcdiv_",  # denominator, theta
]


def best_time(function, repeats: int, rounds: int = 7) -> float:
    for _ in range(max(3, repeats // 10)):
        function()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def in_cache_costs() -> dict:
    """ns per element of each kind of operation on 2^18-element buffers (in cache)."""
    generator = torch.Generator().manual_seed(0)
    a, b, c, out = (torch.rand(BLOCK, generator=generator) + 0.5 for _ in range(4))
    shift = torch.tensor(1e-9)
    kinds = {
        "add_out": lambda: torch.add(a, b, out=out),
        "div_out": lambda: torch.div(a, b, out=out),
        "sub_out": lambda: torch.sub(a, b, out=out),
        "mul_out": lambda: torch.mul(a, b, out=out),
        "mul_": lambda: out.mul_(b),
        "add_": lambda: out.add_(b),
        "sub_": lambda: out.sub_(b),
        "affine": lambda: torch.add(shift, out, alpha=0.5, out=out),
        "add_alpha": lambda: out.add_(b, alpha=0.5),
        "addcmul_": lambda: out.addcmul_(b, c, value=0.5),
        # sqrt of a fresh copy each time (values stay in range); the copy is subtracted
        "sqrt_": lambda: out.copy_(a).sqrt_(),
        "copy_": lambda: out.copy_(a),
        "add_scalar": lambda: out.add_(1e-9),
        "addcdiv_": lambda: out.addcdiv_(b, c, value=1e-9),
    }
    costs = {}
    for name, function in kinds.items():
        out.copy_(a)
        costs[name] = 1e9 * best_time(function, 200) / BLOCK
    costs["sqrt_"] -= costs["copy_"]
    return costs


def memory_cost(numel: int) -> float:
    """ns per element and array of reading large arrays through a blocked operation.

    Three arrays are read at once (``torch.addcmul`` into an in-cache buffer), the best
    per-array rate of the blocked operations measured on this machine.
    """
    generator = torch.Generator().manual_seed(1)
    arrays = [torch.rand(numel, generator=generator) for _ in range(3)]
    scratch = torch.empty(BLOCK)

    def read():
        for start in range(0, numel, BLOCK):
            x, y, z = (a[start : start + BLOCK] for a in arrays)
            torch.addcmul(x, y, z, out=scratch)

    return 1e9 * best_time(read, 2, rounds=5) / numel / 3


def step_costs(rounds: int) -> dict:
    """ns per element of fused Adam, foreach Adam and foreach VSGD on 4 x 4096^2 (interleaved)."""
    problem = step_time.Problem([(4096, 4096)] * 4, torch.device("cpu"))
    paths = {
        "adam_fused": torch.optim.Adam(problem.params, lr=step_time.LR, fused=True).step,
        "adam_foreach": torch.optim.Adam(problem.params, lr=step_time.LR, foreach=True).step,
        "vsgd_foreach": problem.vsgd(foreach_vsgd),
    }
    for step in paths.values():
        step()
    times = {name: [] for name in paths}
    for _ in range(rounds):
        for name, step in paths.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: 1e9 * min(values) / problem.numel for name, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    cache = in_cache_costs()
    read = memory_cost(1 << 26)
    steps = step_costs(args.rounds)
    compute_floor = sum(cache[kind] for kind in FOREACH_STEP)
    memory_floor = 5 * read  # 5 arrays read; the 4 write-backs are not counted
    floor = compute_floor + memory_floor
    adam = steps["adam_fused"]

    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("\nin-cache cost of one operation on 2^18 float32 elements (ns per element)")
    for name, cost in cache.items():
        uses = FOREACH_STEP.count(name)
        print(f"  {name:<12} {cost:6.3f}" + (f"   x{uses} in a foreach VSGD step" if uses else ""))
    print(f"\nreading large arrays, blocked: {read:.3f} ns per element and array")
    print("\nmodel of the foreach VSGD step against measured steps (ns per element, 4 x 4096^2)")
    rows = [
        ("model: its 17 operations in cache", compute_floor),
        ("model: reading its 5 arrays", memory_floor),
        ("model: total", floor),
        ("measured: fused Adam", adam),
        ("measured: foreach Adam (torch)", steps["adam_foreach"]),
        ("measured: foreach VSGD", steps["vsgd_foreach"]),
    ]
    for name, value in rows:
        print(f"  {name:<40} {value:6.3f}   {value / adam:5.2f}x fused Adam")
    if args.json:
        report = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "in_cache_ns_per_element": cache,
            "read_ns_per_element_and_array": read,
            "steps_ns_per_element": steps,
            "model_ns_per_element": {
                "operations_in_cache": compute_floor, "reading_arrays": memory_floor, "total": floor
            },
            "model_x_fused_adam": floor / adam,
            "operations_in_cache_x_fused_adam": compute_floor / adam,
        }
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
