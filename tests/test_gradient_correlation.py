"""The instruments of benchmarks/gradient_correlation.py (CORRELATION.md): the Van Loan-Pitsianis
Kronecker fit, the energy and rank functions, the checks of the check, a broken twin, and the
--quick run's JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scripts import load_script


@pytest.fixture(scope="module")
def gc():
    return load_script("benchmarks/gradient_correlation.py")


def _spd(rng, n):
    factor = rng.normal(size=(n, n))
    return factor @ factor.T + np.eye(n)


def test_nearest_kronecker_recovers_an_exact_product(gc):
    rng = np.random.default_rng(0)
    u, v = _spd(rng, 3), _spd(rng, 5)
    covariance = np.kron(u, v)
    fitted_u, fitted_v = gc.nearest_kronecker(covariance, 3, 5)
    # float64 SVD of a 9 x 25 matrix: error at the level of machine precision
    assert gc.relative_error(covariance, np.kron(fitted_u, fitted_v)) < 1e-13
    # the factors up to the scalar U -> cU, V -> V/c, and positive (the sign fixed)
    ratio = fitted_u / u
    assert np.allclose(ratio, ratio[0, 0], rtol=1e-12) and ratio[0, 0] > 0


def test_rearrangement_maps_a_kronecker_product_to_rank_one(gc):
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(2, 2)), rng.normal(size=(4, 4))
    rearranged = gc.rearrange(np.kron(u, v), 2, 4)
    assert np.allclose(rearranged, np.outer(u.reshape(-1), v.reshape(-1)), atol=1e-14)


def test_broken_twin_rearrangement_fails(gc):
    # Without the transpose the "rearrangement" is a plain reshape: it must not recover U (x) V.
    rng = np.random.default_rng(2)
    covariance = np.kron(_spd(rng, 4), _spd(rng, 4))
    broken = gc.nearest_kronecker(covariance, 4, 4, arrange=lambda c, r, k: c.reshape(r * r, k * k))
    assert gc.relative_error(covariance, np.kron(*broken)) > 0.3


def test_energy_and_rank_functions_on_hand_computed_examples(gc):
    # [[2, 1], [1, 2]]: off-diagonal energy 2 of 10; eigenvalues 3, 1
    c = np.array([[2.0, 1.0], [1.0, 2.0]])
    assert gc.offdiag_share(c) == pytest.approx(0.2, abs=1e-15)
    p = np.array([0.75, 0.25])
    assert gc.effective_rank(c) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-12)
    assert gc.participation_ratio(c) == pytest.approx(16 / 10, rel=1e-15)
    assert gc.effective_rank(np.eye(7)) == pytest.approx(7, rel=1e-12)
    assert gc.effective_rank(np.outer([1.0, 2, 3], [1.0, 2, 3])) == pytest.approx(1, rel=1e-6)
    assert np.allclose(gc.correlation(np.diag([4.0, 9.0]) + 0), np.eye(2))
    assert gc.correlation(np.array([[4.0, 3.0], [3.0, 9.0]]))[0, 1] == pytest.approx(0.5)
    # the floor: d = 2, unit variances, M = 11: off 2/10, diagonal 2 (1 + 0.2)
    assert gc.offdiag_share_floor(np.ones(2), 11) == pytest.approx(0.2 / (0.2 + 2.4))


def test_floor_matches_monte_carlo(gc):
    # The closed-form floor against 400 sample covariances of a diagonal Gaussian truth
    rng = np.random.default_rng(3)
    variances = 10 ** rng.uniform(-1, 1, size=12)
    samples = 48
    off, total = 0.0, 0.0
    for _ in range(400):
        c = np.cov(rng.normal(size=(samples, 12)) * np.sqrt(variances), rowvar=False)
        total += np.sum(c**2)
        off += np.sum(c**2) - np.sum(np.diag(c) ** 2)
    # ratio of mean energies; 400 repeats: a few per cent of Monte Carlo error
    assert off / total == pytest.approx(gc.offdiag_share_floor(variances, samples), rel=0.05)


def test_checks_of_the_check_pass_at_the_real_size(gc):
    result = gc.self_check(8, 8, 256, seed=1)  # asserts inside; values checked again here
    floor = result["diagonal_offdiag_share_floor"]
    assert abs(result["diagonal_offdiag_share"] - floor) < 0.2 * floor
    assert result["kronecker_fit_error_against_truth"] < result["kronecker_sample_error"]


def test_diagonal_plus_kronecker_recovers_its_model(gc):
    rng = np.random.default_rng(4)
    u, v = rng.normal(size=(3, 3)), rng.normal(size=(4, 4))
    covariance = np.diag(rng.uniform(1, 4, size=12)) + np.kron(u @ u.T, v @ v.T)
    alone = gc.relative_error(covariance, np.kron(*gc.nearest_kronecker(covariance, 3, 4)))
    fitted = gc.diagonal_plus_kronecker(covariance, 3, 4, iterations=500)
    # alternating least squares converges slowly along the diagonal / Kronecker trade-off
    # (a multiple of I (x) I is in both): asked to do far better than the Kronecker fit alone
    assert gc.relative_error(covariance, fitted) < 0.2 * alone


def test_structure_reads_a_diagonal_truth_at_its_floor(gc):
    rng = np.random.default_rng(5)
    readings = [
        gc.covariance_structure(rng.normal(size=(256, 64)) * np.linspace(0.5, 2, 64), 8, 8, seed=k)
        for k in range(5)
    ]
    share = np.mean([r["offdiag_share"] for r in readings])
    floor = np.mean([r["offdiag_share_floor"] for r in readings])
    assert share == pytest.approx(floor, rel=0.1)
    assert abs(np.mean([r["offdiag_share_debiased"] for r in readings])) < 0.1 * floor


def test_quick_run_writes_the_documented_json(gc, tmp_path):
    gc.main(["--quick", "--seeds", "2", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "results_quick.json").read_text())
    assert {
        "command",
        "settings",
        "seeds",
        "check_of_the_check",
        "runs",
        "summary",
        "spread",
        "wall_seconds",
    } <= set(result)
    assert result["seeds"] == [0, 1]
    assert {run["optimizer"] for run in result["runs"]} == {"adamw", "vsgd"}
    run = result["runs"][0]
    assert [c["step"] for c in run["checkpoints"]] == result["settings"]["checkpoints"]
    keys = {key for key, _ in gc.COLUMNS} | {
        "dimension",
        "samples",
        "participation_ratio",
        "correlation_mean_square",
    }
    for checkpoint in run["checkpoints"]:
        for values in checkpoint["layers"].values():
            assert keys <= set(values)
            assert values["samples"] >= 4 * values["dimension"]
    for values in run["drift"]["layers"].values():
        assert keys <= set(values)
    assert (tmp_path / "summary_quick.png").stat().st_size > 0
    assert (tmp_path / "table_quick.md").read_text().startswith("| task |")


def _orthogonal(rng, n):
    return np.linalg.qr(rng.normal(size=(n, n)))[0]


def _basis_errors(gc, covariance, rows, cols):
    """(err Kron, err Kron basis, err basis of moments) of one covariance."""
    u, v = gc.nearest_kronecker(covariance, rows, cols)
    return (
        gc.relative_error(covariance, np.kron(u, v)),
        gc.relative_error(covariance, gc.diagonal_in_basis(covariance, gc.kronecker_basis(u, v))),
        gc.relative_error(
            covariance, gc.diagonal_in_basis(covariance, gc.moment_basis(covariance, rows, cols))
        ),
    )


def test_partial_traces_of_a_kronecker_product(gc):
    # sum_j C[(i, j), (k, j)] = tr(V) U and sum_i C[(i, j), (i, l)] = tr(U) V, for rows != cols
    rng = np.random.default_rng(6)
    u, v = _spd(rng, 3), _spd(rng, 5)
    rows_moment, cols_moment = gc.partial_traces(np.kron(u, v), 3, 5)
    assert np.allclose(rows_moment, np.trace(v) * u, rtol=1e-13, atol=0)
    assert np.allclose(cols_moment, np.trace(u) * v, rtol=1e-13, atol=0)


def test_kronecker_basis_fits_recover_an_exact_product(gc):
    # C = U (x) V is diagonal in Q_U (x) Q_V; both bases (of the fitted U, V and of the partial
    # traces) are eigenvectors of 8 x 8 SPD matrices in float64: error at rounding level
    rng = np.random.default_rng(7)
    for _ in range(3):
        u, v = _spd(rng, 8), _spd(rng, 8)
        _, kron_basis, moments = _basis_errors(gc, np.kron(u, v), 8, 8)
        assert kron_basis < 1e-12 and moments < 1e-12


def test_kronecker_basis_family_is_strictly_larger_than_kronecker(gc):
    # C = Q diag(d) Q^T, Q = Q_U (x) Q_V, d free (not a Kronecker product of eigenvalues): the
    # partial traces are Q_U diag(sum_b d_ab) Q_U^T (and likewise Q_V's), whose eigenvalues are
    # distinct here, so the moment basis is Q exactly; the rearranged C is A d B^T with
    # orthonormal A, B, so U (x) V is the rank-one part of the 8 x 8 matrix d and misses the rest
    rng = np.random.default_rng(8)
    basis = np.kron(_orthogonal(rng, 8), _orthogonal(rng, 8))
    d = 10 ** rng.uniform(-1, 1, size=(8, 8))
    covariance = (basis * d.reshape(-1)) @ basis.T
    row_sums = np.sort(d.sum(axis=1))
    col_sums = np.sort(d.sum(axis=0))
    # eigenvector accuracy ~ eps ||C|| / gap: the gaps must not be tiny
    assert np.min(np.diff(row_sums)) > 1e-3 * row_sums[-1]
    assert np.min(np.diff(col_sums)) > 1e-3 * col_sums[-1]
    kron, kron_basis, moments = _basis_errors(gc, covariance, 8, 8)
    singular = np.linalg.svd(d, compute_uv=False)
    # err Kron is the relative rank-one error of d
    assert kron == pytest.approx(np.sqrt(np.sum(singular[1:] ** 2) / np.sum(singular**2)), rel=1e-9)
    assert kron > 0.01
    assert moments < 1e-10
    # U is diagonal in Q_U with the (distinct, Perron) top singular vector of d as eigenvalues
    assert kron_basis < 1e-10


def test_broken_moment_basis_twins_fail(gc):
    # On U (x) V with U != V (both 8 x 8, so the twins are well-formed): the row and column
    # moments swapped, or the Kronecker order of the bases reversed, give a wrong basis
    rng = np.random.default_rng(9)
    u, v = _spd(rng, 8), _spd(rng, 8)
    covariance = np.kron(u, v)
    swapped = gc.moment_basis(
        covariance, 8, 8, moments=lambda c, r, k: gc.partial_traces(c, r, k)[::-1]
    )
    assert gc.relative_error(covariance, gc.diagonal_in_basis(covariance, swapped)) > 0.1
    reversed_order = gc.kronecker_basis(*gc.partial_traces(covariance, 8, 8)[::-1])
    # kronecker_basis(V, U) = Q_V (x) Q_U: the same swap at the other end
    assert np.allclose(reversed_order, swapped)
    q_u, q_v = (np.linalg.eigh(m)[1] for m in gc.partial_traces(covariance, 8, 8))
    wrong_order = np.kron(q_v, q_u)  # right factors, np.kron's order reversed
    assert gc.relative_error(covariance, gc.diagonal_in_basis(covariance, wrong_order)) > 0.1
    right_order = np.kron(q_u, q_v)
    assert gc.relative_error(covariance, gc.diagonal_in_basis(covariance, right_order)) < 1e-12


def test_kronecker_basis_error_never_exceeds_kronecker_error(gc):
    # U (x) V = (Q_U (x) Q_V)(L_U (x) L_V)(Q_U (x) Q_V)^T is in the family, and keeping
    # diag(Q^T C Q) is the family's Frobenius optimum for a fixed Q: only rounding can break it
    rng = np.random.default_rng(10)
    for rows, cols in ((8, 8), (8, 8), (3, 5), (4, 6)):
        factor = rng.normal(size=(rows * cols, rows * cols))
        covariance = factor @ factor.T / (rows * cols) + 0.1 * np.eye(rows * cols)
        kron, kron_basis, _ = _basis_errors(gc, covariance, rows, cols)
        assert kron_basis <= kron + 1e-12
        # and on a sample covariance with a Kronecker part, as measured
        samples = (
            rng.normal(size=(4 * rows * cols, rows * cols))
            @ np.linalg.cholesky(np.kron(_spd(rng, rows), _spd(rng, cols)) + covariance).T
        )
        kron, kron_basis, _ = _basis_errors(gc, np.cov(samples, rowvar=False), rows, cols)
        assert kron_basis <= kron + 1e-12


def test_diagonal_in_basis_is_the_projection(gc):
    # the residual C - C_hat is orthogonal (Frobenius) to every Q diag(x) Q^T: the optimum
    rng = np.random.default_rng(11)
    basis = _orthogonal(rng, 6)
    covariance = _spd(rng, 6)
    residual = covariance - gc.diagonal_in_basis(covariance, basis)
    assert np.allclose(np.diag(basis.T @ residual @ basis), 0, atol=1e-12)
