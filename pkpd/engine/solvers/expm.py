"""Matrix exponential of small dense matrices, compiled with numba.

Implements the scaling and squaring algorithm with diagonal Padé approximants of

    N. J. Higham, "The scaling and squaring method for the matrix exponential
    revisited", SIAM J. Matrix Anal. Appl. 26(4):1179-1193, 2005,
    doi:10.1137/04061101X

(Algorithm 2.3 there), exactly as published: the Padé degree ``m`` and the number of
squarings ``s`` are chosen from the 1-norm of ``A`` alone. It is *not* the later
Al-Mohy & Higham (2009) variant that SciPy's ``scipy.linalg.expm`` uses, which estimates
``||A^k||^(1/k)`` to avoid overscaling. On PK compartment matrices the two agree to
~1e-14 (relative, 1-norm) while few squarings are needed; for stiff matrices with large
``||A||_1`` (fast distribution rates times long steps) the 2005 choice of ``s`` can
overscale, and the rounding error of the squaring phase grows like ``2^s u`` (about
1e-11 at s = 16, where SciPy's is about 1e-12).

The kernel :func:`expm_into` is meant to be called from inside other compiled loops (one
exponential per dosing interval or per integration step), so it allocates nothing, never
raises and reports failure through an integer status instead. The matrices are small
(n up to about 30), so every product is an explicit triple loop that LLVM vectorises,
and the Padé system is solved by an in-house LU: numba's ``np.linalg`` goes through
LAPACK with per-call overhead that dominates at this size, allocates its results, and
raises ``LinAlgError`` on a singular matrix, none of which a kernel called in an inner
loop can afford.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from pkpd.engine import _stamp  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)

from .finite import all_finite

__all__ = [
    "EXPM_BAD_SHAPE",
    "EXPM_NONFINITE_INPUT",
    "EXPM_NONFINITE_OUTPUT",
    "EXPM_OK",
    "EXPM_SINGULAR",
    "N_WORK",
    "THETA",
    "expm",
    "expm_into",
    "expm_work",
]

# ---------------------------------------------------------------------------------------
# Status codes returned by ``expm_into``.
# ---------------------------------------------------------------------------------------
EXPM_OK = 0
#: ``A`` contains NaN or +-inf; ``out`` is filled with NaN.
EXPM_NONFINITE_INPUT = 1
#: The Padé denominator ``q_m(A) = V - U`` had an exactly zero pivot. Cannot happen in
#: exact arithmetic for ``||A||_1 <= theta_13`` (q_m has no zeros in that disc, Higham
#: 2005, Sec. 2); kept as a guard so the kernel never divides by zero. ``out`` is NaN.
EXPM_SINGULAR = 2
#: The input was finite but the result over/underflowed to a non-finite value during
#: squaring (e.g. ``||A||_1`` of order 700 with a positive eigenvalue). ``out`` holds
#: the non-finite result as computed.
EXPM_NONFINITE_OUTPUT = 3
#: Inconsistent shapes of ``A``, ``out``, ``work`` or ``piv``; ``out`` is filled with
#: NaN (over its own shape) and nothing else is touched.
EXPM_BAD_SHAPE = 4

#: Number of n x n scratch matrices ``expm_into`` needs in ``work``.
N_WORK = 7

# ---------------------------------------------------------------------------------------
# Constants of Higham (2005), doi:10.1137/04061101X.
#
# theta_m: largest ||2^-s A||_1 for which the backward error of the [m/m] Padé
# approximant does not exceed the unit roundoff u = 2^-53 (the double-precision theta_m
# of Table 2.3 in the paper; the same values are used by MATLAB's expm).
# ---------------------------------------------------------------------------------------
THETA_3 = 1.495585217958292e-2
THETA_5 = 2.539398330063230e-1
THETA_7 = 9.504178996162932e-1
THETA_9 = 2.097847961257068e0
THETA_13 = 5.371920351148152e0
THETA = np.array([THETA_3, THETA_5, THETA_7, THETA_9, THETA_13])

# Coefficients b_0..b_m of the numerator p_m(x) = sum_j b_j x^j of the [m/m] Padé
# approximant r_m = p_m(x) / p_m(-x) to exp(x), Higham (2005), Sec. 2 / Algorithm 2.3:
#     b_j = c_j / c_m,  c_j = (2m - j)! m! / ((2m)! j! (m - j)!),
# i.e. normalised so that b_m = 1, which makes every b_j an integer. All of them (the
# largest is 6.5e16 > 2^53) are exactly representable as float64; the tests check this
# against the factorial formula in exact rational arithmetic.
_B3 = np.array([120.0, 60.0, 12.0, 1.0])
_B5 = np.array([30240.0, 15120.0, 3360.0, 420.0, 30.0, 1.0])
_B7 = np.array([17297280.0, 8648640.0, 1995840.0, 277200.0, 25200.0, 1512.0, 56.0, 1.0])
_B9 = np.array(
    [
        17643225600.0,
        8821612800.0,
        2075673600.0,
        302702400.0,
        30270240.0,
        2162160.0,
        110880.0,
        3960.0,
        90.0,
        1.0,
    ]
)
_B13 = np.array(
    [
        64764752532480000.0,
        32382376266240000.0,
        7771770303897600.0,
        1187353796428800.0,
        129060195264000.0,
        10559470521600.0,
        670442572800.0,
        33522128640.0,
        1323241920.0,
        40840800.0,
        960960.0,
        16380.0,
        182.0,
        1.0,
    ]
)

# Entries are pre-scaled by 2^-_NORM_SHIFT when the plain 1-norm overflows, so that the
# column sums of any finite matrix with fewer than 2^_NORM_SHIFT rows stay finite.
_NORM_SHIFT = 64

_jit = numba.njit(cache=True, fastmath=False, nogil=True)
# The steps of expm_into are inlined into it (numba IR): one function to compile, as fast
# to compile as when it was written in one piece.
_jit_inline = numba.njit(cache=True, fastmath=False, nogil=True, inline="always")


def expm_work(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Allocate the scratch arrays that :func:`expm_into` needs for an ``n x n`` matrix.

    Allocate once per matrix size and reuse across calls; ``expm_into`` overwrites their
    contents, so one pair must not be shared between threads running concurrently.

    Parameters
    ----------
    n : int
        Order of the matrices to exponentiate (``n >= 0``).

    Returns
    -------
    work : ndarray of float64, shape (N_WORK, n, n)
        C-contiguous scratch matrices (``N_WORK == 7``).
    piv : ndarray of int64, shape (n,)
        Row-pivot record of the LU factorisation.
    """
    n = int(n)
    return np.zeros((N_WORK, n, n), dtype=np.float64), np.zeros(n, dtype=np.int64)


