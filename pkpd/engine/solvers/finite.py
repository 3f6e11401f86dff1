"""Finiteness checks shared by the solvers and the kernels (one definition each).

A NaN or an infinity in a state, a matrix or an evaluated output is how every failure of a
solve shows up (an overflow, a model that divides by zero, a log of a negative number); the
solvers and kernels check with these functions and return a status instead of raising.
"""

from __future__ import annotations

import math

import numba

from pkpd.engine import _stamp  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


@_jit
def vector_finite(v):
    """Whether every entry of the vector `v` is finite."""
    for j in range(v.shape[0]):
        if not math.isfinite(v[j]):
            return False
    return True


@_jit
def all_finite(a):
    """Whether every entry of the matrix `a` is finite."""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            if not math.isfinite(a[i, j]):
                return False
    return True
