"""numba's on-disk cache of the engine, invalidated by any change of the engine.

numba keeps a cached function's machine code with a stamp of the function's own file
(its time and size) and reloads it while that file is unchanged. But a cached engine
function holds the machine code of every engine function it calls, from other files too
(``dopri5.solve_linear_dopri5_into`` holds ``segments.event_boundary`` and
``dosing.apply``; ``expm.expm`` holds ``finite.all_finite``): after an edit, a ``git
pull`` or an editable install's update that changes a callee's file only, numba would
run the callee's old code. Importing this module (every engine module that compiles with
``cache=True`` does, before its first decorator) puts in front of numba's cache locators
ones that apply to the files of ``pkpd/engine`` only and stamp each with the digest of
the whole engine (:func:`pkpd.cache.engine_digest`, computed once per process), so any
change of any engine file recompiles every engine function. Elsewhere numba's own
locators apply unchanged. ``tests/test_kernel_compile.py`` checks both that an edit of a
callee's file recompiles its caller and that every such module imports this one.

The locator classes are numba's (``numba.core.caching``; renamed without their leading
underscore in numba 0.60); the stamp may be any picklable object.
"""

from __future__ import annotations

import os

from numba.core import caching

from pkpd.cache import engine_digest

_ENGINE = os.path.dirname(os.path.abspath(__file__))
_DIGEST: list[str] = []


def _name(new: str):
    """A numba caching class by its current name, or its name before numba 0.60."""
    return getattr(caching, new, None) or getattr(caching, "_" + new)


class _EngineStamp:
    """Mixin: apply to the engine's files only, stamped with the engine's digest."""

    @classmethod
    def from_function(cls, py_func, py_file):
        if not os.path.abspath(py_file).startswith(_ENGINE + os.sep):
            return None
        return super().from_function(py_func, py_file)

    def get_source_stamp(self):
        if not _DIGEST:
            _DIGEST.append(engine_digest())
        return ("pkpd-engine", _DIGEST[0])


class _EngineUserProvided(_EngineStamp, _name("UserProvidedCacheLocator")):
    """``NUMBA_CACHE_DIR`` set: numba's files there."""


class _EngineInTree(_EngineStamp, _name("InTreeCacheLocator")):
    """numba's files in ``__pycache__`` beside the sources."""


class _EngineUserWide(_EngineStamp, _name("UserWideCacheLocator")):
    """Sources in a read-only folder: numba's files in the user's cache folder."""


LOCATORS = (_EngineUserProvided, _EngineInTree, _EngineUserWide)

_classes = _name("CacheImpl")._locator_classes
if LOCATORS[0] not in _classes:
    _classes[:0] = LOCATORS  # numba's order: a user-provided folder, in-tree, user-wide