@_jit
def _pade_degree(norm1):
    """Padé degree m of Higham (2005) for a matrix of 1-norm ``norm1``.

    Parameters
    ----------
    norm1 : float
        ``||A||_1`` (non-negative).

    Returns
    -------
    int
        The smallest m in (3, 5, 7, 9) with ``norm1 <= theta_m``, otherwise 13
        (then scaling is needed, see :func:`_scaling_exponent`).
    """
    if norm1 <= THETA_3:
        return 3
    if norm1 <= THETA_5:
        return 5
    if norm1 <= THETA_7:
        return 7
    if norm1 <= THETA_9:
        return 9
    return 13


@_jit
def _scaling_exponent(norm1):
    """Number of squarings s = max(0, ceil(log2(norm1 / theta_13))) of Higham (2005).

    Parameters
    ----------
    norm1 : float
        ``||A||_1``, finite and non-negative.

    Returns
    -------
    int
        Smallest s >= 0 with ``||2^-s A||_1 <= theta_13``.
    """
    if norm1 <= THETA_13:
        return 0
    # log2 of an exact power of two is exact, so the ceiling does not overshoot when
    # norm1 / theta_13 is a power of two (MATLAB corrects the same case explicitly).
    return max(0, math.ceil(math.log2(norm1 / THETA_13)))


@_jit
def _matmul(a, b, c):
    """c = a @ b for n x n matrices; ``c`` must not alias ``a`` or ``b``.

    Loop order i-j-k so that the innermost loop runs along contiguous rows of ``b``
    and ``c`` (a scaled row update that LLVM vectorises).
    """
    n = a.shape[0]
    for i in range(n):
        for k in range(n):
            c[i, k] = 0.0
        for j in range(n):
            aij = a[i, j]
            for k in range(n):
                c[i, k] += aij * b[j, k]


