"""Are mini-batch noise and drift of real layers correlated across coordinates? (measured here)

Trains the calibration tasks (``vsgd_bayes.apps.calibrate.tasks``: digits-mlp, digits-cnn,
char-lm) with AdamW and VSGD (reference start) at the calibration study's learning rates
(``vsgd_bayes.apps.calibrate.optimizers``), 300 steps, and measures, for a few weight matrices
W (out x in) of nn.Linear layers, the covariance of the gradient of a sub-block of W:

* **sub-block**: ``rows`` output rows and ``cols`` input columns drawn at random without
  replacement (numpy seed 0 per layer, the same block at every checkpoint and in every run);
  coordinate (i, j) of the block is index i * cols + j (row-major vec), d = rows * cols;
* **noise**: at each checkpoint, M fresh mini-batch gradients (the training batch size, their
  own generator; the training trajectory is untouched) and their sample covariance C;
* **drift**: g* (the task's full-batch gradient: the whole training split on the digits, a
  fixed subset of windows on char-lm) after every step of the last ``drift_window`` steps;
  the sample covariance of the increments Delta g*_t = g*_t - g*_{t-1} (centred: a constant
  mean increment is removed);
* **K-FAC factors** at each checkpoint on the g* batches: A = E[a a^T] (the layer's inputs,
  sampled columns), G = E[delta delta^T] (the gradient of each example's loss - each token's on
  char-lm - with respect to the layer's output, sampled rows); uncentred, the Fisher's factors.
  The mean-gradient covariance is (1/B) Cov(per-example gradient), so G (x) A is compared up to
  the best scalar.

Reported for each covariance C (d x d), see :func:`covariance_structure`:

* ``offdiag_share`` = ||C - diag C||_F^2 / ||C||_F^2, beside its sampling floor for the same M
  and d when the truth is diagonal with C's diagonal: ``offdiag_share_floor`` (Gaussian,
  closed form: E S_ij^2 = s_i s_j / (M - 1) off the diagonal and s_i^2 (1 + 2/(M - 1)) on it)
  and ``offdiag_share_shuffled`` (each coordinate's M samples permuted independently: the
  empirical marginals kept, the correlations destroyed); ``offdiag_share_debiased`` uses the
  product of two independent half-sample covariances, E[C^A_ij C^B_ij] = Sigma_ij^2, so it
  has no floor (it is 0 in expectation for a diagonal truth);
* ``effective_rank`` exp(entropy of the normalised eigenvalues) and ``participation_ratio``
  (tr C)^2 / ||C||_F^2, of C and of the shuffled sample (the diagonal truth's reading);
* the correlation matrix R = D^-1/2 C D^-1/2 (what a diagonal preconditioner leaves):
  ``correlation_mean_square`` (mean R_ij^2 over i != j; iid floor ~1/(M - 1)),
  ``correlation_top_eigenvalue`` (1 for R = I; the iid floor is about the Marchenko-Pastur edge
  (1 + sqrt(d/M))^2, also given);
* relative Frobenius errors ||C - C_hat||_F / ||C||_F of the diagonal approximation
  (= sqrt(offdiag_share)), of the nearest Kronecker product U (x) V (Van Loan-Pitsianis:
  the top singular pair of the rearranged C), of diagonal + Kronecker (alternating fit), of
  the scaled K-FAC product G (x) A, and ``error_kronecker_floor``: the Kronecker fit's error on
  a sample of the same M drawn from the fitted Kronecker Gaussian (what an exact Kronecker truth
  reads);
* the eigenvalue-corrected Kronecker family (EKFAC, George et al. 2018; SOAP, Vyas et al.
  2024): C_hat = Q diag(diag(Q^T C Q)) Q^T with Q = Q_U (x) Q_V a Kronecker product of
  orthogonal bases and free eigenvalues (for a fixed Q, keeping the diagonal of Q^T C Q is the
  Frobenius-optimal choice). ``error_kronecker_basis``: Q_U, Q_V the eigenvectors of the
  nearest Kronecker product's U, V (U (x) V is in the family, so this error is <= the
  Kronecker fit's), and ``error_kronecker_basis_floor``, the same fit's error on the
  Kronecker-floor sample; ``error_moment_basis``: Q_U, Q_V the eigenvectors of the partial
  traces E[E E^T] and E[E^T E] of the noise matrix E (rows x cols), the moment estimator of a
  Kronecker-eigenbasis optimizer (for E ~ MN(0, U, V), E[E E^T] = tr(V) U).

Checks of the check (:func:`self_check`, run first): a simulated diagonal noise reads its
floor, and its debiased share ~0; a simulated Kronecker noise is recovered within the sample
covariance's own error; a broken twin (the rearrangement without its transpose) does not
recover it; on that Kronecker noise the Kronecker-eigenbasis fit is no worse than the Kronecker
fit and reads its own floor, and the basis of moments reads about the same.

The script also prints (and writes to the JSON under ``spread``) the per-seed min / median /
max of the main metrics over all noise and all drift covariances, and counts (:data:`COUNTS`).

Usage::

    python benchmarks/gradient_correlation.py [--quick] [--seeds 2]
        [--out benchmarks/gradient_correlation]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import time
from typing import Any

import numpy as np
import torch

#: The layers measured per task (nn.Linear weights: out x in).
LAYERS = {
    "digits-mlp": ("0", "2", "4"),
    "digits-cnn": ("classifier.1", "classifier.3"),
    "char-lm": ("blocks.1.mlp.0", "head"),
}
OPTIMIZERS = ("adamw", "vsgd")


# ----------------------------------------------------------------------------- the instruments
def rearrange(covariance: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Van Loan-Pitsianis rearrangement: C[(i, j), (k, l)] -> R[(i, k), (j, l)], so that
    C = U (x) V (np.kron, row-major vec) becomes R = vec(U) vec(V)^T, of rank one."""
    return (
        covariance.reshape(rows, cols, rows, cols)
        .transpose(0, 2, 1, 3)
        .reshape(rows * rows, cols * cols)
    )


