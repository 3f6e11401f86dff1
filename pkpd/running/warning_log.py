"""The warnings of one run, kept with its result.

A run (:func:`pkpd.simulate`, :func:`pkpd.simulate_cohort`, ``compare``, ``design``) records
the warnings raised while it builds its dataset in ``attrs["warnings"]``, a JSON list of
``{"category", "message", "count"}`` (identical messages counted once), so that a report
or a later reader sees what the command line printed. The package's own warnings are
recorded whatever the warning filters say (``--quiet`` and ``PYTHONWARNINGS=ignore`` silence
the terminal, not the record); other warnings are recorded when the filters let them through.
On leaving the run each distinct warning is raised again, once, through the caller's filters,
at its original file and line: it is shown, ignored or turned into an error as it would have
been, only after the run instead of during it.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from pkpd.errors import PkpdWarning

__all__ = ["ATTR", "WarningLog", "read_warnings", "record_warnings", "with_count"]

#: The dataset attribute holding the run's warnings (a JSON list).
ATTR = "warnings"


class WarningLog:
    """The warnings recorded so far in a :func:`record_warnings` block, merged by message."""

    def __init__(self, records: list[warnings.WarningMessage]):
        self._records = records

    def merged(self) -> list[tuple[type[Warning], str, int]]:
        """``(category, message, count)`` per distinct warning, in order of first occurrence;
        a warning this module raised again once for several (``pkpd_count``) counts as
        those several, under its message without the "(raised N times)"."""
        out: dict[tuple[type[Warning], str], int] = {}
        for r in self._records:
            key = (r.category, getattr(r.message, "pkpd_message", str(r.message)))
            out[key] = out.get(key, 0) + int(getattr(r.message, "pkpd_count", 1))
        return [(c, text, n) for (c, text), n in out.items()]

    def entries(self) -> list[dict]:
        """``[{"category", "message", "count"}]`` in order of first occurrence."""
        out: dict[tuple[str, str], dict] = {}
        for c, text, n in self.merged():
            key = (c.__name__, text)
            if key in out:
                out[key]["count"] += n
            else:
                out[key] = {"category": c.__name__, "message": text, "count": n}
        return list(out.values())

    def attr(self) -> str:
        """The JSON text stored in ``attrs["warnings"]`` (``"[]"``: the run raised none)."""
        return json.dumps(self.entries())


def with_count(text: str, n: int) -> str:
    """A warning's message with the number of times it was raised, when more than once."""
    return text if n == 1 else f"{text} (raised {n} times)"


def read_warnings(attrs) -> list[dict] | None:
    """The recorded warnings of a dataset's `attrs`; None when the result records none
    (written before warnings were recorded)."""
    raw = attrs.get(ATTR)
    if raw is None:
        return None
    try:
        items = json.loads(str(raw))
    except ValueError:
        return [{"category": "", "message": line, "count": 1} for line in str(raw).splitlines()]
    return [dict(x) for x in items if isinstance(x, dict) and "message" in x]


@contextmanager
def record_warnings() -> Iterator[WarningLog]:
    """Record the warnings raised inside the block, then raise each distinct one again once.

    Adds no stack frame to the code inside the block, so the ``stacklevel`` of its warnings
    still points where it did. Blocks nest: an inner block's warnings reach the outer one
    with their counts.
    """
    catcher = warnings.catch_warnings(record=True)
    records = catcher.__enter__()
    try:
        # Every occurrence of the package's warnings, whatever the filters (the counts need
        # them all; the caller's filters apply when they are raised again below).
        warnings.filterwarnings("always", category=PkpdWarning)
        yield WarningLog(records)
    except BaseException:
        catcher.__exit__(None, None, None)
        # The run's error is the news: show its warnings, never let one replace the error.
        try:
            _emit(records)
        except Warning:
            pass
        raise
    catcher.__exit__(None, None, None)
    _emit(records)


def _emit(records: list[warnings.WarningMessage]) -> None:
    first: dict[tuple[str, str], warnings.WarningMessage] = {}
    for r in records:
        first.setdefault(
            (r.category.__name__, getattr(r.message, "pkpd_message", str(r.message))), r
        )
    for e in WarningLog(records).entries():
        r = first[(e["category"], e["message"])]
        text, n = e["message"], e["count"]
        msg = r.message
        try:
            msg = r.category(with_count(text, n))
            msg.pkpd_message, msg.pkpd_count = text, n
        except Exception:  # a warning class with another constructor: raise it as it was
            pass
        warnings.warn_explicit(
            msg, r.category, r.filename, r.lineno, module=_module_of(r.filename), registry=None
        )


def _module_of(filename: str) -> str | None:
    """The name of the imported module defined in `filename` (what a warning's ``module``
    filter is matched against), or None (the file name is used)."""
    for name, mod in list(sys.modules.items()):
        if getattr(mod, "__file__", None) == filename:
            return name
    return None
