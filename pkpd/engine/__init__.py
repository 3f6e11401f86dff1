"""Kernels: the numba-compiled solvers and the per-patient and cohort loops.

Plain arrays and scalars only; nothing here reads a file or builds a Dataset."""