def nearest_kronecker(
    covariance: np.ndarray, rows: int, cols: int, arrange=rearrange
) -> tuple[np.ndarray, np.ndarray]:
    """(U, V), rows x rows and cols x cols, minimising ||C - U (x) V||_F (Van Loan & Pitsianis
    1993): the top singular pair of the rearranged C. ``arrange`` is a hook for the tests'
    broken twin."""
    left, singular, right = np.linalg.svd(arrange(covariance, rows, cols))
    # the pair's sign is free (U (x) V = (-U) (x) (-V)): take tr U >= 0, as for an SPD C
    sign = 1.0 if np.trace(left[:, 0].reshape(rows, rows)) >= 0 else -1.0
    scale = np.sqrt(singular[0])
    return (
        sign * scale * left[:, 0].reshape(rows, rows),
        sign * scale * right[0].reshape(cols, cols),
    )


def relative_error(covariance: np.ndarray, approximation: np.ndarray) -> float:
    return float(np.linalg.norm(covariance - approximation) / np.linalg.norm(covariance))


def offdiag_share(covariance: np.ndarray) -> float:
    """||C - diag C||_F^2 / ||C||_F^2."""
    total = np.sum(covariance**2)
    return float((total - np.sum(np.diag(covariance) ** 2)) / total)


def offdiag_share_floor(variances: np.ndarray, samples: int) -> float:
    """The expected off-diagonal share (ratio of expected energies) of the sample covariance
    (ddof 1) of ``samples`` Gaussian draws with a diagonal truth diag(variances)."""
    s = np.asarray(variances, dtype=float)
    off = (np.sum(s) ** 2 - np.sum(s**2)) / (samples - 1)
    diagonal = np.sum(s**2) * (1 + 2 / (samples - 1))
    return float(off / (off + diagonal))


def effective_rank(covariance: np.ndarray) -> float:
    """exp(-sum p log p), p the eigenvalues over their sum (Roy & Vetterli 2007); d for a
    multiple of the identity, 1 for rank one."""
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance), 0, None)
    p = eigenvalues / eigenvalues.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def participation_ratio(covariance: np.ndarray) -> float:
    """(tr C)^2 / ||C||_F^2."""
    return float(np.trace(covariance) ** 2 / np.sum(covariance**2))


def correlation(covariance: np.ndarray) -> np.ndarray:
    """D^-1/2 C D^-1/2 over the coordinates with a positive variance."""
    keep = np.diag(covariance) > 0
    c = covariance[np.ix_(keep, keep)]
    scale = 1 / np.sqrt(np.diag(c))
    return c * scale[:, None] * scale[None, :]


