"""Deferred imports, so that ``pkpd --help`` and ``import pkpd`` do not load the scientific
stack (numba, xarray, scipy, pandas, matplotlib) before a command needs it.

:func:`lazy_module` stands for a module that is imported on first attribute access; every
access looks the attribute up in the real module, so a monkeypatched function is seen.
:func:`when_imported` runs a callback once a module has been imported (at once if it
already is): ``import pkpd`` registers the ``ds.pkpd`` accessor this way, when xarray is
first imported, rather than importing xarray itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Callable


class _LazyModule:
    """A module imported on the first attribute access (see :func:`lazy_module`)."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy_module(name: str) -> _LazyModule:
    """A stand-in for module `name`, imported on the first attribute access."""
    return _LazyModule(name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of one module so that callbacks run after it is executed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.callbacks: list[Callable[[], None]] = []

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        exec_module = loader.exec_module

        def exec_then_call(module):
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _finders.pop(self.name, None)
            for callback in self.callbacks:
                callback()

        loader.exec_module = exec_then_call
        return spec


_finders: dict[str, _PostImportFinder] = {}


def when_imported(name: str, callback: Callable[[], None]) -> None:
    """Call `callback` once module `name` is imported: now if it already is."""
    if name in sys.modules:
        callback()
        return
    finder = _finders.get(name)
    if finder is None:
        finder = _finders[name] = _PostImportFinder(name)
        sys.meta_path.insert(0, finder)
    finder.callbacks.append(callback)
