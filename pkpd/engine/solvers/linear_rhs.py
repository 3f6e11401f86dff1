"""Right-hand side and Jacobian of a linear model ``dy/dt = M y + b u`` for the ODE solvers.

Linear models (:meth:`pkpd.inputs.model.ModelSpec.system`) can run through Dopri5 and Rodas4 as
well as through the exact solver: the solvers take a right-hand side
``rhs(t, y, u, p, dy)`` with a flat parameter vector ``p``, here the system matrix and
the input map packed by :func:`pack` (``M`` row-major, then ``b``).
"""

from __future__ import annotations

import numba
import numpy as np

from pkpd.engine import _stamp  # noqa: F401  (numba's cache: pkpd/engine/_stamp.py)

# error_model="numpy": a division by zero gives inf/NaN (caught by the status checks)
# instead of raising; raising paths would also keep the kernels out of the disk cache.
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


def pack(M: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Flat parameter vector ``[M.ravel(), b]`` of :func:`linear_rhs` (float64)."""
    M = np.asarray(M, dtype=np.float64)
    return np.concatenate([M.ravel(), np.asarray(b, dtype=np.float64).ravel()])


@_jit
def linear_rhs(t, y, u, p, dy):
    """``dy = M y + b u`` with ``p = pack(M, b)``."""
    n = y.shape[0]
    nn = n * n
    for i in range(n):
        s = p[nn + i] * u
        row = i * n
        for j in range(n):
            s += p[row + j] * y[j]
        dy[i] = s


@_jit
def linear_jac(t, y, u, p, J):
    """Exact Jacobian ``J = M`` of :func:`linear_rhs`."""
    n = y.shape[0]
    for i in range(n):
        for j in range(n):
            J[i, j] = p[i * n + j]