@_jit
def _norm1(a, scale):
    """Max column sum of ``|scale * a|`` (the matrix 1-norm times ``scale``).

    The 1-norm is the norm the theta_m of Higham (2005) are derived for: it is cheap
    (O(n^2), no power iteration) and bounds every ``||A^k||_1 <= ||A||_1^k`` that the
    truncation-error bound needs.
    """
    n = a.shape[0]
    best = 0.0
    for j in range(n):
        col = 0.0
        for i in range(n):
            col += abs(a[i, j] * scale)
        if col > best:
            best = col
    return best


@_jit
def _fill_nan(out):
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.nan


@_jit
def _lu_solve_inplace(q, x, piv):
    """Solve q X = x in place: ``q`` is overwritten by its LU factors, ``x`` by X.

    Gaussian elimination with partial (row) pivoting, the elimination applied to all
    columns of the right-hand side as it proceeds (equivalent to forward substitution
    with the unit lower factor), then back substitution with the upper factor. Partial
    pivoting keeps the multipliers <= 1 in magnitude, which is what makes this backward
    stable in practice; q_m(A) is also well conditioned for ||A||_1 <= theta_13
    (kappa_1(q_13(A)) is bounded by a small constant, Higham 2005, Sec. 2), so no
    refinement or complete pivoting is needed. The row interchanges are applied eagerly;
    ``piv[k]`` records the row swapped with row k.

    Returns
    -------
    bool
        False if an exactly zero pivot was met (``x`` is then partially updated).
    """
    n = q.shape[0]
    for k in range(n):
        p = k
        pmax = abs(q[k, k])
        for i in range(k + 1, n):
            v = abs(q[i, k])
            if v > pmax:
                pmax = v
                p = i
        piv[k] = p
        # "not (pmax > 0)" also catches NaN, so the division below can never be by zero.
        if not (pmax > 0.0):
            return False
        if p != k:
            for j in range(n):
                t = q[k, j]
                q[k, j] = q[p, j]
                q[p, j] = t
            for j in range(n):
                t = x[k, j]
                x[k, j] = x[p, j]
                x[p, j] = t
        qkk = q[k, k]
        for i in range(k + 1, n):
            lik = q[i, k] / qkk
            q[i, k] = lik
            for j in range(k + 1, n):
                q[i, j] -= lik * q[k, j]
            for j in range(n):
                x[i, j] -= lik * x[k, j]
    for i in range(n - 1, -1, -1):
        for k in range(i + 1, n):
            uik = q[i, k]
            for j in range(n):
                x[i, j] -= uik * x[k, j]
        uii = q[i, i]
        for j in range(n):
            x[i, j] /= uii
    return True


@_jit_inline
def _shapes_ok(A, out, work, piv):
    """Whether ``A``, ``out``, ``work`` and ``piv`` fit together (see :func:`expm_into`)."""
    n = A.shape[0]
    return not (
        A.shape[1] != n
        or out.shape[0] != n
        or out.shape[1] != n
        or work.shape[0] < N_WORK
        or work.shape[1] != n
        or work.shape[2] != n
        or piv.shape[0] < n
    )


@_jit_inline
def _degree_and_scaling(A):
    """Padé degree ``m`` and number of squarings ``s`` for a finite ``A`` (Higham 2005),
    from its 1-norm. A finite matrix can still have a column sum that overflows; then
    measure ``2^-64 A`` and add the 64 back in log2."""
    norm1 = _norm1(A, 1.0)
    if math.isfinite(norm1):
        m = _pade_degree(norm1)
        s = _scaling_exponent(norm1) if m == 13 else 0
    else:
        m = 13
        shift = float(_NORM_SHIFT)
        scaled = _norm1(A, math.ldexp(1.0, -_NORM_SHIFT))
        s = math.ceil(math.log2(scaled) + shift - math.log2(THETA_13))
    return m, s


