"""``cartpole-pg``: REINFORCE with a learned baseline on Gymnasium's ``CartPole-v1``.

Why REINFORCE and not PPO: the optimizer under test should see the policy gradient itself,
the noisiest gradient in common use, one step per batch of episodes. PPO reuses each batch
for several epochs under a clipped surrogate objective, and the clipping is itself a
step-size control that would hide part of what the optimizers do differently.

The estimator, per batch of ``batch_size`` complete episodes (all states s_t, actions a_t,
returns-to-go G_t = sum_k gamma^k r_{t+k}, gamma = 0.99):

    loss = -mean_t[ log pi(a_t | s_t) A_t ] + mean_t[ (V(s_t) - (1 - gamma) G_t)^2 ],
    A_t = normalise(G_t - V(s_t) / (1 - gamma)),

with a policy MLP 4-64-2 and a separate baseline MLP 4-64-1 (tanh), both trained by the one
optimizer under test. The baseline fits the return scaled by (1 - gamma) (so its target lies in
[0, 1]); the advantages are normalised to zero mean and unit standard deviation per batch.

The budget (``TaskSettings.steps``) counts environment steps; training stops as soon as the
budget is spent (an unfinished batch is dropped). Metrics, from the training episodes (the
stochastic policy, as usually reported): the mean return of the last 100 episodes at the
budget (``val_metric`` and ``test_metric``: there is no held-out data in RL, the protocol's
disjoint final seeds play the role of the test split) and the environment steps at which the
100-episode mean first reaches 475 (``None``: not reached).

Example:
    >>> from vsgd_bayes.apps.bench.cartpole import CartPolePG
    >>> CartPolePG().metric
    'mean_return_100'
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vsgd_bayes.apps.bench.budget import TaskSettings
from vsgd_bayes.apps.bench.optimizers import TrainingOptimizer

__all__ = ["CartPolePG", "PolicyAndBaseline", "returns_to_go"]

#: Discount of the returns-to-go.
GAMMA = 0.99
#: Episodes of the running mean, and the mean return that counts as solved (CartPole-v1 caps
#: an episode at 500 steps).
WINDOW, SOLVED = 100, 475.0


def returns_to_go(rewards: list[float], gamma: float = GAMMA) -> list[float]:
    """G_t = r_t + gamma G_{t+1}, G_T = 0, for one episode."""
    out, total = [0.0] * len(rewards), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        total = rewards[t] + gamma * total
        out[t] = total
    return out


class PolicyAndBaseline(nn.Module):
    """Policy logits (MLP 4-64-2) and state value (MLP 4-64-1), separate tanh networks."""

    def __init__(self, observations: int = 4, actions: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.policy = nn.Sequential(
            nn.Linear(observations, hidden), nn.Tanh(), nn.Linear(hidden, actions)
        )
        self.value = nn.Sequential(nn.Linear(observations, hidden), nn.Tanh(), nn.Linear(hidden, 1))


class CartPolePG:
    """Policy gradient on CartPole-v1; metric: mean return of the last 100 episodes (higher is
    better)."""

    name = "cartpole-pg"
    metric = "mean_return_100"
    higher_is_better = True
    step_unit = "environment step"
    train_loss_label = "baseline loss (EMA 0.9)"
    settings = TaskSettings(steps=200_000, batch_size=8, eval_every=10_000)
    quick_settings = TaskSettings(steps=3_000, batch_size=4, eval_every=1_000)

    def __init__(self, device: str = "cpu") -> None:
        import gymnasium  # noqa: F401  (fail here, with the package's name, if it is missing)

        self.device = torch.device(device)

    def build_model(self) -> nn.Module:
        return PolicyAndBaseline().to(self.device)

    def run_training(
        self, optimizer: str, lr: float, seed: int, settings: TaskSettings, progress: bool = False
    ) -> dict[str, Any]:
        """Train one agent for ``settings.steps`` environment steps; the runner's run record."""
        import gymnasium as gym

        torch.manual_seed(seed)
        model = self.build_model()
        # The schedule runs over the budget's environment steps; IVON's effective sample size
        # is the budget too (the loss is a mean over the visited states). The episodes are
        # collected at the weights the parameters hold between steps (IVON: the posterior
        # mean; Schedule-Free: y, in train mode, so that the policy gradient is on-policy for
        # the point it is taken at); the loss and its gradient at the row's gradient context
        # (IVON: a posterior sample, whose spread 1 / sqrt(ess (h + delta)) is tiny here).
        opt = TrainingOptimizer(
            optimizer,
            model.parameters(),
            lr,
            settings.schedule,
            settings.steps,
            train_size=settings.steps,
        )
        opt.train()
        generator = torch.Generator().manual_seed(seed)
        envs = [gym.make("CartPole-v1") for _ in range(settings.batch_size)]
        # Each environment's own random stream, fixed by the run's seed (reset seeds it once).
        for index, env in enumerate(envs):
            env.reset(seed=seed * 1_000 + index)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(
                total=settings.steps,
                desc=f"{self.name} {optimizer} lr={lr:g} seed={seed}",
                leave=False,
            )
        env_steps, episodes = 0, []  # episodes: (return, env steps when it ended)
        recent: deque[float] = deque(maxlen=WINDOW)
        solved_at = None
        curve: list[dict[str, float]] = []
        next_eval = settings.eval_every
        smoothed = None
        diverged = False
        update_seconds = optimizer_seconds = 0.0
        updates = 0
        while env_steps < settings.steps and not diverged:
            batch, env_steps = self._collect(envs, model, generator, env_steps, settings.steps)
            for length, end in batch["finished"]:
                episodes.append((length, end))
                recent.append(length)
                if (
                    solved_at is None
                    and len(recent) == WINDOW
                    and statistics.fmean(recent) >= SOLVED
                ):
                    solved_at = end
            while next_eval <= env_steps:
                curve.append(
                    {
                        "step": next_eval,
                        "train_loss": smoothed if smoothed is not None else math.nan,
                        "val_metric": statistics.fmean(recent) if recent else 0.0,
                        "val_loss": math.nan,
                    }
                )
                next_eval += settings.eval_every
            if bar is not None:
                bar.n = env_steps
                bar.refresh()
            if batch["states"] is None:  # the budget ran out inside this batch: no update
                break
            start = time.perf_counter()
            with opt.gradients():
                policy_loss, baseline_loss = self._loss(model, batch)
                (policy_loss + baseline_loss).backward()
            before_step = time.perf_counter()
            opt.step(env_steps)
            end = time.perf_counter()
            update_seconds += end - start
            optimizer_seconds += end - before_step
            updates += 1
            value = baseline_loss.item() + policy_loss.item()
            if not math.isfinite(value) or not all(
                torch.isfinite(p).all() for p in model.parameters()
            ):
                diverged = True
                break
            smoothed = (
                baseline_loss.item()
                if smoothed is None
                else 0.9 * smoothed + 0.1 * baseline_loss.item()
            )
        if bar is not None:
            bar.close()
        for env in envs:
            env.close()
        opt.eval()
        final = statistics.fmean(recent) if recent and not diverged else math.nan
        return {
            "optimizer": optimizer,
            "lr": lr,
            "seed": seed,
            "steps": env_steps,
            "updates": updates,
            "episodes": len(episodes),
            "diverged": diverged,
            "ms_per_step": 1e3 * update_seconds / max(updates, 1),
            "ms_per_optimizer_step": 1e3 * optimizer_seconds / max(updates, 1),
            "schedule": opt.schedule,
            "state_bytes_per_parameter": opt.state_bytes_per_parameter(),
            "gradient_contexts": opt.gradient_contexts,
            "curve": curve,
            "val_metric": final,
            "test_metric": final,
            "test_loss": math.nan,
            "steps_to_solved": solved_at,
        }

    @torch.no_grad()
    def _collect(
        self,
        envs,
        model: PolicyAndBaseline,
        generator: torch.Generator,
        env_steps: int,
        budget: int,
    ) -> tuple[dict[str, Any], int]:
        """Run one episode in every environment (in lock step) until all end or the budget is
        spent."""
        observations = [env.reset()[0] for env in envs]
        alive = list(range(len(envs)))
        states: list[list[np.ndarray]] = [[] for _ in envs]
        actions: list[list[int]] = [[] for _ in envs]
        finished: list[tuple[float, int]] = []
        while alive:
            if env_steps >= budget:
                return {"states": None, "finished": finished}, env_steps
            batch = torch.as_tensor(np.stack([observations[i] for i in alive]), dtype=torch.float32)
            probabilities = F.softmax(model.policy(batch.to(self.device)), dim=-1).cpu()
            chosen = torch.multinomial(probabilities, 1, generator=generator).squeeze(1).tolist()
            still = []
            for i, action in zip(alive, chosen):
                if env_steps >= budget:
                    still.append(i)
                    continue
                states[i].append(observations[i])
                actions[i].append(action)
                observations[i], _, terminated, truncated, _ = envs[i].step(action)
                env_steps += 1
                if terminated or truncated:
                    finished.append((float(len(actions[i])), env_steps))
                else:
                    still.append(i)
            alive = still
        return {"states": states, "actions": actions, "finished": finished}, env_steps

    def _loss(
        self, model: PolicyAndBaseline, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The REINFORCE loss with the learned baseline (module docstring) on one batch."""
        # CartPole pays a reward of 1 per step taken, so an episode's rewards are all ones.
        returns = [returns_to_go([1.0] * len(episode)) for episode in batch["actions"]]
        states = torch.as_tensor(
            np.concatenate([np.stack(s) for s in batch["states"]]), dtype=torch.float32
        )
        actions = torch.as_tensor([a for episode in batch["actions"] for a in episode])
        targets = torch.as_tensor([g for episode in returns for g in episode], dtype=torch.float32)
        states, actions, targets = (t.to(self.device) for t in (states, actions, targets))
        values = model.value(states).squeeze(-1)
        advantages = targets - values.detach() / (1.0 - GAMMA)
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        log_probabilities = F.log_softmax(model.policy(states), dim=-1)
        chosen = log_probabilities.gather(1, actions.unsqueeze(1)).squeeze(1)
        policy_loss = -(chosen * advantages).mean()
        baseline_loss = (values - (1.0 - GAMMA) * targets).pow(2).mean()
        return policy_loss, baseline_loss

    @staticmethod
    def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
        """Steps to a 100-episode mean of 475 over the final seeds, and a table note."""
        reached = [run["steps_to_solved"] for run in runs if run.get("steps_to_solved") is not None]
        note = f"475 reached {len(reached)}/{len(runs)}"
        if reached:
            note += f", median {statistics.median(reached):,.0f} steps"
        else:
            note += " (not reached)"
        return {"steps_to_solved": [run.get("steps_to_solved") for run in runs], "note": note}
