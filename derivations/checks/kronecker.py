"""Checks for 16_kronecker_vsgd.md: the factor moments, the matrix-normal member, the rate
rotation and the unit-Jacobian rotation (exact numerics in float64).

Run: ``python derivations/checks/kronecker.py``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from vsgd_bayes.validation.harness import random_orthogonal

M, N = 4, 3


def _spd(rng, size):
    a = rng.normal(size=(size, size))
    return a @ a.T + np.eye(size)


def check_factor_moments():
    # (eq:kronecker-factor-moments): for vec E ~ N(0, U (x) V) (row-major vec), E[E E^T] is
    # the sum over j of the (i, j), (k, j) covariance entries: the sum of the diagonal of
    # each (i, k) block V U_ik, tr(V) U; E[E^T E] likewise tr(U) V.
    rng = np.random.default_rng(0)
    u, v = _spd(rng, M), _spd(rng, N)
    covariance = np.kron(u, v).reshape(M, N, M, N)  # cov(E_ij, E_kl)
    row = np.einsum("ijkj->ik", covariance)
    col = np.einsum("ijil->jl", covariance)
    assert np.allclose(row, np.trace(v) * u, rtol=1e-14, atol=0)
    assert np.allclose(col, np.trace(u) * v, rtol=1e-14, atol=0)


def check_matrix_normal_is_the_member_with_product_eigenvalues():
    # Q diag(u (x) v) Q^T = U (x) V with Q = L (x) R, L, R the eigenvectors of U, V.
    rng = np.random.default_rng(1)
    u, v = _spd(rng, M), _spd(rng, N)
    (eu, lu), (ev, rv) = np.linalg.eigh(u), np.linalg.eigh(v)
    q = np.kron(lu, rv)
    assert np.allclose(q @ np.diag(np.kron(eu, ev)) @ q.T, np.kron(u, v), rtol=1e-12, atol=1e-12)


def check_rate_rotation_is_the_dense_diagonal_and_keeps_the_sum():
    # (eq:kronecker-rotate-state): P o P is doubly stochastic for orthogonal P, and
    # (P_L o P_L) b (P_R o P_R)^T is the diagonal of P diag(vec b) P^T, P = P_L (x) P_R.
    rng = np.random.default_rng(2)
    p_l, p_r = random_orthogonal(rng, M), random_orthogonal(rng, N)
    for p in (p_l, p_r):
        assert np.allclose((p**2).sum(axis=0), 1.0, atol=1e-14)
        assert np.allclose((p**2).sum(axis=1), 1.0, atol=1e-14)
    b = rng.gamma(2.0, 1.0, size=(M, N))
    p = np.kron(p_l, p_r)
    dense = np.diag(p @ np.diag(b.ravel()) @ p.T).reshape(M, N)
    rotated = (p_l**2) @ b @ (p_r**2).T
    assert np.allclose(rotated, dense, rtol=1e-13, atol=0)
    assert abs(rotated.sum() - b.sum()) <= 1e-13 * b.sum()


def check_rotation_has_unit_jacobian():
    # (eq:kronecker-model) -> (eq:kronecker-rotate): the MVN density in the original
    # coordinates equals the product of the normals of the rotated coordinates.
    rng = np.random.default_rng(3)
    left, right = random_orthogonal(rng, M), random_orthogonal(rng, N)
    q = np.kron(left, right)
    w = rng.gamma(2.0, 1.0, size=M * N)
    mean, x = rng.normal(size=M * N), rng.normal(size=M * N)
    dense = stats.multivariate_normal.logpdf(x, mean, q @ np.diag(1.0 / w) @ q.T)
    rotated = stats.norm.logpdf(q.T @ x, q.T @ mean, 1.0 / np.sqrt(w)).sum()
    assert abs(dense - rotated) <= 1e-12 * abs(dense)
    # and the two-sided rotation is the Kronecker one: vec(L^T X R) = Q^T vec X
    matrix = x.reshape(M, N)
    assert np.allclose((left.T @ matrix @ right).ravel(), q.T @ x, atol=1e-14)


CHECKS = [
    check_factor_moments,
    check_matrix_normal_is_the_member_with_product_eigenvalues,
    check_rate_rotation_is_the_dense_diagonal_and_keeps_the_sum,
    check_rotation_has_unit_jacobian,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok  {check.__name__}")
