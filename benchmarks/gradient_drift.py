"""How does the true gradient move along a real trajectory, and which state-space model follows
it? (measured here)

Trains the digits MLP of ``vsgd-bayes calibrate`` (64-64-64-10, tanh, batch 64, float64) with
one optimizer and records, at every step t, the mini-batch gradient g_hat_t (taken at
theta_{t-1}) and theta_t; over a window of steps it also records the exact full-batch gradient
g*(theta_t) at every step and, at three points of the window, M fresh mini-batch gradients
(their per-coordinate variance s^2, averaged over the three points).

Part 1, the drift (per coordinate, over the window; median and 10th-90th percentiles):

* ``msq_change_over_noise``: mean_t (Delta g*_t)^2 / s^2, the per-step drift against the
  mini-batch noise (the q/r a random walk would need);
* ``lag1_autocorrelation``: sum_t Delta g*_t Delta g*_{t-1} / sum_t (Delta g*_t)^2 (0 for a
  random walk's independent increments);
* ``explained_by_step``: R^2 of the regression through the origin of Delta g*_t on
  Delta theta_t = theta_t - theta_{t-1} (a diagonal curvature h: Delta g* = h Delta theta);
* ``variogram_L_over_Lx_lag1``: mean_t (g*_{t+L} - g*_t)^2 / (L mean_t (Delta g*_t)^2), 1 at
  every lag L for a random walk, up to L for a steady drift, < 1 for a motion that turns back.

Part 2, the models on the recorded stream (the optimizer's trajectory is fixed; each model is
run as an observer of its g_hat). Each gives, after g_hat_{1:t}, a predictive N(m_t, v_t) of
the next true gradient g*(theta_t); scored over the window and all coordinates: coverage of
the central 95% interval, the robust scale 1.4826 median|z| of z = (g* - m)/sqrt(v), and the
noise ratio r / s^2 (median over coordinates of the window-mean r):

* ``kalman-vsgd``: Kalman VSGD's own online inference (:mod:`vsgd_bayes.rules.kalman`,
  defaults) from step 1; m = mu_t, v = S_t k (the calibrate metric's sigma^2 + q);
* ``random-walk ML``: the same local-level model g_{t+1} = g_t + N(0, q), exact Kalman filter,
  (q, r) per coordinate the maximum-likelihood values on the window's innovations (a grid over
  q/r, r profiled out): the best this model can do with constant (q, r), whatever the inference;
* ``step-following ML``: g_{t+1} = g_t + h Delta theta_t + N(0, q), h_{t+1} = h_t + N(0, q_h),
  state (g, h) per coordinate, exact 2x2 Kalman filter, (q, q_h, r) per coordinate by the same
  maximum likelihood (grid over q/r and q_h/r, r profiled out).

If the random-walk model is miscalibrated even at its maximum-likelihood (q, r), the model is
at fault, not the inference. Checks of the check (``--self-check``, also run first by default):
a simulated random walk must give autocorrelation ~0 and R^2 ~0 and a pure Delta g* = h Delta
theta stream R^2 = 1; on a stream simulated from the local-level model (q/r = 1e-2, the same
window) the random-walk ML observer must cover 95% within 2 points with a noise ratio within
10%, and so must the step-following ML observer on a stream simulated from its own model; its
sigma divided by 3 must score under-covering, multiplied by 3 over-covering.

Usage::

    python benchmarks/gradient_drift.py [--optimizer adam|kalman-vsgd] [--lr 3e-3]
        [--steps 1200] [--window 600] [--json benchmarks/gradient_drift.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

Z95 = 1.959963984540054
BURN_IN = 100  # steps the ML observers run before the window (their start is diffuse)


# ----------------------------------------------------------------------------- recording
def record(optimizer_name: str, lr: float, steps: int, window: int, seed: int,
           minibatches: int) -> dict[str, np.ndarray]:
    from vsgd_bayes.apps.calibrate.harvest import flat_gradient, true_gradient
    from vsgd_bayes.apps.calibrate.tasks import make_calibration_task

    task = make_calibration_task("digits-mlp")
    task.data = {k: tuple(t.double() if t.is_floating_point() else t for t in v)
                 for k, v in task.data.items()}
    torch.manual_seed(seed)
    model = task.build_model().double()
    params = list(model.parameters())
    if optimizer_name == "adam":
        optimizer = torch.optim.Adam(params, lr=lr)
    elif optimizer_name == "kalman-vsgd":
        from vsgd_bayes.torch import KalmanVSGD

        optimizer = KalmanVSGD(params, lr=lr)
    else:
        raise ValueError(f"Invalid optimizer: {optimizer_name!r} (adam or kalman-vsgd)")
    batches = torch.Generator().manual_seed(seed)
    fresh = torch.Generator().manual_seed(seed + 10_000)
    start = steps - window  # g* at theta_start .. theta_steps
    noise_at = {start, start + window // 2, steps}

    def flat_params() -> np.ndarray:
        return torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy()

    minibatch, theta, exact, noise = [], [flat_params()], [], []
    for t in range(1, steps + 1):
        if t - 1 >= start:
            exact.append(true_gradient(task, model, params)[0])
        if t - 1 in noise_at:
            draws = np.stack([flat_gradient(task.loss(model, task.sample_batch(fresh, 64), None),
                                            params) for _ in range(minibatches)])
            noise.append(draws.var(axis=0, ddof=1))
        gradient = flat_gradient(task.loss(model, task.sample_batch(batches, 64), None), params)
        minibatch.append(gradient)
        offset = 0
        for p in params:
            p.grad = torch.from_numpy(gradient[offset:offset + p.numel()].reshape(p.shape)).clone()
            offset += p.numel()
        optimizer.step()
        theta.append(flat_params())
    exact.append(true_gradient(task, model, params)[0])
    draws = np.stack([flat_gradient(task.loss(model, task.sample_batch(fresh, 64), None), params)
                      for _ in range(minibatches)])
    noise.append(draws.var(axis=0, ddof=1))
    return {
        "minibatch": np.stack(minibatch),  # (steps, n): g_hat_t at theta_{t-1}, t = 1..steps
        "theta": np.stack(theta),  # (steps + 1, n): theta_0 .. theta_steps
        "exact": np.stack(exact),  # (window + 1, n): g*(theta_start) .. g*(theta_steps)
        "noise": np.mean(noise, axis=0),  # s^2, mean over the window's noise points
        "noise_start": noise[0], "noise_end": noise[-1],
        "start": np.array(start),
        "groups": np.concatenate([np.full(p.numel(), i) for i, p in enumerate(params)]),
    }


# ----------------------------------------------------------------------------- part 1
def _spread(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    q10, q50, q90 = np.quantile(values, [0.1, 0.5, 0.9])
    return {"median": float(q50), "p10": float(q10), "p90": float(q90), "count": int(values.size)}


def drift_statistics(exact: np.ndarray, theta_window: np.ndarray,
                     noise: np.ndarray) -> dict[str, dict[str, float]]:
    """Part 1 on g*(theta_j), theta_j, j = 0..W (rows), s^2 per coordinate."""
    change = np.diff(exact, axis=0)
    step = np.diff(theta_window, axis=0)
    energy = np.sum(change**2, axis=0)
    valid = (energy > 0) & (noise > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        msq = np.mean(change**2, axis=0) / noise
        lag1 = np.sum(change[1:] * change[:-1], axis=0) / energy
        slope = np.sum(change * step, axis=0) / np.sum(step**2, axis=0)
        explained = 1.0 - np.sum((change - slope * step) ** 2, axis=0) / energy
    result = {
        "msq_change_over_noise": _spread(msq[valid]),
        "lag1_autocorrelation": _spread(lag1[valid]),
        "explained_by_step": _spread(explained[valid]),
    }
    # Variogram: mean (g*_{j+L} - g*_j)^2 / (L mean (Delta g*)^2); 1 at every L for a random
    # walk, up to L for a straight drift, below 1 for a motion that turns back.
    for lag in (10, 100, 300):
        if lag < exact.shape[0]:
            with np.errstate(divide="ignore", invalid="ignore"):
                gamma = np.mean((exact[lag:] - exact[:-lag]) ** 2, axis=0) / (
                    lag * np.mean(change**2, axis=0))
            result[f"variogram_{lag}_over_{lag}x_lag1"] = _spread(gamma[valid])
    return result


# ----------------------------------------------------------------------------- part 2
def _score(predictive_mean, predictive_variance, target, noise_variance, noise):
    z = (target - predictive_mean) / np.sqrt(predictive_variance)
    z = z[np.isfinite(z)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log10(noise_variance / noise)
    ratio = ratio[np.isfinite(ratio)]
    return {
        "coverage_0.95": float(np.mean(np.abs(z) < Z95)),
        "robust_scale": float(1.4826 * np.median(np.abs(z))),
        "noise_ratio_median": float(10 ** np.median(ratio)),
        "noise_ratio_p10_p90": [float(10 ** q) for q in np.quantile(ratio, [0.1, 0.9])],
    }


def kalman_vsgd_observer(minibatch, start):
    """Kalman VSGD's inference on the stream: predictive (m, v) of g*(theta_t) after g_hat_{1:t},
    and its noise variance r_t, for t = start..steps."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from vsgd_bayes.rules import kalman as kalman_rule

    state = kalman_rule.init_state(jnp.zeros(minibatch.shape[1]))
    update = jax.jit(lambda g, s: kalman_rule.posterior_update(g, s)[1])
    means, variances, noises = [], [], []
    ratio = None
    for t in range(1, minibatch.shape[0] + 1):
        state = update(jnp.asarray(minibatch[t - 1]), state)
        ratio = np.exp(np.asarray(state.log_drift_to_noise))
        if t >= start:
            gain, complement = kalman_rule.steady_state_gain(state.log_drift_to_noise)
            means.append(np.asarray(state.gradient_mean))
            variances.append(np.asarray(state.innovation_variance * gain))
            noises.append(np.asarray(state.innovation_variance * complement))
    return np.stack(means), np.stack(variances), np.stack(noises), ratio


