"""Finding and parsing library files: a shipped name (``fanta2015_otto2021``) or a path to a
``.toml`` file, read once with :mod:`tomllib`; the file-reading seam of the inputs layer."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["did_you_mean", "is_path", "read_library_file"]


def read_library_file(name_or_path, folder: Path, available, what: str, error) -> tuple[Path, dict]:
    """Resolve a shipped name or a ``.toml`` path and parse it: ``(path, data)``.

    The one loader of every library folder (models, PD endpoints, populations, risk
    models): a bare name is always looked up as ``folder/NAME.toml``, whatever files the
    working directory holds; a path is a :class:`os.PathLike`, or text that contains a
    path separator or ends in ``.toml``. `available()` lists the names for the error
    message; `error` is the exception class raised (naming the file) for an unknown name,
    a missing file or invalid TOML.
    """
    import tomllib

    text = str(name_or_path)
    path = Path(text)
    if not is_path(name_or_path):
        path = Path(folder) / f"{text}.toml"
        if not path.exists():
            here = f" (for the file {text!r} here, write ./{text})" if _is_file(text) else ""
            names = available()
            raise error(
                f"unknown {what} {text!r}{did_you_mean(text, names)}: expected a path to a "
                ".toml file or one of "
                f"{', '.join(names) or '(none shipped)'}{here}"
            )
    if not path.is_file():
        raise error(f"{path}: {what} file not found (expected a .toml file)")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from exc
    return path, data


def did_you_mean(text: str, names) -> str:
    """`` (did you mean 'NAME'?)`` for the shipped name closest to a misspelled `text`, or "".

    Case is ignored (``Fanta2015_Otto2021``); closeness is :func:`difflib.get_close_matches`'
    ratio of at least 0.6, its default, so a name sharing little with `text` is not offered.
    """
    import difflib

    names = list(names)
    lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(str(text).lower(), list(lower), n=1)
    return f" (did you mean {lower[close[0]]!r}?)" if close else ""


def is_path(name_or_path) -> bool:
    """True for a file path, False for a bare library name such as ``fanta2015_otto2021``.

    A file in the working directory named like a shipped model must not replace it
    silently, so only an explicit path counts: a ``PathLike``, or text with a separator
    (``./mymodel``) or ending in ``.toml``.
    """
    if isinstance(name_or_path, os.PathLike):
        return True
    text = str(name_or_path)
    seps = {"/", os.sep, os.altsep} - {None}
    return any(sep in text for sep in seps) or text.lower().endswith(".toml")


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False
