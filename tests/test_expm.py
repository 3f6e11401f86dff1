"""Tests of the numba matrix exponential ``pkpd.engine.solvers.expm`` (Higham 2005).

Checked against closed forms, against identities of the exponential, and against
``scipy.linalg.expm`` on pharmacokinetic compartment matrices in every Padé branch.
Also runs with ``NUMBA_DISABLE_JIT=1`` (pure Python path).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.linalg

from pkpd.engine.solvers import expm as expm_mod
from pkpd.engine.solvers.expm import (
    EXPM_BAD_SHAPE,
    EXPM_NONFINITE_INPUT,
    EXPM_NONFINITE_OUTPUT,
    EXPM_OK,
    N_WORK,
    THETA,
    _pade_degree,
    _scaling_exponent,
    expm,
    expm_into,
    expm_work,
)

U = 2.0**-53  # unit roundoff of float64
DEGREES = (3, 5, 7, 9, 13)
THETAS = {3: 1.495585217958292e-2, 5: 2.539398330063230e-1, 7: 9.504178996162932e-1,
          9: 2.097847961257068, 13: 5.371920351148152}  # fmt: skip

# Moderate norms (no or few squarings, s <= 3): both algorithms are accurate to a few
# ulps times the condition of the problem; the observed worst case is ~6e-14 and comes
# from scipy's side (its Al-Mohy & Higham 2009 choice of a lower degree near
# ||A||_1 ~ 4 is slightly less accurate than r_13 there).
TOL_MODERATE = 1e-13


def tol_squaring(s: int, n: int) -> float:
    """Tolerance for a result obtained after ``s`` squarings of an n x n matrix.

    The exponential of a compartment (Metzler) matrix is nonnegative, so each
    floating-point squaring X -> X^2 has componentwise error <= gamma_n X^2 with
    gamma_n ~ n u, and carries the previous relative error twice: delta_(k+1) <=
    2 delta_k + n u, hence delta_s <= 2^s (delta_0 + n u). This is the overscaling error
    growth of the 2005 algorithm (Al-Mohy & Higham 2009, Sec. 1); scipy squares at most
    as often, so its own error is bounded by the same quantity, hence the factor 2. A
    bound linear in s (such as 1e-12 s) is *not* valid: the observed error for stiff
    matrices with s = 16 is ~2e-11.
    """
    return TOL_MODERATE + 2.0 * 2.0**s * (n + 4) * U


def rel_err(E: np.ndarray, R: np.ndarray) -> float:
    """||E - R||_1 / ||R||_1."""
    return float(np.linalg.norm(E - R, 1) / np.linalg.norm(R, 1))


def run_expm(A: np.ndarray) -> np.ndarray:
    """expm_into with fresh work arrays; asserts success."""
    n = A.shape[0]
    work, piv = expm_work(n)
    out = np.full((n, n), np.nan)
    status = expm_into(A, out, work, piv)
    assert status == EXPM_OK
    return out


def loguniform(rng: np.random.Generator, lo: float, hi: float, size=None) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def compartment_matrix(
    rng: np.random.Generator,
    n: int,
    k_range: tuple[float, float] = (1e-2, 1.0),
    ke_range: tuple[float, float] = (1e-2, 1.0),
    density: float = 0.5,
) -> np.ndarray:
    """Rate matrix A of a linear compartment model, dx/dt = A x.

    ``A[i, j] = k_ij >= 0`` (i != j) is the transfer rate from compartment j to i;
    ``A[j, j] = -(sum_i k_ij + ke_j)`` with elimination ``ke_j >= 0``, so every column
    sum is ``-ke_j`` (mass balance). Compartment 0 is the central one: it exchanges with
    every peripheral compartment (mammillary backbone, so A is never zero) and always
    eliminates; the others have random extra transfers and eliminate with probability
    1/2.
    """
    K = loguniform(rng, *k_range, size=(n, n)) * (rng.random((n, n)) < density)
    K[0, 1:] = loguniform(rng, *k_range, size=n - 1)
    K[1:, 0] = loguniform(rng, *k_range, size=n - 1)
    np.fill_diagonal(K, 0.0)
    ke = loguniform(rng, *ke_range, size=n) * (rng.random(n) < 0.5)
    ke[0] = loguniform(rng, *ke_range)
    return K - np.diag(K.sum(axis=0) + ke)


def assert_matches_scipy(A: np.ndarray, tol: float) -> float:
    E = run_expm(A)
    R = scipy.linalg.expm(A)
    err = rel_err(E, R)
    assert err < tol, f"relative 1-norm error {err:.3e} >= {tol:.1e}"
    return err


def assert_compartment_properties(A: np.ndarray, E: np.ndarray, tol: float) -> None:
    """exp(A) of a compartment matrix is nonnegative and loses mass, exactly
    conserving it in compartments whose column of A sums to zero."""
    scale = np.abs(E).max()
    assert E.min() >= -tol * scale
    col_loss = A.sum(axis=0)  # = -ke_j
    colsum = E.sum(axis=0)
    assert np.all(colsum <= 1.0 + tol)
    closed = np.all(col_loss == 0.0)
    if closed:
        np.testing.assert_allclose(colsum, 1.0, rtol=0, atol=tol)


# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", DEGREES)
def test_pade_coefficients_are_exact(m):
    """b_j = c_j / c_m with c_j = (2m-j)! m! / ((2m)! j! (m-j)!), exact in float64."""
    b = getattr(expm_mod, f"_B{m}")
    assert b.shape == (m + 1,)
    f = math.factorial
    c = [Fraction(f(2 * m - j) * f(m), f(2 * m) * f(j) * f(m - j)) for j in range(m + 1)]
    for j in range(m + 1):
        exact = c[j] / c[m]
        assert exact.denominator == 1
        assert Fraction(float(b[j])) == exact, (m, j)


def test_theta_constants():
    np.testing.assert_array_equal(THETA, [THETAS[m] for m in DEGREES])
    assert np.all(np.diff(THETA) > 0)


# --------------------------------------------------------------------------------------
# Choice of degree and scaling
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("i", range(len(DEGREES)))
def test_pade_degree_at_thresholds(i):
    m = DEGREES[i]
    theta = THETAS[m]
    assert _pade_degree(theta) == m  # "||A||_1 <= theta_m" is inclusive
    assert _pade_degree(np.nextafter(theta, 0.0)) == m
    above = np.nextafter(theta, np.inf)
    assert _pade_degree(above) == (DEGREES[i + 1] if m != 13 else 13)
    if i > 0:
        assert _pade_degree(np.nextafter(THETAS[DEGREES[i - 1]], np.inf)) == m


def test_pade_degree_small_and_large():
    assert _pade_degree(0.0) == 3
    assert _pade_degree(1e300) == 13


def test_scaling_exponent():
    t = THETAS[13]
    assert _scaling_exponent(0.0) == 0
    assert _scaling_exponent(t) == 0
    assert _scaling_exponent(np.nextafter(t, np.inf)) == 1
    # norm / theta_13 an exact power of two: no extra squaring
    for k in range(1, 40):
        assert _scaling_exponent(t * 2.0**k) == k
    norms = [6.0, 43.0, 1e3, 5e4, 1e5, 1e300, *(np.nextafter(t * 2.0**k, np.inf) for k in range(8))]
    for norm in norms:
        s = _scaling_exponent(norm)
        assert s == max(0, math.ceil(math.log2(norm / t)))  # the formula of the paper
        # Smallest s with ||2^-s A||_1 <= theta_13, up to the rounding of norm / theta_13
        # (one ulp above t * 2^k the quotient rounds to 2^k; theta_13 is not sharp to
        # an ulp, so this is immaterial).
        assert norm / 2.0**s <= t * (1 + 2 * U)
        assert norm / 2.0 ** (s - 1) > t


# --------------------------------------------------------------------------------------
# Exact cases
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 5, 12])
def test_zero_matrix_gives_identity(n):
    np.testing.assert_array_equal(run_expm(np.zeros((n, n))), np.eye(n))


@pytest.mark.parametrize("scale", [1e-3, 0.2, 0.9, 2.0, 5.0, 12.0])
def test_diagonal(scale):
    rng = np.random.default_rng(11)
    d = rng.uniform(-1.0, 1.0, 7) * scale
    E = run_expm(np.diag(d))
    # Diagonal in, diagonal out: all off-diagonal products are exact zeros.
    np.testing.assert_array_equal(E - np.diag(np.diag(E)), 0.0)
    # r_m(x) = p_m(x) / p_m(-x): for x > 0 the alternating sum p_m(-x) cancels, which
    # amplifies rounding errors by about p_m(x) / p_m(-x) ~ e^x; each squaring doubles
    # the relative error.
    s = _scaling_exponent(np.abs(d).max())
    rtol = 2.0**s * 8 * U * max(1.0, math.exp(d.max() / 2.0**s))
    np.testing.assert_allclose(np.diag(E), np.exp(d), rtol=rtol, atol=0)


@pytest.mark.parametrize("t", [1.0, 1e-3, 0.1, 2.0, 7.5, 1e3])
def test_nilpotent(t):
    E = run_expm(np.array([[0.0, t], [0.0, 0.0]]))
    np.testing.assert_allclose(E, [[1.0, t], [0.0, 1.0]], rtol=1e-15, atol=0)
    if t == 1.0:  # r_9 of a nilpotent matrix of index 2 is exactly I + A
        np.testing.assert_array_equal(E, [[1.0, 1.0], [0.0, 1.0]])


@pytest.mark.parametrize("t", [1e-3, 0.2, 0.9, 2.0, 5.0, 30.0, 100.0])
def test_rotation_generator(t):
    E = run_expm(np.array([[0.0, -t], [t, 0.0]]))
    c, s = math.cos(t), math.sin(t)
    np.testing.assert_allclose(E, [[c, -s], [s, c]], rtol=0, atol=1e-14 * max(1.0, t))


@pytest.mark.parametrize("norm", [0.01, 0.2, 0.9, 2.0, 5.0, 20.0])
def test_inverse_identity(norm):
    """expm(A) expm(-A) = I."""
    rng = np.random.default_rng(5)
    A = rng.standard_normal((6, 6))
    A *= norm / np.linalg.norm(A, 1)
    P = run_expm(A) @ run_expm(-A)
    cond = np.linalg.norm(run_expm(A), 1) * np.linalg.norm(run_expm(-A), 1)
    np.testing.assert_allclose(P, np.eye(6), rtol=0, atol=50 * U * cond)


@pytest.mark.parametrize(("a", "b"), [(0.01, -0.003), (0.5, 0.25), (1.7, -4.0), (3.0, 9.0)])
def test_scalar_multiple_of_identity(a, b):
    """expm((a + b) I) = e^a e^b I."""
    n = 4
    E = run_expm((a + b) * np.eye(n))
    np.testing.assert_array_equal(E - np.diag(np.diag(E)), 0.0)
    s = _scaling_exponent(abs(a + b))
    rtol = 2.0**s * 8 * U * max(1.0, math.exp((a + b) / 2.0**s))  # see test_diagonal
    np.testing.assert_allclose(np.diag(E), math.exp(a) * math.exp(b), rtol=rtol)


# --------------------------------------------------------------------------------------
# Compartment matrices vs scipy, every Padé branch
# --------------------------------------------------------------------------------------

# ||A||_1 targets well inside each interval (theta_(prev), theta_m], plus m = 13 with
# s = 0, 1, 3 (moderate) and s = 8, 15 (large).
BRANCH_TARGETS = [
    (3, 0.5 * THETAS[3]),
    (5, 0.1),
    (7, 0.6),
    (9, 1.5),
    (13, 4.0),
    (13, 10.0),
    (13, 40.0),
    (13, 1e3),
    (13, 1e5),
]


@pytest.mark.parametrize(("m", "target"), BRANCH_TARGETS)
def test_compartment_matrices_every_branch(m, target):
    rng = np.random.default_rng(20050401 + int(target * 1000) % 9973)
    # Slow elimination for the large targets, so that exp(A) keeps a slow mode and does
    # not underflow to zero (which would leave no relative error to measure).
    c = min(1.0, 1.0 / target)
    for n in range(2, 13):
        for _ in range(3):
            A0 = compartment_matrix(rng, n, ke_range=(1e-2 * c, c))
            A = A0 * (target / np.linalg.norm(A0, 1))
            norm1 = np.linalg.norm(A, 1)
            assert _pade_degree(norm1) == m
            s = _scaling_exponent(norm1) if m == 13 else 0
            tol = TOL_MODERATE if s <= 3 else tol_squaring(s, n)
            assert_matches_scipy(A, tol)
            assert_compartment_properties(A, run_expm(A), tol)


def test_all_branches_are_covered():
    reached = {_pade_degree(t) for _, t in BRANCH_TARGETS}
    assert reached == set(DEGREES)
    assert {m for m, t in BRANCH_TARGETS if _pade_degree(t) == m} == set(DEGREES)


@pytest.mark.parametrize("dt", [0.1, 1.0, 6.0, 24.0, 48.0])
def test_stiff_compartment_matrices(dt):
    """Rates spanning 1e-4 .. 1e3 per hour, steps up to 48 h (||A||_1 up to ~1e6)."""
    rng = np.random.default_rng(int(dt * 10) + 7)
    for n in range(2, 13):
        for _ in range(2):
            A = dt * compartment_matrix(rng, n, k_range=(1e-4, 1e3), ke_range=(1e-4, 1.0))
            s = _scaling_exponent(np.linalg.norm(A, 1))
            assert_matches_scipy(A, tol_squaring(s, n))
            assert_compartment_properties(A, run_expm(A), tol_squaring(s, n))


@pytest.mark.parametrize("dt", [0.5, 48.0])
def test_closed_system_conserves_mass(dt):
    """No elimination anywhere: A is singular (1^T A = 0) and 1^T exp(A) = 1^T."""
    rng = np.random.default_rng(3)
    for n in (2, 6, 12):
        A = compartment_matrix(rng, n, k_range=(1e-4, 1e3))
        A -= np.diag(A.sum(axis=0))  # remove elimination
        A *= dt
        s = _scaling_exponent(np.linalg.norm(A, 1))
        E = run_expm(A)
        np.testing.assert_allclose(E.sum(axis=0), 1.0, rtol=0, atol=tol_squaring(s, n))
        assert_matches_scipy(A, tol_squaring(s, n))


@pytest.mark.parametrize("dt", [0.25, 6.0, 48.0])
def test_sink_compartment_zero_column(dt):
    """A compartment without outflow or elimination (zero column, singular A) keeps
    its content: exp(A) e_j = e_j."""
    rng = np.random.default_rng(17)
    for n in (2, 5, 9):
        A = dt * compartment_matrix(rng, n, k_range=(1e-4, 1e3), ke_range=(1e-4, 1.0))
        j = n - 1
        A[j, j] = 0.0
        A[:, j] = 0.0
        s = _scaling_exponent(np.linalg.norm(A, 1))
        E = run_expm(A)
        np.testing.assert_allclose(E[:, j], np.eye(n)[:, j], rtol=0, atol=tol_squaring(s, n))
        assert_matches_scipy(A, tol_squaring(s, n))


@pytest.mark.parametrize("k", [1e-4, 0.1, 1.0, 30.0, 1e3])
@pytest.mark.parametrize("dt", [0.1, 6.0, 48.0])
def test_auc_accumulator_closed_form(k, dt):
    """One compartment (elimination k, volume V) plus an AUC state dAUC/dt = x/V.

    A = [[-k, 0], [1/V, 0]] has a zero column (singular) and an accumulator row;
    exp(A dt) = [[e^(-k dt), 0], [(1 - e^(-k dt)) / (k V), 1]].
    """
    V = 42.0
    A = dt * np.array([[-k, 0.0], [1.0 / V, 0.0]])
    s = _scaling_exponent(np.linalg.norm(A, 1))
    exact = np.array([[math.exp(-k * dt), 0.0], [-math.expm1(-k * dt) / (k * V), 1.0]])
    E = run_expm(A)
    np.testing.assert_array_equal(E[0, 1], 0.0)
    np.testing.assert_array_equal(E[1, 1], 1.0)
    assert rel_err(E, exact) < tol_squaring(s, 2)
    assert abs(E[1, 0] - exact[1, 0]) <= tol_squaring(s, 2) * exact[1, 0]


def test_auc_states_on_multicompartment_model():
    """Several accumulator rows (AUC of central and of an effect compartment)."""
    rng = np.random.default_rng(99)
    for n in (3, 6, 10):
        for dt in (1.0, 48.0):
            K = compartment_matrix(rng, n, k_range=(1e-4, 1e3), ke_range=(1e-4, 1.0))
            A = np.zeros((n + 2, n + 2))
            A[:n, :n] = K
            A[n, 0] = 1.0 / 30.0  # AUC of the central concentration
            A[n + 1, n - 1] = 1.0  # AUC of the last compartment's amount
            A *= dt
            s = _scaling_exponent(np.linalg.norm(A, 1))
            E = run_expm(A)
            np.testing.assert_array_equal(E[:, n:], np.eye(n + 2)[:, n:])
            assert_matches_scipy(A, tol_squaring(s, n + 2))


# --------------------------------------------------------------------------------------
# Failure modes and the no-allocation contract
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("pos", [(0, 0), (1, 2), (3, 3)])
def test_nonfinite_input_gives_status_1(bad, pos):
    A = compartment_matrix(np.random.default_rng(0), 4)
    A[pos] = bad
    work, piv = expm_work(4)
    out = np.zeros((4, 4))
    assert expm_into(A, out, work, piv) == EXPM_NONFINITE_INPUT
    assert np.all(np.isnan(out))
    assert np.all(np.isnan(expm(A)))


def test_bad_shapes_give_status_4():
    A = np.eye(3)
    work, piv = expm_work(3)
    out = np.zeros((3, 3))
    assert expm_into(np.zeros((3, 4)), out, work, piv) == EXPM_BAD_SHAPE
    assert np.all(np.isnan(out))
    assert expm_into(A, np.zeros((3, 3)), work[: N_WORK - 1], piv) == EXPM_BAD_SHAPE
    assert expm_into(A, np.zeros((3, 3)), work, piv[:2]) == EXPM_BAD_SHAPE
    out4 = np.zeros((4, 4))
    assert expm_into(A, out4, work, piv) == EXPM_BAD_SHAPE
    assert np.all(np.isnan(out4))


def test_overflow_gives_status_3():
    work, piv = expm_work(2)
    out = np.zeros((2, 2))
    with np.errstate(over="ignore", invalid="ignore"):  # pure-Python path warns
        status = expm_into(np.array([[800.0, 0.0], [0.0, -1.0]]), out, work, piv)
    assert status == EXPM_NONFINITE_OUTPUT
    assert out[0, 0] == np.inf
    np.testing.assert_allclose(out[1, 1], math.exp(-1.0), rtol=1e-12)


def test_huge_finite_norm():
    """Column sum overflows although every entry is finite: still scaled correctly.

    A = [[-a, 0], [-a, 0]] with a = 1e308: exp(A) = [[e^-a, 0], [-(1 - e^-a), 1]].
    """
    a = 1e308
    work, piv = expm_work(2)
    out = np.zeros((2, 2))
    with np.errstate(over="ignore", invalid="ignore"):
        status = expm_into(np.array([[-a, 0.0], [-a, 0.0]]), out, work, piv)
        status_neg = expm_into(np.array([[-a, 0.0], [0.0, -a]]), out.copy(), work, piv)
    assert status == EXPM_OK
    assert status_neg == EXPM_OK
    np.testing.assert_allclose(out, [[0.0, 0.0], [-1.0, 1.0]], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("n", "target"), [(6, 0.1), (6, 3.0), (12, 50.0), (12, 1e4)])
def test_repeatable_with_reused_work(n, target):
    """Same work arrays twice (second time poisoned) -> bit-identical results, i.e. the
    result does not depend on what the scratch held; expm() agrees bit for bit."""
    rng = np.random.default_rng(n)
    A0 = compartment_matrix(rng, n, k_range=(1e-3, 10.0))
    A = A0 * (target / np.linalg.norm(A0, 1))
    A_copy = A.copy()
    work, piv = expm_work(n)
    out1 = np.empty((n, n))
    out2 = np.empty((n, n))
    assert expm_into(A, out1, work, piv) == EXPM_OK
    work[...] = np.nan
    piv[...] = -12345
    assert expm_into(A, out2, work, piv) == EXPM_OK
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(A, A_copy)  # input untouched
    np.testing.assert_array_equal(expm(A), out1)


def test_noncontiguous_input():
    rng = np.random.default_rng(8)
    A = compartment_matrix(rng, 5) * 3.0
    F = np.asfortranarray(A)
    work, piv = expm_work(5)
    out = np.empty((5, 5))
    assert expm_into(F, out, work, piv) == EXPM_OK
    np.testing.assert_array_equal(out, run_expm(np.ascontiguousarray(A)))


def test_expm_work_shapes():
    work, piv = expm_work(7)
    assert work.shape == (N_WORK, 7, 7)
    assert work.dtype == np.float64
    assert work.flags.c_contiguous
    assert piv.shape == (7,)
    assert piv.dtype == np.int64