def _filter(minibatch, steps_taken, start, fit_from, lam, lh, follow_step, keep=False):
    """Exact Kalman filter of the local-level model (``follow_step`` False) or of the
    step-following model (state (g, h), g' = g + h dtheta + w, h' = h + w_h), all variances in
    units of r, run on g_hat_t for t = fit_from..steps from a diffuse start; lam = q/r and
    lh = q_h mean(dtheta^2)/r, scalars or one per coordinate.

    Returns (log-likelihood of the window's innovations with r profiled out, r_hat) and, with
    ``keep``, the predictive (m, v) of g*(theta_t), t = start..steps."""
    n = minibatch.shape[1]
    mean_square_step = np.mean(steps_taken[fit_from - 1:] ** 2, axis=0) + 1e-300
    qh = lh / mean_square_step
    g = minibatch[fit_from - 1].copy()  # start from the first observation: P_gg = r
    h = np.zeros(n)
    pgg, pgh = np.ones(n), np.zeros(n)
    phh = (1e4 / mean_square_step) if follow_step else np.zeros(n)
    log_s, v2_over_s, means, variances, count = 0.0, 0.0, [], [], 0
    for t in range(fit_from, minibatch.shape[0] + 1):  # predict g*(theta_t), see g_hat_{t+1}
        d = steps_taken[t - 1] if follow_step else 0.0  # theta_t - theta_{t-1}
        m = g + h * d
        ugg = pgg + 2 * d * pgh + d * d * phh + lam
        ugh = pgh + d * phh
        uhh = phh + qh
        if keep and t >= start:
            means.append(m)
            variances.append(ugg)
        if t == minibatch.shape[0]:
            break  # g*(theta_steps) has no following mini-batch
        s = ugg + 1.0
        v = minibatch[t] - m
        if t >= start:  # the window's innovations
            log_s = log_s + np.log(s)
            v2_over_s = v2_over_s + v * v / s
            count += 1
        kg, kh = ugg / s, ugh / s
        g, h = m + kg * v, h + kh * v
        pgg, pgh, phh = ugg - kg * ugg, ugh - kg * ugh, uhh - kh * ugh
    r_hat = np.maximum(v2_over_s / count, 1e-300)
    log_likelihood = -0.5 * (log_s + count * np.log(r_hat))
    if not keep:
        return log_likelihood, r_hat
    return log_likelihood, r_hat, np.stack(means), np.stack(variances) * r_hat


