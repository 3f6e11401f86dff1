"""Memory available to a run (shared by one-patient and cohort simulations).

Callers look :func:`available_memory` up on this module at call time
(``resources.available_memory()``), so a test can replace it in one place.
"""

from __future__ import annotations

import psutil


def available_memory() -> int:
    """Bytes of memory available to this process now (8 GiB if it cannot be read)."""
    try:
        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil is a dependency; stay safe anyway
        return 8 * 1024**3
