"""Which state-space model of the true gradient holds on real networks, scored on held-out
steps (issue 19, part 1; measured here).

Along a recorded trajectory (mini-batch gradients g_hat_t at theta_{t-1}, parameters theta_t,
and over a window the full-batch gradient g*(theta_t) at every step), each model is run as an
observer of g_hat: an exact Kalman filter per coordinate, variances in units of the noise
variance r, from a diffuse start ``BURN_IN`` steps before the window. Its variances are chosen
by maximum likelihood of the innovations of the **first half** of the window (a grid, r
profiled out per coordinate); everything reported is scored on the **second half**, which the
fit never saw:

* coverage of g* by the central 50/80/90/95/99% predictive intervals, and the robust scale
  1.4826 median|z| of z = (g* - m) / sqrt(v) (1 for a calibrated model); where g* is itself
  estimated on a subset (char-lm: 256 windows) its error variance, from the two halves of the
  subset (Var(h1 - h2) / 4), is added to v;
* the predictive log-likelihood of the held-out g_hat, per (coordinate, step), as a difference
  to the random walk's (nats; + = better);
* the noise ratio r / s^2 (s^2 the measured mini-batch variance) and the state per coordinate
  an online version would keep.

Models (state per coordinate; w: Gaussian noises with the fitted variances):

* ``random-walk``: g' = g + w (VSGD's and Kalman VSGD's model);
* ``local-trend``: g' = g + u + w, u' = phi u + w_u (an AR(1) velocity: a gradient that keeps
  moving the way it moved);
* ``step-following``: g' = g + h * dtheta + w, h' = h + w_h (the gradient follows the step
  through a learned diagonal curvature h);

each ``per coordinate`` (its own variances) and ``per tensor`` (one set of variance ratios per
parameter tensor, r still per coordinate). Checks of the check (run first): on a stream
simulated from the random walk the random walk covers at nominal on held-out steps; on a stream
simulated from the step-following model that model wins the held-out likelihood and covers at
nominal; the same predictive with its variance divided by 9 must under-cover.

Usage::

    python benchmarks/gradient_models.py --task digits-mlp --optimizer adam --seed 0 \\
        --json benchmarks/gradient_models/digits-mlp_adam_0.json
    python benchmarks/gradient_models.py --summary benchmarks/gradient_models
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from scipy.stats import norm

BURN_IN = 100
LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
RATIOS = np.logspace(-7, 1, 25)  # q / r of the gradient's own noise w, a third of a decade apart
STEP_RATIOS = (0.0, 1e-4, 1e-2, 1.0)  # q_h mean(dtheta^2) / r
TREND_RATIOS = (0.0, 1e-4, 1e-2)  # q_u / r
TREND_PERSISTENCE = (0.9,)  # phi
#: Coordinates scored per stream (a seeded random subset where a network has more; each
#: coordinate's filter is independent, and "per tensor" pools over the subset's members).
COORDINATES = 10_000
#: Settings per task: (steps, window, lr of each optimizer, overrides of the task).
TASKS = {
    "digits-mlp": dict(steps=1200, window=600, lr={"adam": 3e-3, "vsgd": 1e-2, "curvature": 1e-2}),
    "digits-cnn": dict(steps=600, window=300, lr={"adam": 3e-3, "vsgd": 1e-2, "curvature": 1e-2}),
    "char-lm": dict(steps=500, window=200, lr={"adam": 3e-3, "vsgd": 1e-2, "curvature": 1e-2},
                    overrides={"true_gradient_windows": 256}),
}


# ----------------------------------------------------------------------------- recording
def subsample(stream: dict, count: int, seed: int) -> dict:
    """The stream on ``count`` coordinates drawn at random (all of them if it has fewer)."""
    n = stream["minibatch"].shape[1]
    if n <= count:
        return stream
    keep = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
    out = dict(stream)
    for key in ("minibatch", "theta", "exact"):
        out[key] = stream[key][:, keep]
    for key in ("noise", "groups", "target_error"):
        out[key] = stream[key][keep]
    return out


def record(task_name: str, optimizer_name: str, seed: int, minibatches: int = 16) -> dict:
    """g_hat_t (t = 1..steps), theta_0..steps, g*(theta_t) over the window, s^2, groups."""
    from vsgd_bayes.apps.calibrate.harvest import flat_gradient, true_gradient
    from vsgd_bayes.apps.calibrate.tasks import make_calibration_task

    settings = TASKS[task_name]
    steps, window = settings["steps"], settings["window"]
    # float32 model and data (the tasks' own; gradient_drift.py ran the MLP in float64): the
    # gradients are analysed in float64, and float32's relative 1e-7 is far below the effects
    # measured here.
    task = make_calibration_task(task_name, **settings.get("overrides", {}))
    torch.manual_seed(seed)
    model = task.build_model()
    params = list(model.parameters())
    lr = settings["lr"][optimizer_name]
    if optimizer_name == "adam":
        optimizer = torch.optim.Adam(params, lr=lr)
    elif optimizer_name == "curvature":
        # The new optimizer's own trajectory (issue 19, part 1): the step-following model in
        # closed loop, at VSGD's rate.
        from vsgd_bayes.torch import CurvatureKalmanVSGD

        optimizer = CurvatureKalmanVSGD(params, lr=lr)
    else:
        from vsgd_bayes.torch import VSGD

        optimizer = VSGD(params, lr=lr)
    batch_size = task.settings.batch_size
    batches = torch.Generator().manual_seed(seed)
    fresh = torch.Generator().manual_seed(seed + 10_000)
    start = steps - window

    def flat_params() -> np.ndarray:
        return torch.cat([p.detach().reshape(-1) for p in params]).double().numpy().copy()

    def noise_variance() -> np.ndarray:
        draws = np.stack([flat_gradient(task.loss(model, task.sample_batch(fresh, batch_size),
                                                  None), params) for _ in range(minibatches)])
        return draws.var(axis=0, ddof=1)

    minibatch, theta, exact, noise, target_error = [], [flat_params()], [], [], []

    def record_target() -> None:
        target, _, halves = true_gradient(task, model, params)
        exact.append(target)
        if halves is not None:  # g* over a subset: its error variance is Var(h1 - h2) / 4
            target_error.append(((halves[0] - halves[1]) / 2) ** 2)

    for t in range(1, steps + 1):
        if t - 1 >= start:
            record_target()
        if t - 1 in (start, start + window // 2):
            noise.append(noise_variance())
        gradient = flat_gradient(task.loss(model, task.sample_batch(batches, batch_size), None),
                                 params)
        minibatch.append(gradient)
        offset = 0
        for p in params:
            p.grad = torch.from_numpy(gradient[offset:offset + p.numel()]).reshape(
                p.shape).to(p.dtype)
            offset += p.numel()
        optimizer.step()
        theta.append(flat_params())
    record_target()
    noise.append(noise_variance())
    n = len(minibatch[0])
    return {
        "minibatch": np.stack(minibatch), "theta": np.stack(theta), "exact": np.stack(exact),
        "noise": np.mean(noise, axis=0), "start": start, "window": window,
        # the variance of g*'s own error per coordinate (0 where g* is the full-batch
        # gradient); added to the predictive variance when g* is scored
        "target_error": np.mean(target_error, axis=0) if target_error else np.zeros(n),
        "groups": np.concatenate([np.full(p.numel(), i) for i, p in enumerate(params)]),
    }


# ----------------------------------------------------------------------------- filters
def grid(model: str) -> list[tuple[float, float, float]]:
    """(lam, second ratio, phi) per grid point of ``model``."""
    if model == "random-walk":
        return [(lam, 0.0, 0.0) for lam in RATIOS]
    if model == "step-following":
        return [(lam, lh, 0.0) for lam in RATIOS for lh in STEP_RATIOS]
    if model == "local-trend":
        return [(lam, lu, phi) for lam in RATIOS for lu in TREND_RATIOS
                for phi in TREND_PERSISTENCE]
    raise ValueError(f"Invalid model: {model!r}")


def run_filter(model: str, minibatch, steps_taken, start: int, split: int, points,
               choice=None):
    """The exact filter of ``model`` on g_hat_t, t = start - BURN_IN .. steps, for every grid
    point at once (axis 0) or, with ``choice`` (a grid index per coordinate), at one point per
    coordinate.

    Returns (fit log-likelihood (G, n) of the innovations at t in [start, split), with r
    profiled out; r_hat (G, n); predictive means and variances (in units of r) of g*(theta_t)
    for t in [split, steps] and the held-out innovations (v, s) for t in [split, steps))."""
    n = minibatch.shape[1]
    table = np.asarray(points)
    if choice is not None:
        table = table[choice][None]  # (1, n, 3)
        lam, second, phi = (table[..., i] for i in range(3))
    else:
        lam, second, phi = (table[:, i][:, None] for i in range(3))
    fit_from = start - BURN_IN
    follow = model == "step-following"
    trend = model == "local-trend"
    mean_square_step = np.mean(steps_taken[fit_from - 1:] ** 2, axis=0) + 1e-300
    q2 = second / mean_square_step if follow else second
    shape = (lam.shape[0] if choice is None else 1, n)
    g = np.broadcast_to(minibatch[fit_from - 1], shape).copy()
    x2 = np.zeros(shape)
    p11, p12 = np.ones(shape), np.zeros(shape)
    p22 = np.broadcast_to(1e4 / mean_square_step if follow else (1.0 if trend else 0.0),
                          shape).copy()
    fit_log_s, fit_v2 = np.zeros(shape), np.zeros(shape)
    count = 0
    means, variances, held_v, held_s = [], [], [], []
    steps = minibatch.shape[0]
    for t in range(fit_from, steps + 1):  # predict g*(theta_t), then see g_hat_{t+1}
        if follow:
            f12, f22 = steps_taken[t - 1], 1.0
        elif trend:
            f12, f22 = 1.0, phi
        else:
            f12, f22 = 0.0, 0.0
        m = g + f12 * x2
        x2 = f22 * x2
        u11 = p11 + 2 * f12 * p12 + f12 * f12 * p22 + lam
        u12 = f22 * (p12 + f12 * p22)
        u22 = f22 * f22 * p22 + q2
        if t >= split:
            means.append(m[0] if choice is not None else None)
            variances.append(u11[0] if choice is not None else None)
        if t == steps:
            break
        s = u11 + 1.0
        v = minibatch[t] - m
        if start <= t < split:
            fit_log_s += np.log(s)
            fit_v2 += v * v / s
            count += 1
        elif t >= split and choice is not None:
            held_v.append(v[0])
            held_s.append(s[0])
        k1, k2 = u11 / s, u12 / s
        g, x2 = m + k1 * v, x2 + k2 * v
        p11, p12, p22 = u11 - k1 * u11, u12 - k1 * u12, u22 - k2 * u12
    r_hat = np.maximum(fit_v2 / count, 1e-300)
    log_likelihood = -0.5 * (fit_log_s + count * np.log(r_hat))
    if choice is None:
        return log_likelihood, r_hat
    return (log_likelihood[0], r_hat[0], np.stack(means), np.stack(variances),
            np.stack(held_v), np.stack(held_s))


def fit_and_score(model: str, stream: dict, pooled: bool, cache: dict | None = None) -> dict:
    minibatch, theta, exact = stream["minibatch"], stream["theta"], stream["exact"]
    start, window = int(stream["start"]), int(stream["window"])
    split = start + window // 2
    steps_taken = np.diff(theta, axis=0)
    points = grid(model)
    started = time.time()
    cache = {} if cache is None else cache
    if model not in cache:  # the grid's fit likelihoods serve both variants of a model
        cache[model] = run_filter(model, minibatch, steps_taken, start, split, points)[0]
    likelihood = cache[model]
    if pooled:
        choice = np.empty(minibatch.shape[1], dtype=int)
        for label in np.unique(stream["groups"]):
            members = stream["groups"] == label
            choice[members] = np.argmax(likelihood[:, members].sum(axis=1))
    else:
        choice = np.argmax(likelihood, axis=0)
    _, r_hat, m, v, held_v, held_s = run_filter(model, minibatch, steps_taken, start, split,
                                                points, choice)
    fit_seconds = time.time() - started
    target = exact[split - start:]  # g*(theta_t), t = split..steps
    # A g* estimated on a subset (char-lm) is scored with its own error variance added.
    variance = v * r_hat + stream.get("target_error", 0.0)
    return score(m, variance, target, held_v, held_s * r_hat, r_hat, stream["noise"]) | {
        "fit_seconds": fit_seconds,
        "median_drift_ratio": float(np.median(np.asarray(points)[choice][:, 0])),
        "state_per_coordinate": {"random-walk": 2, "local-trend": 5,
                                 "step-following": 5}[model] + (0 if pooled else 2),
    }


def score(m, v, target, held_v, held_s, r_hat, noise) -> dict:
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (target - m) / np.sqrt(v)
        ratio = np.log10(r_hat / noise)
    z = z[np.isfinite(z)]
    ratio = ratio[np.isfinite(ratio)]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_density = -0.5 * (np.log(2 * np.pi * held_s) + held_v**2 / held_s)
    per_coordinate = log_density.mean(axis=0)
    return {
        # per coordinate, for the comparison in compare(); not written to the JSON
        "_log_likelihood": per_coordinate, "_r_hat": r_hat,
        "coverage": {f"{level}": float(np.mean(np.abs(z) < norm.ppf(0.5 + level / 2)))
                     for level in LEVELS},
        "robust_scale": float(1.4826 * np.median(np.abs(z))),
        "heldout_log_likelihood_per_point": float(np.mean(per_coordinate[np.isfinite(
            per_coordinate)])),
        "noise_ratio_median": float(10 ** np.median(ratio)),
    }


MODELS = [("random-walk", False), ("random-walk", True), ("local-trend", False),
          ("local-trend", True), ("step-following", False), ("step-following", True)]


def label(model: str, pooled: bool) -> str:
    return f"{model} per {'tensor' if pooled else 'coordinate'}"


def compare(stream: dict) -> dict:
    """Every model on one stream. The held-out log-likelihoods are compared coordinate by
    coordinate with the random walk's, over the coordinates every model can score: those
    whose fitted noise variance is not 0 (a gradient constant over the fit half, e.g. a dead
    unit, has r = 0 and an infinite density penalty for any later change; counted as
    ``degenerate_coordinates``)."""
    cache: dict = {}
    results = {label(model, pooled): fit_and_score(model, stream, pooled, cache)
               for model, pooled in MODELS}
    floor = 1e-200
    valid = np.ones(stream["minibatch"].shape[1], dtype=bool)
    for result in results.values():
        valid &= np.isfinite(result["_log_likelihood"]) & (result["_r_hat"] > floor)
    base = results["random-walk per coordinate"]["_log_likelihood"][valid]
    for result in results.values():
        difference = result.pop("_log_likelihood")[valid] - base
        result.pop("_r_hat")
        result["heldout_log_likelihood_vs_random_walk"] = float(np.mean(difference))
        result["share_of_coordinates_better_than_random_walk"] = float(np.mean(difference > 0))
        result["degenerate_coordinates"] = int(np.sum(~valid))
    return results


# ----------------------------------------------------------------------------- checks
def simulated_stream(kind: str, seed: int = 0, n: int = 600, steps: int = 800,
                     window: int = 400) -> dict:
    rng = np.random.default_rng(seed)
    step_taken = rng.normal(scale=0.1, size=(steps, n)) + 0.05 * np.sin(
        np.arange(steps)[:, None] / 7.0 + rng.uniform(0, 6.3, size=n))
    if kind == "random-walk":
        drift = rng.normal(scale=0.1, size=(steps, n))
    else:  # step-following, h fixed per coordinate, small own noise
        drift = rng.uniform(0.5, 2.0, size=n) * step_taken + rng.normal(scale=0.03,
                                                                         size=(steps, n))
    truth = np.concatenate([np.zeros((1, n)), np.cumsum(drift, axis=0)])
    start = steps - window
    return {"minibatch": truth[:-1] + rng.normal(size=(steps, n)),
            "theta": np.concatenate([np.zeros((1, n)), np.cumsum(step_taken, axis=0)]),
            "exact": truth[start:], "noise": np.ones(n), "start": start, "window": window,
            "groups": np.zeros(n, dtype=int)}


def self_check() -> dict:
    # Per tensor: one set of ratios fitted on all 600 coordinates (the truth is on the grid:
    # q/r = 1e-2 and 1e-3, q_h = 0). Per coordinate, 200 fitted innovations each do not
    # identify the ratios (the held-out scores show it; not asserted here).
    walk = compare(simulated_stream("random-walk"))
    following = compare(simulated_stream("step-following"))
    rw = walk["random-walk per tensor"]
    sf = following["step-following per tensor"]
    # the broken twin: the step-following predictive with its variance / 9
    stream = simulated_stream("step-following")
    start, window = stream["start"], stream["window"]
    split = start + window // 2
    steps_taken = np.diff(stream["theta"], axis=0)
    points = grid("step-following")
    likelihood, _ = run_filter("step-following", stream["minibatch"], steps_taken, start,
                               split, points)
    choice = np.full(stream["minibatch"].shape[1], np.argmax(likelihood.sum(axis=1)))
    _, r_hat, m, v, hv, hs = run_filter("step-following", stream["minibatch"], steps_taken,
                                        start, split, points, choice)
    narrow = score(m, v * r_hat / 9, stream["exact"][split - start:], hv, hs * r_hat, r_hat,
                   stream["noise"])
    result = {
        "random_walk_on_its_stream_coverage_0.95": rw["coverage"]["0.95"],
        "step_following_on_its_stream_coverage_0.95": sf["coverage"]["0.95"],
        "step_following_gain_in_heldout_log_likelihood": sf[
            "heldout_log_likelihood_vs_random_walk"],
        "random_walk_on_the_step_following_stream_coverage_0.95": following[
            "random-walk per tensor"]["coverage"]["0.95"],
        "narrow_twin_coverage_0.95": narrow["coverage"]["0.95"],
    }
    # Tolerances: 600 coordinates x 200 held-out steps, strongly correlated along t; the
    # grid's ratios are half a decade apart: +-0.03 around 0.95.
    assert abs(result["random_walk_on_its_stream_coverage_0.95"] - 0.95) < 0.03, result
    assert abs(result["step_following_on_its_stream_coverage_0.95"] - 0.95) < 0.03, result
    # its held-out log-likelihood over the random walk's, per (coordinate, step)
    assert result["step_following_gain_in_heldout_log_likelihood"] > 0.05, result
    assert result["narrow_twin_coverage_0.95"] < 0.75, result  # N(0, 1) within 0.65: 0.48
    return result


def summary(directory: str) -> str:
    """One markdown table over the JSON files of ``directory``: per task, optimizer and model,
    the mean over seeds (and the range) of the held-out scores."""
    import glob

    rows: dict[tuple, list[dict]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path) as handle:
            result = json.load(handle)
        for name, scores in result["models"].items():
            rows.setdefault((result["task"], result["optimizer"], name), []).append(scores)
    lines = ["| task | trajectory | model | seeds | coverage 0.5 / 0.8 / 0.9 / 0.95 / 0.99 "
             "| robust scale [range] | held-out log-lik vs random walk, nats / point [range] "
             "| coordinates better than the random walk | r / s² |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (task, optimizer, name), scores in rows.items():
        mean = lambda f: float(np.mean([f(x) for x in scores]))  # noqa: E731
        span = lambda f: (min(f(x) for x in scores), max(f(x) for x in scores))  # noqa: E731
        coverage = " / ".join(f"{mean(lambda x: x['coverage'][str(level)]):.3f}"
                              for level in LEVELS)
        scale = span(lambda x: x["robust_scale"])
        gain = span(lambda x: x["heldout_log_likelihood_vs_random_walk"])
        lines.append(
            f"| {task} | {optimizer} | {name} | {len(scores)} | {coverage} | "
            f"{mean(lambda x: x['robust_scale']):.3f} [{scale[0]:.3f}, {scale[1]:.3f}] | "
            f"{mean(lambda x: x['heldout_log_likelihood_vs_random_walk']):+.4f} "
            f"[{gain[0]:+.4f}, {gain[1]:+.4f}] | "
            f"{mean(lambda x: x['share_of_coordinates_better_than_random_walk']):.2f} | "
            f"{mean(lambda x: x['noise_ratio_median']):.3g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="digits-mlp", choices=list(TASKS))
    parser.add_argument("--optimizer", default="adam", choices=["adam", "vsgd", "curvature"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--self-check", action="store_true", help="only the checks")
    parser.add_argument("--summary", metavar="DIR", help="print the table of DIR's results")
    args = parser.parse_args(argv)
    if args.summary:
        print(summary(args.summary))
        return 0
    torch.set_num_threads(1)
    started = time.time()
    checks = self_check()
    print("check of the check:", {k: round(v, 4) for k, v in checks.items()}, flush=True)
    if args.self_check:
        return 0
    stream = record(args.task, args.optimizer, args.seed)
    total_coordinates = stream["minibatch"].shape[1]
    stream = subsample(stream, COORDINATES, args.seed)
    recorded = time.time() - started
    results = compare(stream)
    print(f"\n{args.task}, {args.optimizer} (lr {TASKS[args.task]['lr'][args.optimizer]:g}), "
          f"seed {args.seed}: {stream['minibatch'].shape[1]} of {total_coordinates} coordinates, "
          f"fit on steps "
          f"{stream['start']}..{stream['start'] + stream['window'] // 2 - 1}, scored on the "
          f"{stream['window'] // 2} after")
    print("| model | coverage 0.5 / 0.8 / 0.9 / 0.95 / 0.99 | robust scale | held-out log-lik "
          "vs random walk (nats / point) | r / s² | state / coord. | fit s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        coverage = " / ".join(f"{r['coverage'][str(level)]:.3f}" for level in LEVELS)
        print(f"| {name} | {coverage} | {r['robust_scale']:.3f} | "
              f"{r['heldout_log_likelihood_vs_random_walk']:+.4f} | "
              f"{r['noise_ratio_median']:.3g} | {r['state_per_coordinate']} | "
              f"{r['fit_seconds']:.1f} |")
    wall = time.time() - started
    print(f"total wall time {wall:.1f} s (recording {recorded:.1f} s)")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump({"command": "python benchmarks/gradient_models.py " + " ".join(
                argv if argv is not None else os.sys.argv[1:]), "task": args.task,
                "optimizer": args.optimizer, "seed": args.seed,
                "coordinates": [int(stream["minibatch"].shape[1]), int(total_coordinates)],
                "check_of_the_check": checks, "models": results, "wall_seconds": wall},
                handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