@_jit_inline
def _pade13(work):
    """U and V of the [13/13] Padé numerator of ``a = work[0]`` with the paper's even/odd
    split (only A^2, A^4, A^6 are formed: six products with the two below). Returns the
    views ``(u, v)`` of `work` that hold them."""
    n = work.shape[1]
    a = work[0]
    a2 = work[1]
    a4 = work[2]
    a6 = work[3]
    a8 = work[4]
    w5 = work[5]
    w6 = work[6]
    _matmul(a, a, a2)
    _matmul(a2, a2, a4)
    _matmul(a2, a4, a6)
    b = _B13
    # U = A [A6 (b13 A6 + b11 A4 + b9 A2) + b7 A6 + b5 A4 + b3 A2 + b1 I]
    tmp = a8
    for i in range(n):
        for j in range(n):
            tmp[i, j] = b[13] * a6[i, j] + b[11] * a4[i, j] + b[9] * a2[i, j]
    _matmul(a6, tmp, w5)
    for i in range(n):
        for j in range(n):
            w5[i, j] += b[7] * a6[i, j] + b[5] * a4[i, j] + b[3] * a2[i, j]
        w5[i, i] += b[1]
    u = a8
    _matmul(a, w5, u)
    # V = A6 (b12 A6 + b10 A4 + b8 A2) + b6 A6 + b4 A4 + b2 A2 + b0 I
    for i in range(n):
        for j in range(n):
            w5[i, j] = b[12] * a6[i, j] + b[10] * a4[i, j] + b[8] * a2[i, j]
    v = w6
    _matmul(a6, w5, v)
    for i in range(n):
        for j in range(n):
            v[i, j] += b[6] * a6[i, j] + b[4] * a4[i, j] + b[2] * a2[i, j]
        v[i, i] += b[0]
    return u, v


@_jit_inline
def _pade_low(m, work):
    """U and V of the [m/m] Padé numerator of ``a = work[0]`` for m in (3, 5, 7, 9):
    ``U = A (b_1 I + b_3 A^2 + ... + b_m A^(m-1))``, ``V = b_0 I + b_2 A^2 + ... +
    b_(m-1) A^(m-1)``, the even powers A^(2p) in ``work[p]``. Returns the views ``(u, v)``
    of `work` that hold them."""
    n = work.shape[1]
    a = work[0]
    if m == 3:
        b = _B3
    elif m == 5:
        b = _B5
    elif m == 7:
        b = _B7
    else:
        b = _B9
    half = (m - 1) // 2
    _matmul(a, a, work[1])
    if half >= 2:
        _matmul(work[1], work[1], work[2])
    if half >= 3:
        _matmul(work[1], work[2], work[3])
    if half >= 4:
        _matmul(work[2], work[2], work[4])
    upre = work[5]
    for i in range(n):
        for j in range(n):
            upre[i, j] = 0.0
        upre[i, i] = b[1]
    for p in range(1, half + 1):
        wp = work[p]
        c = b[2 * p + 1]
        for i in range(n):
            for j in range(n):
                upre[i, j] += c * wp[i, j]
    u = work[6]
    _matmul(a, upre, u)
    v = work[5]  # upre is no longer needed
    for i in range(n):
        for j in range(n):
            v[i, j] = 0.0
        v[i, i] = b[0]
    for p in range(1, half + 1):
        wp = work[p]
        c = b[2 * p]
        for i in range(n):
            for j in range(n):
                v[i, j] += c * wp[i, j]
    return u, v


@_jit_inline
def _solve_pade(u, v, out, piv):
    """``out = (V - U)^-1 (V + U)``: Q = V - U overwrites V (each element is read before
    it is written), the right-hand side V + U goes straight into out and becomes X.
    False on a zero pivot."""
    n = out.shape[0]
    for i in range(n):
        for j in range(n):
            vij = v[i, j]
            uij = u[i, j]
            out[i, j] = vij + uij
            v[i, j] = vij - uij
    return _lu_solve_inplace(v, out, piv)


@_jit_inline
def _square(out, sq, s):
    """``out = out^(2^s)`` by `s` squarings through the buffer `sq`."""
    n = out.shape[0]
    for _ in range(s):
        _matmul(out, out, sq)
        for i in range(n):
            for j in range(n):
                out[i, j] = sq[i, j]


