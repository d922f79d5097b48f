"""VSGD and KalmanVSGD under torch.distributed on CPU (gloo, 2 processes): DDP, FSDP2 and
distributed checkpoints.

One start of 2 worker processes (a worker costs ~10 s of imports on a busy
2-core machine) runs three things, each against a single-process run on the same global batch:

1. DDP: each rank takes half of every global batch; DDP averages the gradients, so the
   parameters follow the single-process run on the whole batch (mean loss).
2. FSDP2 (``fully_shard``): parameters and VSGD state are sharded DTensors; the full
   parameters match DDP's.
3. ``torch.distributed.checkpoint``: the sharded model and optimizer state saved after k
   steps, loaded into a fresh sharded model and optimizer, continue exactly like the
   uninterrupted FSDP2 run.
"""

from __future__ import annotations

import multiprocessing
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vsgd_bayes.torch import VSGD, KalmanVSGD

WORLD_SIZE = 2
STEPS = 6
CHECKPOINT_AFTER = 3
#: Each optimizer under test with its options (looked up by name in the worker processes).
OPTIMIZERS = {
    "VSGD": (VSGD, dict(lr=0.05, weight_decay=0.01, prior_strength=1e-6)),
    "KalmanVSGD": (KalmanVSGD, dict(lr=0.05, weight_decay=0.01, initial_drift_to_noise=0.1)),
}

#: float64 throughout. DDP/FSDP2 average two half-batch gradients where one process averages
#: the whole batch: the gradients differ by float64 rounding (~1e-16 relative); VSGD's steps
#: are bounded by lr and the posterior is a smooth function of the gradients, so after
#: 6 steps the parameters agree to far better than 1e-10 (relative to their scale).
RELATIVE_TOLERANCE = 1e-10


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    # 8 and 3 rows: FSDP2 shards dim 0 evenly for one layer and unevenly for the other
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()


def batch(step: int):
    generator = torch.Generator().manual_seed(100 + step)
    inputs = torch.randn(16, 6, generator=generator, dtype=torch.float64)
    targets = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    return inputs, targets


def train(model, optimizer, steps, rank=None):
    for step in steps:
        inputs, targets = batch(step)
        if rank is not None:  # this rank's half of the global batch
            inputs, targets = inputs.chunk(WORLD_SIZE)[rank], targets.chunk(WORLD_SIZE)[rank]
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()


def full_parameters(model):
    return [
        (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for p in model.parameters()
    ]


def worker(rank: int, port: int, checkpoint_dir: str, results: str, name: str) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    optimizer_class, options = OPTIMIZERS[name]
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        # 1. DDP
        ddp_model = DistributedDataParallel(make_model())
        ddp_optimizer = optimizer_class(ddp_model.parameters(), **options)
        train(ddp_model, ddp_optimizer, range(STEPS), rank)
        ddp_params = full_parameters(ddp_model.module)

        # 2. FSDP2, with a checkpoint of the sharded state after CHECKPOINT_AFTER steps
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))

        def sharded_model():
            model = make_model()
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, mesh=mesh)
            return fully_shard(model, mesh=mesh)

        fsdp_model = sharded_model()
        fsdp_optimizer = optimizer_class(fsdp_model.parameters(), **options)
        train(fsdp_model, fsdp_optimizer, range(CHECKPOINT_AFTER), rank)
        model_state, optimizer_state = get_state_dict(fsdp_model, fsdp_optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint_dir)
        train(fsdp_model, fsdp_optimizer, range(CHECKPOINT_AFTER, STEPS), rank)
        fsdp_params = full_parameters(fsdp_model)
        state_is_sharded = all(
            type(s["gradient_mean"]).__name__ == "DTensor" for s in fsdp_optimizer.state.values()
        )

        # 3. load the checkpoint into a fresh sharded model and optimizer, continue
        restored_model = sharded_model()
        # the groups' hyperparameters come from the checkpoint
        restored_optimizer = optimizer_class(restored_model.parameters())
        model_state, optimizer_state = get_state_dict(restored_model, restored_optimizer)
        loaded = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(loaded, checkpoint_id=checkpoint_dir)
        set_state_dict(
            restored_model,
            restored_optimizer,
            model_state_dict=loaded["model"],
            optim_state_dict=loaded["optimizer"],
        )
        restored_lr = restored_optimizer.param_groups[0]["lr"]
        train(restored_model, restored_optimizer, range(CHECKPOINT_AFTER, STEPS), rank)
        restored_params = full_parameters(restored_model)
        restored_steps = sorted({float(s["step"]) for s in restored_optimizer.state.values()})
        if rank == 0:
            torch.save(
                dict(
                    ddp=ddp_params,
                    fsdp=fsdp_params,
                    restored=restored_params,
                    state_is_sharded=state_is_sharded,
                    restored_lr=restored_lr,
                    restored_steps=restored_steps,
                ),
                results,
            )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_relative_close(actual, expected, what):
    scale = expected.abs().max()
    error = (actual - expected).abs().max()
    assert error <= RELATIVE_TOLERANCE * scale, f"{what}: {error:.3e} vs scale {scale:.3e}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_ddp_and_fsdp2_match_one_process_and_dcp_checkpoints_resume_exactly(tmp_path, name):
    results = tmp_path / "results.pt"
    # forkserver: one clean server process (no JAX threads inherited, unlike fork) imports
    # torch once and forks both workers: ~20 s here instead of ~30 s with spawn.
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        [worker.__module__, "torch.distributed.fsdp", "torch.distributed.checkpoint"]
    )
    mp.start_processes(
        worker,
        args=(free_port(), str(tmp_path / "checkpoint"), str(results), name),
        nprocs=WORLD_SIZE,
        join=True,
        start_method="forkserver",
    )
    outcome = torch.load(results, weights_only=True)

    optimizer_class, options = OPTIMIZERS[name]
    model = make_model()
    optimizer = optimizer_class(model.parameters(), **options)
    train(model, optimizer, range(STEPS))
    single = full_parameters(model)
    assert not torch.equal(single[0], make_model()[0].weight)  # training did move the weights

    for i, expected in enumerate(single):
        assert_relative_close(outcome["ddp"][i], expected, f"DDP vs one process, param {i}")
        assert_relative_close(outcome["fsdp"][i], outcome["ddp"][i], f"FSDP2 vs DDP, param {i}")
        # the same sharded arithmetic on the same state: bitwise
        assert torch.equal(outcome["restored"][i], outcome["fsdp"][i]), f"DCP resume, param {i}"
    assert outcome["state_is_sharded"]
    assert outcome["restored_lr"] == options["lr"]
    assert outcome["restored_steps"] == [float(STEPS)]
