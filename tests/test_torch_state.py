"""State of the torch optimizers: ``state_dict`` round trips, in a fresh process, bitwise.

k steps, save with ``torch.save``, load with ``torch.load(weights_only=True)`` in a NEW Python
process (nothing shared but the file), continue: equal to the uninterrupted run, bitwise.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Hyperparameters that shape the state (prior rates, shape, first step) set away from their
#: defaults, so that losing them in the round trip would change the trajectory.
OPTIONS = {
    "VSGD": dict(lr=0.05, prior_strength=1e-5, variance_ratio=7.0, init="paper", weight_decay=0.01),
    "ConstantVSGD": dict(lr=0.05, prior_strength=1e-5, variance_ratio=4.0, init="paper", kappa=0.7),
}

# Shared by this process and the fresh one: a model, a seeded open-loop gradient stream, and
# k steps of training. The bf16 parameter checks that state stays float32 through the load.
SCRIPT_HEADER = textwrap.dedent(
    """
    import sys, torch
    from vsgd_bayes.torch import VSGD, ConstantVSGD

    torch.set_num_threads(1)  # 2 intra-op threads on a busy 2-core machine only fight

    def make(name, options, foreach):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64)),
                  torch.nn.Parameter(torch.randn(5, dtype=torch.float32)),
                  torch.nn.Parameter(torch.randn(2, 2).to(torch.bfloat16)),
                  torch.nn.Parameter(torch.randn(3, dtype=torch.complex128))]
        cls = {"VSGD": VSGD, "ConstantVSGD": ConstantVSGD}[name]
        return params, cls(params, foreach=foreach, **options)

    def train(params, optimizer, first, last):
        for t in range(first, last):
            generator = torch.Generator().manual_seed(1000 + t)
            for i, p in enumerate(params):
                if i == 1 and t < 2:  # a late parameter: no state before step 3
                    p.grad = None
                    continue
                p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            optimizer.step()
    """
)

# The fresh process also proves that the torch front end needs no JAX: any import of jax
# (or jaxlib, optax, numpyro) there raises ImportError.
BLOCK_JAX = (
    "import sys\n"
    "for name in ('jax', 'jaxlib', 'optax', 'numpyro'):\n"
    "    sys.modules[name] = None\n"
)

CONTINUE_SCRIPT = BLOCK_JAX + SCRIPT_HEADER + textwrap.dedent(
    """
    for case in eval(sys.argv[1]):
        name, options, foreach, path, out, k, total = case
        params, optimizer = make(name, {}, foreach)  # defaults: the loaded groups restore them
        checkpoint = torch.load(path, weights_only=True)
        for p, saved in zip(params, checkpoint["params"]):
            p.data.copy_(saved)
        optimizer.load_state_dict(checkpoint["optimizer"])
        for key, value in options.items():
            assert optimizer.param_groups[0][key] == value, key
        train(params, optimizer, k, total)
        torch.save(
            {"params": [p.detach() for p in params], "optimizer": optimizer.state_dict()}, out
        )
    """
)

CASES = [(name, foreach) for name in ("VSGD", "ConstantVSGD") for foreach in (False, True)]


def test_state_dict_round_trip_in_a_fresh_process_is_bitwise(tmp_path):
    # One fresh process (without JAX) continues all four cases (a new interpreter costs ~10 s
    # of imports).
    k, total = 3, 6
    namespace: dict = {}
    exec(SCRIPT_HEADER, namespace)
    uninterrupted, jobs = [], []
    for index, (name, foreach) in enumerate(CASES):
        params, optimizer = namespace["make"](name, OPTIONS[name], foreach)
        namespace["train"](params, optimizer, 0, k)
        checkpoint, out = tmp_path / f"checkpoint{index}.pt", tmp_path / f"continued{index}.pt"
        torch.save(
            {"params": [p.detach() for p in params], "optimizer": optimizer.state_dict()},
            checkpoint,
        )
        namespace["train"](params, optimizer, k, total)  # the uninterrupted run
        uninterrupted.append((params, optimizer))
        jobs.append((name, OPTIONS[name], foreach, str(checkpoint), str(out), k, total))

    subprocess.run(
        [sys.executable, "-c", CONTINUE_SCRIPT, repr(jobs)], cwd=ROOT, check=True, timeout=180
    )
    for (params, optimizer), job in zip(uninterrupted, jobs):
        continued = torch.load(job[4], weights_only=True)
        for p, q in zip(params, continued["params"]):
            assert p.dtype == q.dtype and torch.equal(p.detach(), q), job[:3]
        expected_state = optimizer.state_dict()["state"]
        assert continued["optimizer"]["state"].keys() == expected_state.keys()
        for index, state in expected_state.items():
            for key, value in state.items():
                loaded = continued["optimizer"]["state"][index][key]
                assert loaded.dtype == value.dtype, (job[:3], index, key)  # bf16: float32 state
                assert torch.equal(loaded, value), (job[:3], index, key)
        assert continued["optimizer"]["param_groups"] == optimizer.state_dict()["param_groups"]