@_jit
def expm_into(A, out, work, piv):
    """Write the matrix exponential of ``A`` into ``out`` without allocating.

    Scaling and squaring with a diagonal Padé approximant, Algorithm 2.3 of
    N. J. Higham, "The scaling and squaring method for the matrix exponential
    revisited", SIAM J. Matrix Anal. Appl. 26(4):1179-1193, 2005,
    doi:10.1137/04061101X:

    1. if ``||A||_1 <= theta_m`` for the smallest m in (3, 5, 7, 9), return r_m(A);
    2. otherwise set s = ceil(log2(||A||_1 / theta_13)), evaluate r_13(2^-s A) and
       square it s times.

    r_m = (V - U)^-1 (V + U) with U the odd and V the even part of the Padé numerator,
    evaluated with the paper's even/odd split (m = 13: only A^2, A^4, A^6 are formed,
    six products in all); the linear system is solved by LU with partial pivoting.

    Parameters
    ----------
    A : ndarray of float64, shape (n, n)
        Matrix to exponentiate; not modified. Any memory layout.
    out : ndarray of float64, shape (n, n)
        C-contiguous output, overwritten with ``expm(A)``. Must not alias ``A``,
        ``work`` or ``piv``.
    work : ndarray of float64, shape (K, n, n), K >= N_WORK (7)
        C-contiguous scratch, from :func:`expm_work`; contents are overwritten.
    piv : ndarray of int64, shape (m,), m >= n
        Scratch for the LU row pivots, from :func:`expm_work`.

    Returns
    -------
    int
        Status code, never raises:

        - 0 (``EXPM_OK``): success.
        - 1 (``EXPM_NONFINITE_INPUT``): ``A`` has a NaN or infinite entry; ``out``
          is filled with NaN.
        - 2 (``EXPM_SINGULAR``): zero pivot in the Padé denominator (not expected for
          finite input); ``out`` is filled with NaN.
        - 3 (``EXPM_NONFINITE_OUTPUT``): finite input but the result overflowed.
        - 4 (``EXPM_BAD_SHAPE``): inconsistent shapes; ``out`` is filled with NaN.

    Notes
    -----
    Cost: 2 (m=3), 3, 4, 5 (m=9) or 6 + s (m=13) n x n products, plus one LU solve
    with n right-hand sides. Deterministic: the same inputs give bit-identical outputs.
    """
    n = A.shape[0]
    if not _shapes_ok(A, out, work, piv):
        _fill_nan(out)
        return EXPM_BAD_SHAPE
    if not all_finite(A):
        _fill_nan(out)
        return EXPM_NONFINITE_INPUT
    m, s = _degree_and_scaling(A)
    # Scratch layout. W0: 2^-s A. W1..W4: A^2, A^4, A^6, A^8 (as far as needed; for
    # m = 13 W4 is a temporary). W5, W6: partial sums, U and V. After the solve W0 is
    # the squaring buffer. Multiplying by a power of two is exact (barring underflow of
    # tiny entries).
    a = work[0]
    scale = math.ldexp(1.0, -s)
    for i in range(n):
        for j in range(n):
            a[i, j] = A[i, j] * scale
    if m == 13:
        u, v = _pade13(work)
    else:
        u, v = _pade_low(m, work)
    if not _solve_pade(u, v, out, piv):
        _fill_nan(out)
        return EXPM_SINGULAR
    # Undo the scaling: exp(A) = r_13(2^-s A)^(2^s).
    _square(out, work[0], s)
    if not all_finite(out):
        return EXPM_NONFINITE_OUTPUT
    return EXPM_OK


@numba.njit(cache=True)
def expm(A):
    """Matrix exponential of ``A`` (allocating convenience wrapper of :func:`expm_into`).

    Higham (2005) scaling and squaring, doi:10.1137/04061101X; see :func:`expm_into`.

    Parameters
    ----------
    A : ndarray of float64, shape (n, n)
        Square matrix.

    Returns
    -------
    ndarray of float64, shape (n, n)
        ``expm(A)``. NaN-filled if ``A`` has a non-finite entry or is not square
        (this function never raises); may contain inf if the result overflows.
    """
    n = A.shape[0]
    work = np.empty((N_WORK, n, n), dtype=np.float64)
    piv = np.empty(n, dtype=np.int64)
    out = np.empty((n, n), dtype=np.float64)
    expm_into(A, out, work, piv)
    return out


@_jit
def propagator_into(M, b, h, Maug, Eaug, work, piv):
    """The exact propagator of ``dx/dt = M x + b r`` over a step `h` at constant `r`:
    ``Eaug = expm([[M h, b h], [0, 0]])``, whose blocks are ``phi = e^{M h}``
    (``Eaug[:N, :N]``) and ``g = int_0^h e^{M s} b ds`` (``Eaug[:N, N]``), so that
    ``x(h) = phi x(0) + g r`` (Van Loan 1978, doi:10.1109/TAC.1978.1101743). ``Maug``
    (N+1, N+1) is overwritten; returns :func:`expm_into`'s status (0: success)."""
    N = M.shape[0]
    for i in range(N):
        for j in range(N):
            Maug[i, j] = M[i, j] * h
        Maug[i, N] = b[i] * h
    for j in range(N + 1):
        Maug[N, j] = 0.0
    return expm_into(Maug, Eaug, work, piv)