def ml_observer(minibatch, steps_taken, start, fit_from, follow_step, groups=None,
                ratios=np.logspace(-7, 1, 25), step_ratios=(0.0, 1e-6, 1e-4, 1e-2)):
    """The model's filter at the maximum-likelihood (q/r, q_h/r) on a grid, r profiled out:
    per coordinate (``groups`` None) or one pair per group (``groups``: an integer label per
    coordinate, e.g. its parameter tensor; the group's summed log-likelihood is maximised).

    Returns m, v (predictive of g*(theta_t), t = start..steps), r, lam, lh per coordinate."""
    grid = [(lam, lh) for lam in ratios for lh in (step_ratios if follow_step else (0.0,))]
    likelihoods = np.stack([_filter(minibatch, steps_taken, start, fit_from, lam, lh,
                                    follow_step)[0] for lam, lh in grid])
    if groups is None:
        choice = np.argmax(likelihoods, axis=0)
    else:
        choice = np.empty(minibatch.shape[1], dtype=int)
        for label in np.unique(groups):
            members = groups == label
            choice[members] = np.argmax(likelihoods[:, members].sum(axis=1))
    lam = np.array([grid[c][0] for c in choice])
    lh = np.array([grid[c][1] for c in choice])
    _, r, m, v = _filter(minibatch, steps_taken, start, fit_from, lam, lh, follow_step, keep=True)
    return {"m": m, "v": v, "r": r, "lam": lam, "lh": lh,
            "at_lowest_ratio": float(np.mean(lam == ratios[0]))}