def diagonal_plus_kronecker(
    covariance: np.ndarray, rows: int, cols: int, iterations: int = 30
) -> np.ndarray:
    """D + U (x) V by alternating least squares: K = nearest Kronecker of C - D, D = diag of
    C - K (each step is an exact minimisation, so the error does not increase)."""
    diagonal = np.zeros(covariance.shape[0])
    for _ in range(iterations):
        u, v = nearest_kronecker(covariance - np.diag(diagonal), rows, cols)
        product = np.kron(u, v)
        diagonal = np.diag(covariance - product)
    return np.diag(diagonal) + product


def partial_traces(covariance: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """The row and column moments of C = E[vec E vec E^T] (E rows x cols, row-major vec):
    sum_j C[(i, j), (k, j)] = E[E E^T]_ik (rows x rows) and sum_i C[(i, j), (i, l)] =
    E[E^T E]_jl (cols x cols). For C = U (x) V they are tr(V) U and tr(U) V."""
    blocks = covariance.reshape(rows, cols, rows, cols)
    return np.einsum("ijkj->ik", blocks), np.einsum("ijil->jl", blocks)


def kronecker_basis(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Q_U (x) Q_V, the eigenvectors of (the symmetric parts of) ``left`` (rows x rows, acting
    on i) and ``right`` (cols x cols, acting on j), in the order of np.kron(U, V): column
    a * cols + b is q_a (x) p_b."""
    vectors = [np.linalg.eigh((m + m.T) / 2)[1] for m in (left, right)]
    return np.kron(*vectors)


def diagonal_in_basis(covariance: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Q diag(diag(Q^T C Q)) Q^T for an orthogonal Q: the nearest matrix (Frobenius) that is
    diagonal in the basis Q."""
    eigenvalues = np.einsum("ai,ab,bi->i", basis, covariance, basis)
    return (basis * eigenvalues) @ basis.T


def moment_basis(
    covariance: np.ndarray, rows: int, cols: int, moments=partial_traces
) -> np.ndarray:
    """The Kronecker eigenbasis of the partial traces of C (:func:`partial_traces`); ``moments``
    is a hook for the tests' broken twin."""
    return kronecker_basis(*moments(covariance, rows, cols))


def _scaled_error(covariance: np.ndarray, model: np.ndarray) -> float:
    scale = np.sum(covariance * model) / np.sum(model**2)
    return relative_error(covariance, scale * model)


def _one_blas_thread():
    """BLAS on one thread: on a shared 2-core machine a threaded OpenBLAS makes these
    64 x 64 decompositions ~100x slower (measured: 2.2 s against 0.03 s per call)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl comes with scikit-learn (the test extra)
        return contextlib.nullcontext()
    return threadpool_limits(1)


def covariance_structure(
    samples: np.ndarray,
    rows: int,
    cols: int,
    kfac: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The structure of the sample covariance of ``samples`` (M x d, d = rows * cols,
    row-major), beside the readings of a diagonal and of a Kronecker truth (module docstring).
    ``kfac``: (G, A), rows x rows and cols x cols."""
    with _one_blas_thread():
        return _covariance_structure(samples, rows, cols, kfac, seed)


def _covariance_structure(samples, rows, cols, kfac, seed):
    rng = np.random.default_rng(seed)
    count = samples.shape[0]
    covariance = np.cov(samples, rowvar=False)
    shuffled = np.stack([rng.permutation(column) for column in samples.T], axis=1)
    shuffled_covariance = np.cov(shuffled, rowvar=False)
    half = count // 2
    first = np.cov(samples[:half], rowvar=False)
    second = np.cov(samples[half : 2 * half], rowvar=False)
    products = first * second
    u, v = nearest_kronecker(covariance, rows, cols)
    kronecker = np.kron(u, v)
    # an exact Kronecker truth at the same M: draw from N(0, U (x) V) (U, V made PSD)
    factors = []
    for factor in (u, v):
        values, vectors = np.linalg.eigh((factor + factor.T) / 2)
        factors.append(vectors * np.sqrt(np.clip(values, 0, None)))
    draws = factors[0] @ rng.normal(size=(count, rows, cols)) @ factors[1].T
    draws = draws.reshape(count, -1)
    redrawn = np.cov(draws, rowvar=False)
    redrawn_u, redrawn_v = nearest_kronecker(redrawn, rows, cols)
    r = correlation(covariance)
    r_shuffled = correlation(shuffled_covariance)
    dimension = r.shape[0]
    off = ~np.eye(dimension, dtype=bool)
    result = {
        "dimension": rows * cols,
        "samples": count,
        "offdiag_share": offdiag_share(covariance),
        "offdiag_share_floor": offdiag_share_floor(np.diag(covariance), count),
        "offdiag_share_shuffled": offdiag_share(shuffled_covariance),
        "offdiag_share_debiased": float((products.sum() - np.trace(products)) / products.sum()),
        "effective_rank": effective_rank(covariance),
        "effective_rank_shuffled": effective_rank(shuffled_covariance),
        "participation_ratio": participation_ratio(covariance),
        "participation_ratio_shuffled": participation_ratio(shuffled_covariance),
        "correlation_mean_square": float(np.mean(r[off] ** 2)),
        "correlation_mean_square_shuffled": float(
            np.mean(r_shuffled[~np.eye(r_shuffled.shape[0], dtype=bool)] ** 2)
        ),
        "correlation_top_eigenvalue": float(np.linalg.eigvalsh(r)[-1]),
        "correlation_top_eigenvalue_shuffled": float(np.linalg.eigvalsh(r_shuffled)[-1]),
        "marchenko_pastur_edge": float((1 + np.sqrt(dimension / count)) ** 2),
        "error_diagonal": relative_error(covariance, np.diag(np.diag(covariance))),
        "error_kronecker": relative_error(covariance, kronecker),
        "error_kronecker_floor": relative_error(redrawn, np.kron(redrawn_u, redrawn_v)),
        # free eigenvalues in the Kronecker eigenbasis: of U (x) V, and of the partial traces
        "error_kronecker_basis": relative_error(
            covariance, diagonal_in_basis(covariance, kronecker_basis(u, v))
        ),
        "error_kronecker_basis_floor": relative_error(
            redrawn, diagonal_in_basis(redrawn, kronecker_basis(redrawn_u, redrawn_v))
        ),
        "error_moment_basis": relative_error(
            covariance, diagonal_in_basis(covariance, moment_basis(covariance, rows, cols))
        ),
        "error_diagonal_plus_kronecker": relative_error(
            covariance, diagonal_plus_kronecker(covariance, rows, cols)
        ),
        # the diagonal of the Kronecker fit alone (a rank-one, Adafactor-like diagonal)
        "error_kronecker_diagonal": relative_error(
            covariance, np.kron(np.diag(np.diag(u)), np.diag(np.diag(v)))
        ),
    }
    if kfac is not None:
        result["error_kfac"] = _scaled_error(covariance, np.kron(*kfac))
    return result


# ----------------------------------------------------------------------------- checks
def self_check(rows: int = 8, cols: int = 8, samples: int = 256, seed: int = 0) -> dict[str, float]:
    """The instruments on simulated noise with a known structure, at the real runs' d and M
    (the diagonal readings are means over 20 samples)."""
    rng = np.random.default_rng(seed)
    d = rows * cols
    variances = 10 ** rng.uniform(-2, 1, size=d)
    # one draw of the share is itself noisy at small d (a few large variances dominate it):
    # the mean over ``repeats`` independent samples is compared with the expectation
    repeats = 20
    readings = [
        covariance_structure(
            rng.normal(size=(samples, d)) * np.sqrt(variances), rows, cols, seed=seed + k
        )
        for k in range(repeats)
    ]
    on_diagonal = {key: float(np.mean([r[key] for r in readings])) for key in readings[0]}

    def spd(n):
        factor = rng.normal(size=(n, n)) / np.sqrt(n)
        return factor @ factor.T + 0.3 * np.eye(n)

    u, v = spd(rows), spd(cols)
    truth = np.kron(u, v)
    lu, lv = np.linalg.cholesky(u), np.linalg.cholesky(v)
    kron_samples = (lu @ rng.normal(size=(samples, rows, cols)) @ lv.T).reshape(samples, d)
    sample_covariance = np.cov(kron_samples, rowvar=False)
    on_kronecker = covariance_structure(kron_samples, rows, cols, seed=seed)
    fitted = np.kron(*nearest_kronecker(sample_covariance, rows, cols))
    broken = np.kron(
        *nearest_kronecker(
            sample_covariance, rows, cols, arrange=lambda c, r, k: c.reshape(r * r, k * k)
        )
    )  # the transpose left out
    result = {
        "diagonal_offdiag_share": on_diagonal["offdiag_share"],
        "diagonal_offdiag_share_floor": on_diagonal["offdiag_share_floor"],
        "diagonal_offdiag_share_shuffled": on_diagonal["offdiag_share_shuffled"],
        "diagonal_offdiag_share_debiased": on_diagonal["offdiag_share_debiased"],
        "kronecker_truth_offdiag_share": offdiag_share(truth),
        "kronecker_sample_error": relative_error(truth, sample_covariance),
        "kronecker_fit_error_against_truth": relative_error(truth, fitted),
        "kronecker_fit_error_against_sample": on_kronecker["error_kronecker"],
        "kronecker_fit_error_floor": on_kronecker["error_kronecker_floor"],
        "broken_twin_error_against_truth": relative_error(truth, broken),
        "kronecker_basis_fit_error_against_truth": relative_error(
            truth,
            diagonal_in_basis(
                sample_covariance,
                kronecker_basis(*nearest_kronecker(sample_covariance, rows, cols)),
            ),
        ),
        "kronecker_basis_fit_error_against_sample": on_kronecker["error_kronecker_basis"],
        "kronecker_basis_fit_error_floor": on_kronecker["error_kronecker_basis_floor"],
        "moment_basis_fit_error_against_sample": on_kronecker["error_moment_basis"],
    }
    floor = result["diagonal_offdiag_share_floor"]
    assert abs(result["diagonal_offdiag_share"] - floor) < 0.2 * floor, result
    assert abs(result["diagonal_offdiag_share_shuffled"] - floor) < 0.2 * floor, result
    assert abs(result["diagonal_offdiag_share_debiased"]) < 0.2 * floor, result
    assert result["kronecker_fit_error_against_truth"] < result["kronecker_sample_error"], result
    # the fit's error on the sample is the sample's own noise, as for a redrawn Kronecker truth
    assert (
        abs(result["kronecker_fit_error_against_sample"] - result["kronecker_fit_error_floor"])
        < 0.25 * result["kronecker_fit_error_floor"]
    ), result
    assert (
        result["broken_twin_error_against_truth"] > 2 * result["kronecker_fit_error_against_truth"]
    ), result
    # the Kronecker-eigenbasis fit contains U (x) V: no worse on the sample, and on a Kronecker
    # truth it too reads its floor (its basis is estimated, its eigenvalues free); the partial
    # traces' basis is as good as the fit's there (both estimate Q_U (x) Q_V)
    assert (
        result["kronecker_basis_fit_error_against_sample"]
        <= result["kronecker_fit_error_against_sample"] + 1e-12
    ), result
    assert (
        abs(
            result["kronecker_basis_fit_error_against_sample"]
            - result["kronecker_basis_fit_error_floor"]
        )
        < 0.25 * result["kronecker_basis_fit_error_floor"]
    ), result
    assert (
        abs(
            result["moment_basis_fit_error_against_sample"]
            - result["kronecker_basis_fit_error_against_sample"]
        )
        < 0.25 * result["kronecker_basis_fit_error_floor"]
    ), result
    return result


# ----------------------------------------------------------------------------- recording
class _KFACRecorder:
    """Forward hooks on the measured layers: inputs a (sampled columns) and output gradients
    delta (sampled rows), per example (per token on char-lm), accumulated as A and G."""

    def __init__(self, modules: dict[str, torch.nn.Module], blocks: dict[str, tuple]):
        self.blocks = blocks
        self.sums: dict[str, list] = {}
        self.handles = [
            module.register_forward_hook(self._hook(name)) for name, module in modules.items()
        ]

    def _hook(self, name):
        def hook(module, inputs, output):
            rows, cols = self.blocks[name]
            a = inputs[0].detach().reshape(-1, inputs[0].shape[-1])[:, cols].double()
            count = a.shape[0]

            def backward(grad):
                # grad of the batch-mean loss; x count: each example's (token's) own loss
                delta = grad.detach().reshape(-1, grad.shape[-1])[:, rows].double() * count
                entry = self.sums.setdefault(name, [0.0, 0.0, 0])
                entry[0] = entry[0] + (a.T @ a).numpy()
                entry[1] = entry[1] + (delta.T @ delta).numpy()
                entry[2] += count

            output.register_hook(backward)

        return hook

    def factors(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {name: (g / n, a / n) for name, (a, g, n) in self.sums.items()}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _subsample(weight: torch.Tensor, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    out, inp = weight.shape
    return (
        np.sort(rng.choice(out, size=min(rows, out), replace=False)),
        np.sort(rng.choice(inp, size=min(cols, inp), replace=False)),
    )


def measure_run(
    task_name: str, optimizer_name: str, seed: int, settings: dict[str, Any]
) -> dict[str, Any]:
    from vsgd_bayes.apps.calibrate.harvest import flat_gradient, true_gradient
    from vsgd_bayes.apps.calibrate.optimizers import optimizer_row
    from vsgd_bayes.apps.calibrate.tasks import make_calibration_task

    overrides = settings["char_lm_true_gradient"] if task_name == "char-lm" else {}
    task = make_calibration_task(task_name, **overrides)
    row = optimizer_row(optimizer_name)
    lr = row.learning_rates[task_name]
    batch_size = task.settings.batch_size
    torch.manual_seed(seed)
    model = task.build_model()
    modules = {name: dict(model.named_modules())[name] for name in LAYERS[task_name]}
    weights = [module.weight for module in modules.values()]
    blocks = {
        name: _subsample(module.weight, settings["rows"], settings["cols"])
        for name, module in modules.items()
    }
    sizes = [w.numel() for w in weights]
    offsets = np.cumsum([0, *sizes])

    def blocks_of(flat: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for k, (name, (r, c)) in enumerate(blocks.items()):
            matrix = flat[offsets[k] : offsets[k + 1]].reshape(weights[k].shape)
            out[name] = matrix[np.ix_(r, c)].reshape(-1)
        return out

    optimizer = row.build(list(model.parameters()), lr)
    generator = torch.Generator().manual_seed(seed)
    steps = settings["steps"]
    drift_from = steps - settings["drift_window"]
    checkpoints, exact = [], []
    for step in range(1, steps + 1):
        loss = task.loss(model, task.sample_batch(generator, batch_size), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= drift_from:
            exact.append(blocks_of(true_gradient(task, model, weights)[0]))
        if step in settings["checkpoints"]:
            recorder = _KFACRecorder(modules, blocks)
            true, full_loss, _ = true_gradient(task, model, weights)
            recorder.remove()
            kfac = recorder.factors()
            fresh = torch.Generator().manual_seed(1_000_003 * (seed + 1) + step)
            draws = [
                blocks_of(
                    flat_gradient(
                        task.loss(model, task.sample_batch(fresh, batch_size), fresh), weights
                    )
                )
                for _ in range(settings["minibatches"])
            ]
            checkpoints.append(
                {
                    "step": step,
                    "loss": full_loss,
                    "layers": {
                        name: covariance_structure(
                            np.stack([draw[name] for draw in draws]),
                            len(blocks[name][0]),
                            len(blocks[name][1]),
                            kfac=kfac[name],
                            seed=seed,
                        )
                        for name in blocks
                    },
                }
            )
    drift = {}
    for name in blocks:
        increments = np.diff(np.stack([e[name] for e in exact]), axis=0)
        drift[name] = covariance_structure(
            increments, len(blocks[name][0]), len(blocks[name][1]), kfac=kfac[name], seed=seed
        )
    return {
        "task": task_name,
        "optimizer": optimizer_name,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "blocks": {
            name: {
                "shape": list(modules[name].weight.shape),
                "rows": r.tolist(),
                "cols": c.tolist(),
            }
            for name, (r, c) in blocks.items()
        },
        "checkpoints": checkpoints,
        "drift": {"steps": [drift_from + 1, steps], "increments": len(exact) - 1, "layers": drift},
    }


# ----------------------------------------------------------------------------- report
COLUMNS = (
    ("offdiag_share", "off-diag share"),
    ("offdiag_share_floor", "floor"),
    ("offdiag_share_shuffled", "shuffled"),
    ("offdiag_share_debiased", "debiased"),
    ("effective_rank", "eff. rank"),
    ("effective_rank_shuffled", "eff. rank shuffled"),
    ("correlation_top_eigenvalue", "λmax(R)"),
    ("marchenko_pastur_edge", "MP edge"),
    ("error_diagonal", "err diag"),
    ("error_kronecker", "err Kron"),
    ("error_kronecker_floor", "err Kron floor"),
    ("error_kronecker_basis", "err Kron basis"),
    ("error_kronecker_basis_floor", "err Kron basis floor"),
    ("error_moment_basis", "err basis of moments"),
    ("error_diagonal_plus_kronecker", "err diag+Kron"),
    ("error_kfac", "err K-FAC"),
)


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (task, optimizer, layer, checkpoint or 'drift')."""
    groups: dict[tuple, list[dict[str, float]]] = {}
    for run in runs:
        for checkpoint in run["checkpoints"]:
            for layer, values in checkpoint["layers"].items():
                key = (run["task"], run["optimizer"], layer, f"noise@{checkpoint['step']}")
                groups.setdefault(key, []).append(values)
        for layer, values in run["drift"]["layers"].items():
            key = (
                run["task"],
                run["optimizer"],
                layer,
                "drift@{}-{}".format(*run["drift"]["steps"]),
            )
            groups.setdefault(key, []).append(values)
    rows = []
    for (task, optimizer, layer, what), entries in groups.items():
        row = {
            "task": task,
            "optimizer": optimizer,
            "layer": layer,
            "what": what,
            "seeds": len(entries),
        }
        for key, _ in COLUMNS:
            row[key] = float(np.mean([e[key] for e in entries if key in e]))
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> str:
    header = "| task | opt | layer | what | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (4 + len(COLUMNS))]
    for row in rows:
        lines.append(
            f"| {row['task']} | {row['optimizer']} | {row['layer']} | {row['what']} | "
            + " | ".join(f"{row[key]:.3g}" for key, _ in COLUMNS)
            + " |"
        )
    return "\n".join(lines)


#: The rows of the per-seed min / median / max table (:func:`spread_table`).
SPREAD = (
    ("offdiag_share", "off-diag share"),
    ("offdiag_share_floor", "its floor (diagonal truth, same M, d)"),
    ("offdiag_share_debiased", "debiased off-diag share (no floor)"),
    ("correlation_mean_square", "mean R_ij² off the diagonal"),
    ("correlation_mean_square_shuffled", "the same, shuffled (iid floor)"),
    ("correlation_top_eigenvalue", "λmax(R)"),
    ("error_diagonal", "err diag"),
    ("error_kronecker", "err Kron"),
    ("error_kronecker_floor", "err Kron floor (exact Kronecker truth)"),
    ("error_kronecker_basis", "err Kron basis (eigenbasis of U ⊗ V, free eigenvalues)"),
    ("error_kronecker_basis_floor", "err Kron basis floor (exact Kronecker truth)"),
    ("error_moment_basis", "err basis of moments (eigenbases of E[E Eᵀ], E[Eᵀ E])"),
    ("error_diagonal_plus_kronecker", "err diag+Kron"),
    ("error_kfac", "err K-FAC (scaled G ⊗ A)"),
    ("error_kronecker_diagonal", "err of diag(U) ⊗ diag(V) (a rank-one diagonal, Adafactor-like)"),
)

#: Counts over the per-seed covariances: (label, predicate on one covariance's metrics).
COUNTS = (
    (
        "off-diag share above twice its floor",
        lambda m: m["offdiag_share"] > 2 * m["offdiag_share_floor"],
    ),
    (
        "err Kron within twice its floor",
        lambda m: m["error_kronecker"] <= 2 * m["error_kronecker_floor"],
    ),
    (
        "err Kron basis within twice its floor",
        lambda m: m["error_kronecker_basis"] <= 2 * m["error_kronecker_basis_floor"],
    ),
    (
        "err basis of moments within twice the err Kron basis floor",
        lambda m: m["error_moment_basis"] <= 2 * m["error_kronecker_basis_floor"],
    ),
    (
        "err Kron basis <= err Kron",
        lambda m: m["error_kronecker_basis"] <= m["error_kronecker"] + 1e-12,
    ),
    (
        "err basis of moments below err Kron",
        lambda m: m["error_moment_basis"] < m["error_kronecker"],
    ),
    ("err K-FAC below err diag", lambda m: m["error_kfac"] < m["error_diagonal"]),
)


def spread_table(runs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Per seed (not averaged): min / median / max of the :data:`SPREAD` metrics over all noise
    covariances (every run, checkpoint and layer) and over all drift covariances, and the
    :data:`COUNTS`. Returns the markdown and the same numbers for the JSON."""
    groups = {
        "noise": [
            values
            for run in runs
            for checkpoint in run["checkpoints"]
            for values in checkpoint["layers"].values()
        ],
        "drift": [values for run in runs for values in run["drift"]["layers"].values()],
    }
    edges = [m["marchenko_pastur_edge"] for entries in groups.values() for m in entries]
    lines = ["| quantity | noise | drift |", "|---|---|---|"]
    data: dict[str, Any] = {
        "covariances": {k: len(v) for k, v in groups.items()},
        "min_median_max": {},
        "counts": {},
    }
    for key, label in SPREAD:
        if key == "correlation_top_eigenvalue":
            label += f" (MP edge {min(edges):.4g}–{max(edges):.4g})"
        cells, spread = [], {}
        for what, entries in groups.items():
            values = [m[key] for m in entries if key in m]
            triple = [float(np.min(values)), float(np.median(values)), float(np.max(values))]
            spread[what] = triple
            cells.append(" / ".join(f"{x:.4g}" for x in triple))
        data["min_median_max"][key] = spread
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for label, test in COUNTS:
        counts = {
            what: [sum(bool(test(m)) for m in entries), len(entries)]
            for what, entries in groups.items()
        }
        data["counts"][label] = counts
        lines.append(
            f"{label}: " + ", ".join(f"{k} of {n} {what}" for what, (k, n) in counts.items())
        )
    return "\n".join(lines), data


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(row["task"] for row in rows))
    figure, axes = plt.subplots(len(tasks), 2, figsize=(13, 3.6 * len(tasks)), squeeze=False)
    for k, task in enumerate(tasks):
        mine = [row for row in rows if row["task"] == task]
        labels = [f"{r['optimizer']} {r['layer']}\n{r['what']}" for r in mine]
        x = np.arange(len(mine))
        ax = axes[k, 0]
        for key, marker in (
            ("offdiag_share", "o"),
            ("offdiag_share_floor", "_"),
            ("offdiag_share_debiased", "x"),
        ):
            ax.plot(x, [r[key] for r in mine], marker, label=key, markersize=8)
        ax.set_title(f"{task}: off-diagonal energy share")
        ax.set_xticks(x, labels, rotation=90, fontsize=6)
        ax.legend(fontsize=7)
        ax = axes[k, 1]
        for key, marker in (
            ("error_diagonal", "o"),
            ("error_kronecker", "s"),
            ("error_kronecker_floor", "_"),
            ("error_kronecker_basis", "D"),
            ("error_moment_basis", "+"),
            ("error_diagonal_plus_kronecker", "^"),
            ("error_kfac", "x"),
        ):
            ax.plot(x, [r[key] for r in mine], marker, label=key, markersize=7)
        ax.set_title(f"{task}: relative Frobenius error of the approximation")
        ax.set_xticks(x, labels, rotation=90, fontsize=6)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="digits-mlp only, 30 steps, d = 16, M = 64 (the test's run)",
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--tasks", default="digits-mlp,digits-cnn,char-lm")
    parser.add_argument("--out", default="benchmarks/gradient_correlation")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()
    if args.quick:
        settings = {
            "steps": 30,
            "checkpoints": [5, 30],
            "rows": 4,
            "cols": 4,
            "minibatches": 64,
            "drift_window": 24,
            "char_lm_true_gradient": {"true_gradient_windows": 32, "chunk_windows": 16},
        }
        tasks = ["digits-mlp"]
    else:
        # d = 64: M = 256 = 4d fresh mini-batches; the drift window's 256 increments = 4d
        settings = {
            "steps": 300,
            "checkpoints": [10, 100, 300],
            "rows": 8,
            "cols": 8,
            "minibatches": 256,
            "drift_window": 256,
            "char_lm_true_gradient": {"true_gradient_windows": 128, "chunk_windows": 64},
        }
        tasks = args.tasks.split(",")
    checks = self_check(settings["rows"], settings["cols"], settings["minibatches"])
    print("check of the check:", {k: round(v, 4) for k, v in checks.items()}, flush=True)
    runs = []
    for task in tasks:
        for optimizer in OPTIMIZERS:
            for seed in range(args.seeds):
                began = time.time()
                runs.append(measure_run(task, optimizer, seed, settings))
                print(f"{task} {optimizer} seed={seed}: {time.time() - began:.1f} s", flush=True)
    rows = summary_rows(runs)
    table = print_table(rows)
    print(table)
    spread, spread_data = spread_table(runs)
    print("\nper seed, min / median / max:\n" + spread)
    wall = time.time() - started
    print(f"\ntotal wall time {wall:.1f} s")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    result = {
        "command": "python benchmarks/gradient_correlation.py"
        + (" --quick" if args.quick else "")
        + f" --seeds {args.seeds} --tasks {','.join(tasks)} --out {args.out}",
        "settings": settings,
        "seeds": list(range(args.seeds)),
        "check_of_the_check": checks,
        "runs": runs,
        "summary": rows,
        "spread": spread_data,
        "wall_seconds": wall,
        "torch": torch.__version__,
    }
    (out / f"results{suffix}.json").write_text(json.dumps(result, indent=1))
    (out / f"table{suffix}.md").write_text(table + "\n")
    plot(rows, out / f"summary{suffix}.png")
    return result


if __name__ == "__main__":
    main()
