"""Numba kernels: pure functions of arrays that never raise and report status codes."""

#: One message table for every solver status code (see STYLE.md, "Status codes").
STATUS_MESSAGES = {
    0: "success",
    1: "non-finite value in the state or the matrix exponential",
    2: "output times are not sorted or start before the initial time",
}