def models(stream: dict[str, np.ndarray]) -> dict[str, dict]:
    minibatch, theta, exact, noise = (stream[k] for k in ("minibatch", "theta", "exact", "noise"))
    start = int(stream["start"])
    steps_taken = np.diff(theta, axis=0)
    fit_from = max(1, start - BURN_IN)
    # exact[j] = g*(theta_{start + j}); the predictive after g_hat_{1:t} is for g*(theta_t).
    out = {}
    m, v, r, ratio = kalman_vsgd_observer(minibatch, start)
    out["kalman-vsgd (online)"] = _score(m, v, exact, r.mean(axis=0), noise)
    out["kalman-vsgd (online)"]["drift_to_noise_median"] = float(np.median(ratio))
    out["kalman-vsgd (online)"]["noise_ratio_at_end"] = float(
        10 ** np.nanmedian(np.log10(r[-1] / stream["noise_end"])))
    # The same random-walk filter at Kalman VSGD's final q/r per coordinate, r fitted on the
    # window: separates its q/r from its running estimate of S.
    _, r_fit, m, v = _filter(minibatch, steps_taken, start, fit_from, ratio, 0.0, False,
                             keep=True)
    out["random-walk at kalman-vsgd's q/r, r on the window"] = _score(m, v, exact, r_fit, noise)
    groups = stream["groups"]
    for label, follow, pooled in (
        ("random-walk ML per coordinate", False, None),
        ("random-walk ML per tensor", False, groups),
        ("step-following ML per coordinate", True, None),
        ("step-following ML per tensor", True, groups),
    ):
        best = ml_observer(minibatch, steps_taken, start, fit_from, follow, pooled)
        out[label] = _score(best["m"], best["v"], exact, best["r"], noise)
        out[label]["drift_to_noise_median"] = float(np.median(best["lam"]))
        out[label]["share_at_lowest_grid_ratio"] = best["at_lowest_ratio"]
        if follow:
            out[label]["step_drift_grid_median"] = float(np.median(best["lh"]))
    return out


