"""Checks for 13_schedule_free.md: the eval/train maps and the constant-rate average.

Run: ``python derivations/checks/schedule_free.py``.
"""

from __future__ import annotations

import sympy as sp

beta, c = sp.symbols("beta c", positive=True)


def check_eval_recovers_x_and_train_recovers_y():
    # (eq:schedule-free-y) then (eq:schedule-free-eval) gives back x, and the converse.
    x, z = sp.symbols("x z")
    y = beta * x + (1 - beta) * z
    assert sp.simplify((y - (1 - beta) * z) / beta - x) == 0
    y_free = sp.Symbol("y")
    x_of_y = (y_free - (1 - beta) * z) / beta
    assert sp.simplify(beta * x_of_y + (1 - beta) * z - y_free) == 0


def check_the_step_from_y_and_z_alone_matches_the_three_updates():
    # What the code computes, with x taken from (y, z) by (eq:schedule-free-eval), equals
    # (eq:schedule-free-z), (eq:schedule-free-x), (eq:schedule-free-y) on the stored x.
    x, z, delta = sp.symbols("x z delta")
    y = beta * x + (1 - beta) * z
    z_next = z + delta
    expected_y = beta * ((1 - c) * x + c * z_next) + (1 - beta) * z_next
    x_from_code = (y - (1 - beta) * z) / beta
    code_y = beta * (x_from_code + c * (z_next - x_from_code)) + (1 - beta) * z_next
    assert sp.simplify(code_y - expected_y) == 0


def check_a_constant_rate_gives_the_uniform_average():
    # w_t = eta^2 for all t: c_t = 1/t, and x_T = (z_1 + ... + z_T) / T for T = 1..6
    eta = sp.Symbol("eta", positive=True)
    zs = sp.symbols("z1:7")
    x, total = sp.Symbol("x0"), 0
    for t, z in enumerate(zs, start=1):
        weight = eta**2
        total += weight
        x = (1 - weight / total) * x + (weight / total) * z
        assert sp.simplify(x - sum(zs[:t]) / t) == 0


CHECKS = [
    check_eval_recovers_x_and_train_recovers_y,
    check_the_step_from_y_and_z_alone_matches_the_three_updates,
    check_a_constant_rate_gives_the_uniform_average,
]

if __name__ == "__main__":
    for check in CHECKS:
        check()
        print(f"ok  {check.__name__}")
