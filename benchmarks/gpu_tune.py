"""Tunes the CUDA block sizes of the foreach and fused paths, then runs the step-time benchmark.

One process, on one GPU:

1. foreach: ``_foreach.BLOCK_SIZE["cuda"]`` (elements per block and batch) over a few powers
   of two; time (min over interleaved rounds, as a ratio to fused Adam) and transient memory.
2. fused (Triton): ``BLOCK`` (elements per program) and ``NUM_WARPS`` over a few pairs.
3. A profile of the host-side work of one fused step (ResNet-18 shapes), top functions.
4. When ``--bench-json`` or ``--bench-png`` is given, with the best setting of each (foreach:
   the smallest worst-case ratio over the two shape sets among settings within 1x the
   parameters' size in transient memory; fused: the smallest ratio on the large tensors,
   where the kernel rather than the host is the limit),
   ``benchmarks/step_time.py --device cuda`` in the same process.

The chosen values are printed; the library's defaults are set to them by hand (they are
``BLOCK_SIZE`` in ``vsgd_bayes/torch/_foreach.py`` and ``BLOCK``/``NUM_WARPS`` in
``vsgd_bayes/torch/_triton.py``), so that step 4's table is the defaults' table.

Usage: ``python benchmarks/gpu_tune.py --json tune.json --bench-json gpu.json --bench-png gpu.png``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import step_time  # noqa: E402

from vsgd_bayes.torch import _foreach, _fused  # noqa: E402

FOREACH_BLOCKS = [1 << 20, 1 << 21, 3 << 20, 1 << 22, 1 << 23]
TRITON_CONFIGS = [(1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8), (8192, 8)]


def timed(step, device) -> float:
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def sweep(problem, device, settings, apply, path, rounds):
    """Min step time of each setting, interleaved with fused Adam, as ratios to it."""
    adam = torch.optim.Adam(problem.params, lr=step_time.LR, fused=True)
    steps = {}
    for setting in settings:
        apply(setting)
        steps[setting] = problem.vsgd(path)
        steps[setting]()  # warm-up (Triton compile, tables)
        steps[setting]()
    adam.step()
    adam.step()
    times = {setting: [] for setting in settings}
    adam_times = []
    for _ in range(rounds):
        adam_times.append(timed(adam.step, device))
        for setting in settings:
            apply(setting)
            times[setting].append(timed(steps[setting], device))
    reference = min(adam_times)
    results = {"adam_fused_min_ms": 1e3 * reference}
    for setting in settings:
        apply(setting)
        memory = step_time.transient_memory(steps[setting], device)
        results[str(setting)] = {
            "min_ms": 1e3 * min(times[setting]),
            "ratio_to_fused_adam": min(times[setting]) / reference,
            "transient_memory_x_params": memory / problem.bytes,
        }
    return results


def set_foreach_block(size):
    _foreach.BLOCK_SIZE["cuda"] = size


def set_triton(config):
    module = _fused._triton_module()
    module.BLOCK, module.NUM_WARPS = config  # BLOCK is part of the table cache's key


def host_profile(problem, device) -> str:
    step = problem.vsgd(_fused.fused_vsgd)
    for _ in range(3):
        step()
    torch.cuda.synchronize(device)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(20):
        step()
    profiler.disable()
    torch.cuda.synchronize(device)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    return text.getvalue()


def best(results, settings, memory_limit=None, shapes=None):
    def worst(setting):
        rows = [r[str(setting)] for name, r in results.items() if shapes is None or name in shapes]
        if memory_limit is not None and any(
            row["transient_memory_x_params"] > memory_limit for row in rows
        ):
            return float("inf")
        return max(row["ratio_to_fused_adam"] for row in rows)

    return min(settings, key=worst)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", default=None)
    parser.add_argument("--bench-json", default=None)
    parser.add_argument("--bench-png", default=None)
    parser.add_argument("--bench-rounds", type=int, default=50)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)

    defaults = (
        _foreach.BLOCK_SIZE["cuda"],
        (_fused._triton_module().BLOCK, _fused._triton_module().NUM_WARPS),
    )
    report = {"device": torch.cuda.get_device_name(device), "foreach": {}, "fused": {}}
    for name, shapes in step_time.shape_sets("both", quick=False).items():
        problem = step_time.Problem(shapes, device)
        report["foreach"][name] = sweep(
            problem,
            device,
            FOREACH_BLOCKS,
            set_foreach_block,
            _foreach.foreach_vsgd,
            args.rounds,
        )
        report["fused"][name] = sweep(
            problem,
            device,
            TRITON_CONFIGS,
            set_triton,
            _fused.fused_vsgd,
            args.rounds,
        )
        for path in ("foreach", "fused"):
            rows = report[path][name]
            print(f"\n{path} {name}: fused Adam {rows['adam_fused_min_ms']:.3f} ms")
            for key, row in rows.items():
                if isinstance(row, dict):
                    print(
                        f"  {key:>14} {row['min_ms']:8.3f} ms {row['ratio_to_fused_adam']:6.2f}x"
                        f"  transient {row['transient_memory_x_params']:.3f}x"
                    )
        if name == "resnet18":
            set_triton(defaults[1])
            report["host_profile"] = host_profile(problem, device)
            print(report["host_profile"])
        del problem
        torch.cuda.empty_cache()

    chosen_block = best(report["foreach"], FOREACH_BLOCKS, memory_limit=1.0)
    # The kernel's settings matter where the GPU is the bottleneck: the large tensors (a
    # ResNet-18 step is bound by host-side work, whatever the kernel).
    chosen_triton = best(report["fused"], TRITON_CONFIGS, shapes=("big",))
    report["chosen"] = {"foreach_block_size": chosen_block, "triton_block_warps": chosen_triton}
    report["defaults"] = {"foreach_block_size": defaults[0], "triton_block_warps": defaults[1]}
    print(
        f"\nchosen: foreach BLOCK_SIZE['cuda'] = {chosen_block}, "
        f"Triton (BLOCK, NUM_WARPS) = {chosen_triton}"
    )
    print(f"defaults: foreach {defaults[0]}, Triton {defaults[1]}", flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)

    if not (args.bench_json or args.bench_png):
        return 0
    set_foreach_block(chosen_block)
    set_triton(chosen_triton)
    bench = ["--device", "cuda", "--rounds", str(args.bench_rounds)]
    bench += ["--json", args.bench_json] if args.bench_json else []
    bench += ["--png", args.bench_png] if args.bench_png else []
    return step_time.main(bench)


if __name__ == "__main__":
    sys.exit(main())