# ----------------------------------------------------------------------------- checks
def self_check(seed: int = 0) -> dict[str, float]:
    """The instruments on streams with a known answer (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n, w = 2000, 400
    walk = np.cumsum(rng.normal(size=(w + 1, n)), axis=0)
    theta = np.cumsum(rng.normal(size=(w + 1, n)), axis=0)
    curvature = rng.uniform(0.5, 2.0, size=n)
    on_walk = drift_statistics(walk, theta, np.ones(n))
    on_curvature = drift_statistics(curvature * theta, theta, np.ones(n))
    # local-level stream: q/r = 1e-2, r = 1 per coordinate, the real run's 1200 steps and
    # window of 600 (at q/r = 1e-4 a 600-step window under-covers, ~0.89: lambda is barely
    # identified by 600 innovations when the filter's memory is ~100 steps; measured here)
    n, steps, start = 1000, 1200, 600
    truth = np.cumsum(rng.normal(scale=0.1, size=(steps + 1, n)), axis=0)
    minibatch = truth[:-1] + rng.normal(size=(steps, n))
    one_group = np.zeros(n, dtype=int)
    best = ml_observer(minibatch, np.zeros((steps, n)), start, start - BURN_IN, False, one_group)
    scored = _score(best["m"], best["v"], truth[start:], best["r"], np.ones(n))
    # step-following stream: g' = g + h dtheta + N(0, 1e-3), h fixed per coordinate, r = 1
    step_taken = rng.normal(scale=0.1, size=(steps, n)) + 0.05 * np.sin(
        np.arange(steps)[:, None] / 7.0 + rng.uniform(0, 6.3, size=n))
    drift = curvature[:n] * step_taken + rng.normal(scale=1e-3**0.5, size=(steps, n))
    following = np.concatenate([np.zeros((1, n)), np.cumsum(drift, axis=0)])
    observed = following[:-1] + rng.normal(size=(steps, n))
    best = ml_observer(observed, step_taken, start, start - BURN_IN, True, one_group)
    followed = _score(best["m"], best["v"], following[start:], best["r"], np.ones(n))
    # deliberately wrong: sigma / 3 and sigma x 3 must be scored under- and over-covering
    narrow = _score(best["m"], best["v"] / 9, following[start:], best["r"], np.ones(n))
    wide = _score(best["m"], best["v"] * 9, following[start:], best["r"], np.ones(n))
    result = {
        "step_following_coverage_0.95": followed["coverage_0.95"],
        "step_following_noise_ratio": followed["noise_ratio_median"],
        "sigma_over_3_coverage_0.95": narrow["coverage_0.95"],
        "sigma_times_3_coverage_0.95": wide["coverage_0.95"],
        "random_walk_lag1": on_walk["lag1_autocorrelation"]["median"],
        "random_walk_explained": on_walk["explained_by_step"]["median"],
        "curvature_explained": on_curvature["explained_by_step"]["median"],
        "local_level_coverage_0.95": scored["coverage_0.95"],
        "local_level_noise_ratio": scored["noise_ratio_median"],
    }
    assert abs(result["random_walk_lag1"]) < 0.05, result
    assert result["random_walk_explained"] < 0.05, result
    assert result["curvature_explained"] > 1 - 1e-9, result
    assert abs(result["local_level_coverage_0.95"] - 0.95) < 0.02, result
    assert abs(result["local_level_noise_ratio"] - 1.0) < 0.10, result
    assert abs(result["step_following_coverage_0.95"] - 0.95) < 0.02, result
    assert abs(result["step_following_noise_ratio"] - 1.0) < 0.10, result
    assert result["sigma_over_3_coverage_0.95"] < 0.95 - 0.2, result  # N(0,1): 0.50
    assert result["sigma_times_3_coverage_0.95"] > 0.999, result  # N(0,1): 1 - 4e-9
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizer", default="adam", choices=["adam", "kalman-vsgd"])
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--window", type=int, default=600)
    parser.add_argument("--minibatches", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--self-check", action="store_true", help="only the checks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    checks = self_check()
    print("check of the check:", {k: round(v, 4) for k, v in checks.items()}, flush=True)
    if args.self_check:
        return
    stream = record(args.optimizer, args.lr, args.steps, args.window, args.seed,
                    args.minibatches)
    start = int(stream["start"])
    drift = drift_statistics(stream["exact"], stream["theta"][start:], stream["noise"])
    with np.errstate(divide="ignore", invalid="ignore"):
        fall = np.nanmedian(np.log10(stream["noise_start"] / stream["noise_end"]))
    drift["noise_fall_log10_start_over_end"] = float(fall)
    print(f"\n{args.optimizer} lr={args.lr:g}, steps {start}..{args.steps}, "
          f"{stream['minibatch'].shape[1]} coordinates; median log10 s^2(start)/s^2(end) "
          f"{fall:.2f}")
    print("| drift statistic | median | 10th pct | 90th pct |\n|---|---|---|---|")
    for name, spread in drift.items():
        if not isinstance(spread, dict):
            continue
        print(f"| {name} | {spread['median']:.3g} | {spread['p10']:.3g} | {spread['p90']:.3g} |")
    scored = models(stream)
    print("\n| model (observer) | coverage 0.95 | robust scale | noise ratio r/s² median "
          "[10th, 90th pct] | q/r median |\n|---|---|---|---|---|")
    for name, score in scored.items():
        low, high = score["noise_ratio_p10_p90"]
        print(f"| {name} | {score['coverage_0.95']:.3f} | {score['robust_scale']:.3g} | "
              f"{score['noise_ratio_median']:.3g} [{low:.3g}, {high:.3g}] | "
              f"{score.get('drift_to_noise_median', float('nan')):.3g} |")
    wall = time.time() - started
    print(f"\ntotal wall time {wall:.1f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"command": "python benchmarks/gradient_drift.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                if v not in (None, False)), "check_of_the_check": checks, "drift": drift,
                "models": scored, "wall_seconds": wall}, handle, indent=2)


if __name__ == "__main__":
    main()
