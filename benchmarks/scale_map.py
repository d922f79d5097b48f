"""Scale map of VSGD's two starts: final momentum, warm-up and learned precisions vs scale.

The step-1 prior variances b_0 / a_0 = (gamma, K_g gamma) / a_0 are absolute numbers (about
2e-4 and 6e-3 for ``init="reference"``, 1 and 30 for ``init="paper"``), so neither start is
scale-free (derivations/10_scale_map.md). This script measures what that does on gradient
streams simulated from the NumPyro sequential model
(:func:`vsgd_bayes.models.vsgd.sequential_model`):
per coordinate a random-walk true gradient g_t ~ N(g_{t-1}, s_g^2), g_0 = 0, observed as
g_hat_t ~ N(g_t, s^2). The grid is the noise scale s (1e-4 ... 1e2) times the drift-to-noise
ratio r = s_g / s (the signal-to-noise of the model); every cell is a block of independent
coordinates, and all cells and both starts run as one vectorised JAX rule (defaults otherwise).

Per cell and start it reports:

* ``beta1``: the effective momentum b_ghat / (b_g + b_ghat) after the last step (mean over the
  cell's coordinates), next to ``beta1_true`` = s^2 / (s_g^2 + s^2), the momentum VSGD's own
  formula gives with the true variances, and ``beta1_kalman``, the steady-state momentum
  1 - k of the Kalman filter of this random walk (the best linear smoother);
* ``warmup``: the first step t at which the cell's mean |delta theta_t| / eta reaches half of
  its final level (its mean over the last 10% of the steps);
* ``drift_error``, ``noise_error``: median over the cell of log10(learned / true variance),
  learned = b / a (``vsgd_bayes.rules.vsgd.posterior_variances``), true = s_g^2 and s^2.

It also runs the four stationary streams g_hat ~ N(m, s^2) for 10^4 steps (``stationary``).

Run (about a minute on one core)::

    python benchmarks/scale_map.py            # writes benchmarks/scale_map/scale_map.{json,png}
    python benchmarks/scale_map.py --quick    # small smoke run, nothing written unless --out
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from vsgd_bayes import hyperparameters as hp  # noqa: E402
from vsgd_bayes.models.vsgd import simulate_gradient_stream  # noqa: E402
from vsgd_bayes.rules import vsgd as rule  # noqa: E402

SCALES = tuple(10.0**e for e in range(-4, 3))  # noise standard deviation s
RATIOS = (1e-3, 1e-2, 1e-1, 1.0)  # drift-to-noise ratio r = s_g / s
#: The stationary streams N(m, s^2): (m, s).
STATIONARY = ((0.1, 1.0), (1.0, 0.1), (0.01, 0.1), (0.001, 0.01))
DEFAULT_OUT = pathlib.Path(__file__).with_name("scale_map")
POSTERIOR_KEYS = ("variance_ratio", "prior_strength", "kappa1", "kappa2")


def kalman_momentum(drift_variance, noise_variance):
    """Steady-state 1 - k of the Kalman filter of g_t = g_{t-1} + drift, g_hat = g + noise.

    The predicted variance P solves P = q + P r / (P + r) (q drift, r noise variance), i.e.
    P^2 - q P - q r = 0, and the gain is k = P / (P + r).
    """
    q, r = drift_variance, noise_variance
    predicted = 0.5 * (q + math.sqrt(q * q + 4.0 * q * r))
    return r / (predicted + r)


def run_rule(gradients, init):
    """The rule on a (T, n) stream: per step, mean-able |delta theta|/eta and the last state."""
    options = {k: hp.DEFAULTS[k] for k in POSTERIOR_KEYS}
    eps = hp.DEFAULTS["eps"]

    def one_step(state, gradient):
        variance, state = rule.posterior_update(gradient, state, init=init, **options)
        size = jnp.abs(rule.normalized_direction(state.gradient_mean, variance, eps))
        return state, size

    state = rule.init_state(
        jnp.zeros(gradients.shape[1]), options["prior_strength"], options["variance_ratio"]
    )
    final, sizes = jax.jit(lambda s, g: jax.lax.scan(one_step, s, g))(state, gradients)
    return final, np.asarray(sizes)


def momentum(state):
    return np.asarray(state.noise_rate / (state.drift_rate + state.noise_rate))


def warmup_length(mean_sizes):
    """First step t (1-based) with mean |delta theta_t|/eta >= half its final level."""
    final = mean_sizes[-max(1, len(mean_sizes) // 10):].mean()
    return int(np.argmax(mean_sizes >= 0.5 * final)) + 1, float(final)


def scale_map(steps: int, coordinates: int, seed: int) -> list[dict]:
    cells = [(s, r) for s in SCALES for r in RATIOS]
    noise_sd = np.repeat([s for s, _ in cells], coordinates)
    drift_sd = np.repeat([s * r for s, r in cells], coordinates)
    true, observed = simulate_gradient_stream(
        jax.random.PRNGKey(seed), steps, noise_sd.size, 1.0 / drift_sd**2, 1.0 / noise_sd**2
    )
    del true
    rows = []
    per_init = {}
    for init in hp.INITS:
        final, sizes = run_rule(observed, init)
        drift_var, noise_var = rule.posterior_variances(final, hp.DEFAULTS["prior_strength"], init)
        per_init[init] = (momentum(final), sizes, np.asarray(drift_var), np.asarray(noise_var))
    for index, (scale, ratio) in enumerate(cells):
        block = slice(index * coordinates, (index + 1) * coordinates)
        row = {
            "scale": scale,
            "ratio": ratio,
            "beta1_true": 1.0 / (1.0 + ratio**2),
            "beta1_kalman": kalman_momentum((scale * ratio) ** 2, scale**2),
        }
        for init, (beta1, sizes, drift_var, noise_var) in per_init.items():
            warmup, final_size = warmup_length(sizes[:, block].mean(axis=1))
            row[init] = {
                "beta1": float(beta1[block].mean()),
                "warmup": warmup,
                "final_step_size": final_size,
                "step_size_at_100": float(sizes[min(99, steps - 1), block].mean()),
                "drift_error": float(np.median(np.log10(drift_var[block] / (scale * ratio) ** 2))),
                "noise_error": float(np.median(np.log10(noise_var[block] / scale**2))),
            }
        rows.append(row)
    return rows


def stationary_streams(steps: int, coordinates: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for mean, deviation in STATIONARY:
        gradients = jnp.asarray(rng.normal(mean, deviation, size=(steps, coordinates)))
        row = {"mean": mean, "sd": deviation}
        for init in hp.INITS:
            final, sizes = run_rule(gradients, init)
            mean_sizes = sizes.mean(axis=1)
            row[init] = {
                "beta1": float(momentum(final).mean()),
                "step_size_at_100": float(mean_sizes[min(99, steps - 1)]),
                "warmup": warmup_length(mean_sizes)[0],
            }
        rows.append(row)
    return rows


def format_tables(result: dict) -> str:
    lines = [
        f"Sequential-model streams: {result['steps']} steps, {result['coordinates']} coordinates "
        "per cell; s = noise sd, r = drift sd / s; errors are log10(learned / true variance).",
        f"{'s':>7} {'r':>6} {'b1 true':>8} {'b1 KF':>6} | {'reference: b1':>13} {'warm':>5} "
        f"{'drift':>6} {'noise':>6} | {'paper: b1':>9} {'warm':>5} {'drift':>6} {'noise':>6}",
    ]
    for row in result["map"]:
        ref, pap = row["reference"], row["paper"]
        lines.append(
            f"{row['scale']:>7.0e} {row['ratio']:>6.0e} {row['beta1_true']:>8.4f} "
            f"{row['beta1_kalman']:>6.3f} | {ref['beta1']:>13.3f} {ref['warmup']:>5d} "
            f"{ref['drift_error']:>6.2f} {ref['noise_error']:>6.2f} | {pap['beta1']:>9.3f} "
            f"{pap['warmup']:>5d} {pap['drift_error']:>6.2f} {pap['noise_error']:>6.2f}"
        )
    lines.append("")
    lines.append(
        f"Stationary streams N(m, s^2), {result['stationary_steps']} steps, "
        f"{result['stationary_coordinates']} coordinates: beta1 after the last step, "
        "mean |delta theta|/eta at t = 100, warm-up."
    )
    lines.append(f"{'stream':>18} | {'reference b1':>12} {'|dθ|/η@100':>10} {'warm':>5} | "
                 f"{'paper b1':>8} {'|dθ|/η@100':>10} {'warm':>5}")
    for row in result["stationary"]:
        name = f"N({row['mean']:g}, {row['sd']:g}^2)"
        ref, pap = row["reference"], row["paper"]
        lines.append(
            f"{name:>18} | {ref['beta1']:>12.3f} {ref['step_size_at_100']:>10.3f} "
            f"{ref['warmup']:>5d} | {pap['beta1']:>8.3f} {pap['step_size_at_100']:>10.3f} "
            f"{pap['warmup']:>5d}"
        )
    return "\n".join(lines)


def render_markdown(result: dict) -> str:
    """The map and the stationary streams as the Markdown tables of 10_scale_map.md."""
    lines = [
        "| s | r | β₁ true | β₁ Kalman | reference β₁ | warm-up | drift err | noise err "
        "| paper β₁ | warm-up | drift err | noise err |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["map"]:
        cells = [f"{row['scale']:.0e}", f"{row['ratio']:.0e}", f"{row['beta1_true']:.4f}",
                 f"{row['beta1_kalman']:.3f}"]
        for init in ("reference", "paper"):
            entry = row[init]
            cells += [f"{entry['beta1']:.3f}", str(entry["warmup"]),
                      f"{entry['drift_error']:.2f}", f"{entry['noise_error']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| stream | reference β₁ | abs(Δθ)/η at t = 100 | warm-up | paper β₁ "
        "| abs(Δθ)/η at t = 100 | warm-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["stationary"]:
        cells = [f"N({row['mean']:g}, {row['sd']:g}²)"]
        for init in ("reference", "paper"):
            entry = row[init]
            cells += [f"{entry['beta1']:.3f}", f"{entry['step_size_at_100']:.3f}",
                      str(entry["warmup"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["map"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    colours = plt.cm.viridis(np.linspace(0.0, 0.85, len(RATIOS)))
    panels = [
        ("beta1", "final β₁ = b_ĝ/(b_g+b_ĝ)", False),
        ("warmup", "warm-up: steps to half the final |Δθ|/η", True),
        ("drift_error", "log10(learned / true drift variance)", False),
        ("noise_error", "log10(learned / true noise variance)", False),
    ]
    for ax, (key, title, log_y) in zip(axes.flat, panels):
        for colour, ratio in zip(colours, RATIOS):
            cells = [row for row in rows if row["ratio"] == ratio]
            scales = [row["scale"] for row in cells]
            for init, style in (("reference", "-o"), ("paper", "--s")):
                ax.plot(scales, [row[init][key] for row in cells], style, color=colour,
                        label=f"{init}, r={ratio:g}", markersize=4)
            if key == "beta1":
                ax.plot(scales, [row["beta1_kalman"] for row in cells], ":", color=colour)
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("noise standard deviation s (gradient scale)")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"VSGD's two starts on sequential-model streams ({result['steps']} steps; dotted: "
        "Kalman steady-state β₁)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--coordinates", type=int, default=64, help="per cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300 steps, 4 coordinates per cell")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help=f"output folder (default {DEFAULT_OUT}; --quick writes nothing "
                             "unless given)")
    args = parser.parse_args(argv)
    steps, coordinates, stationary_coordinates = args.steps, args.coordinates, 256
    if args.quick:
        steps, coordinates, stationary_coordinates = 300, 4, 16
    for name, value in (("steps", steps), ("coordinates", coordinates)):
        if value < 1:
            raise ValueError(f"Invalid {name}: {value!r} (must be a positive integer)")
    start = time.perf_counter()
    result = {
        "steps": steps,
        "coordinates": coordinates,
        "seed": args.seed,
        "hyperparameters": {k: hp.DEFAULTS[k] for k in POSTERIOR_KEYS},
        "prior_variances": {
            init: [hp.prior_rates(hp.DEFAULTS["prior_strength"], hp.DEFAULTS["variance_ratio"])[i]
                   / hp.prior_shape(hp.DEFAULTS["prior_strength"], init) for i in (0, 1)]
            for init in hp.INITS
        },
        "map": scale_map(steps, coordinates, args.seed),
        "stationary_steps": steps,
        "stationary_coordinates": stationary_coordinates,
        "stationary": stationary_streams(steps, stationary_coordinates, args.seed),
    }
    result["seconds"] = time.perf_counter() - start
    print(format_tables(result))
    print(f"({result['seconds']:.1f} s)")
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale_map.json").write_text(json.dumps(result, indent=1))
        plot(result, out / "scale_map.png")
        print(f"wrote {out / 'scale_map.json'} and {out / 'scale_map.png'}")
    return result


if __name__ == "__main__":
    main()
