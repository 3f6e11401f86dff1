"""Internals of the exact solver that its results alone do not reveal.

Found by mutation testing (tests/README.md): mutants that left every result unchanged
but broke a promise of the code: the exponential cache of :func:`pkpd.solvers.exact._step`
(a uniform grid costs one matrix exponential, not one per step), the row pivoting of the
Padé solve in :mod:`pkpd.solvers.expm`, and its check of the output's shape.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from pkpd.solvers import exact
from pkpd.solvers.expm import EXPM_BAD_SHAPE, _lu_solve_inplace, expm_into, expm_work

M = np.array([[-1.3, 0.4, 0.0], [0.9, -0.4, 0.0], [1.0, 0.0, 0.0]])
B = np.array([1.0, 0.0, 0.0])


def _stepper():
    Maug, Eaug, cache_h, cache_phi, cache_g, xtmp, ework, epiv = exact.workspace(3)
    counter = np.zeros(1, dtype=np.int64)

    def step(x, h, rate, t_scale):
        st = exact._step(
            x, h, rate, M, B, t_scale, Maug, Eaug, cache_h, cache_phi, cache_g, xtmp, ework,
            epiv, counter,
        )  # fmt: skip
        assert st == 0

    return step, counter


def _exact(x0, t, rate):
    """x(t) of dx/dt = M x + B rate from the Van Loan exponential (scipy)."""
    aug = np.zeros((5, 5))
    aug[:3, :3] = M * t
    aug[:3, 3] = B * t * rate
    aug[:3, 4] = x0
    aug[4, 4] = 0.0
    E = scipy.linalg.expm(aug)
    return E[:3, :3] @ x0 + E[:3, 3]


def test_a_uniform_grid_costs_one_exponential():
    """Steps between the points ``i * h`` of a 48-h grid differ from each other by a few
    ulps of the time: they share one cached exponential (module docstring)."""
    step, counter = _stepper()
    t = np.arange(2881) * (1.0 / 60.0)
    steps = np.diff(t)
    assert len(set(steps.tolist())) > 1  # the rounding the cache must see through
    x0 = np.array([5.0, 0.0, 0.0])
    x = x0.copy()
    for i, h in enumerate(steps):
        step(x, h, 2.0, abs(t[i + 1]))
    assert counter[0] == 1
    np.testing.assert_allclose(x, _exact(x0, t[-1], 2.0), rtol=1e-11)


def test_alternating_step_lengths_reuse_their_cached_exponentials():
    step, counter = _stepper()
    x0 = np.array([1.0, 2.0, 0.0])
    x = x0.copy()
    t = 0.0
    for _ in range(20):
        for h in (0.1, 0.25, 0.05):
            t += h
            step(x, h, 0.5, t)
    assert counter[0] == 3
    np.testing.assert_allclose(x, _exact(x0, t, 0.5), rtol=1e-11)


def test_pade_solve_pivots_rows():
    """A zero on the diagonal needs a row interchange; the solution is that of numpy."""
    q = np.array([[0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [3.0, 0.0, 1.0]])
    rhs = np.arange(9.0).reshape(3, 3)
    x = rhs.copy()
    piv = np.zeros(3, dtype=np.int64)
    assert _lu_solve_inplace(q.copy(), x, piv)
    assert piv[0] == 2  # the largest entry of the first column
    np.testing.assert_allclose(x, np.linalg.solve(q, rhs), rtol=1e-14, atol=1e-14)


def test_a_non_square_output_is_refused():
    work, piv = expm_work(3)
    out = np.zeros((3, 4))
    assert expm_into(np.eye(3), out, work, piv) == EXPM_BAD_SHAPE
    assert np.all(np.isnan(out))
