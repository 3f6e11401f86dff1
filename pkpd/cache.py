"""The on-disk code cache: generated modules and numba's compiled code.

Generated Python modules (``[ode]`` models in ``ode/``, specialised cohort kernels in
``kernels/``) are written to ``$PKPD_CACHE_DIR`` (default ``~/.cache/ketamine-pkpd``) and
imported from there; numba keeps their machine code next to them (``__pycache__``), and
its index files are pickles that are loaded before anything can check their content. The
file names are hashes that anyone can predict from a model's text.

Trust model: the cache is code that runs as you, trusted like ``site-packages``; whoever
can write into it can run code as you. So, as pip does for its cache and ssh for
``~/.ssh``, the cache folder, its subfolders and the files loaded from them must be owned
by the current user and not writable by group or others; otherwise nothing is loaded and
:class:`~pkpd.errors.CacheError` says which path and why. Folders are created with mode
0700. (With ``NUMBA_CACHE_DIR`` set, numba's files live there: that folder is checked the
same way.) The checks use POSIX ownership and mode bits; on Windows they are skipped.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from pkpd.errors import CacheError

__all__ = [
    "cache_root",
    "check_numba_cache",
    "check_private_file",
    "engine_digest",
    "private_folder",
]


def cache_root() -> Path:
    """``$PKPD_CACHE_DIR``, or ``~/.cache/ketamine-pkpd``."""
    base = os.environ.get("PKPD_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "ketamine-pkpd"


def engine_digest(folder: Path | None = None) -> str:
    """SHA-256 of every Python source of the simulation engine (`folder`, default
    ``pkpd/engine``, recursively: paths and contents).

    The generated modules (a kernel copy, an ``[ode]`` model's module) call into the engine
    and numba's cache of them holds the machine code of what they call; but numba
    invalidates that cache by the generated file's own time stamp only. Their file names
    therefore include this digest, so that any change of the engine (an edit, a package
    upgrade) gives new modules, compiled anew, rather than old machine code.
    ``tests/test_kernel_compile.py`` checks that everything they import lies in the engine.
    """
    root = Path(__file__).parent / "engine" if folder is None else Path(folder)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def _refuse(path, why: str) -> CacheError:
    return CacheError(
        f"code cache {path}: {why}; it holds code that runs as you, so it must be owned by "
        "you and writable only by you (chmod go-w, or set PKPD_CACHE_DIR to a private folder)"
    )


#: Ownership and mode bits are POSIX; elsewhere (Windows ACLs) nothing is checked.
_POSIX = hasattr(os, "getuid")


def _check_owner_mode(path, st) -> None:
    if not _POSIX:
        return
    if st.st_uid != os.getuid():
        raise _refuse(path, f"owned by user id {st.st_uid}, not by you (user id {os.getuid()})")
    if st.st_mode & 0o022:
        raise _refuse(path, f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def check_private_folder(path: Path) -> None:
    """Raise :class:`CacheError` unless `path` is a folder owned by the current user and not
    writable by group or others (a symbolic link to such a folder is accepted)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _refuse(path, f"cannot be read ({exc.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "not a folder")
    _check_owner_mode(path, st)


def private_folder(*parts: str) -> Path:
    """``cache_root() / parts``, created with mode 0700 where missing, each level checked
    with :func:`check_private_folder`; OSError if a folder cannot be created."""
    root = cache_root()
    for path in [root, *(root.joinpath(*parts[: i + 1]) for i in range(len(parts)))]:
        # Missing parents of the root (~/.cache) get the default mode, as for mkdir -p.
        # An OSError (cannot create) is the caller's to report.
        os.makedirs(path, mode=0o700, exist_ok=True)
        check_private_folder(path)
    return root.joinpath(*parts)


def check_private_file(path: Path) -> None:
    """Raise :class:`CacheError` unless `path` is a regular file (not a link) owned by the
    current user and not writable by group or others. A group- or other-writable file in a
    folder that group and others cannot enter (mode 0700: numba writes its files with the
    umask, 0664 under umask 002) cannot be written by them and is accepted."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, "not a regular file")
    if not _POSIX:
        return
    if st.st_uid != os.getuid():
        raise _refuse(path, f"owned by user id {st.st_uid}, not by you (user id {os.getuid()})")
    if st.st_mode & 0o022 and os.stat(path.parent).st_mode & 0o011:
        raise _refuse(path, f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def check_numba_cache(module, stem: str) -> None:
    """Check numba's cache of a generated `module` (file name `stem`) before anything in
    it is loaded: the folder numba chose and every file of `stem` in it.

    numba reads its index only when a function is first called, so this runs between the
    import of the module and its first use.
    """
    paths = {
        Path(obj._cache._cache_path)
        for obj in vars(module).values()
        # The module's own functions (imported ones are cached with the package).
        if getattr(getattr(obj, "py_func", None), "__module__", None) == module.__name__
        and getattr(getattr(obj, "_cache", None), "_cache_path", None)
    }
    # numba's default (in-tree) folder too, should its private attributes change.
    in_tree = Path(module.__file__).parent / "__pycache__"
    if in_tree.exists():
        paths.add(in_tree)
    for folder in paths:
        check_private_folder(folder)
        for entry in sorted(os.listdir(folder)):
            if entry.startswith(stem + "."):
                check_private_file(folder / entry)


def compile_once(dispatcher, lock_path: Path):
    """`dispatcher`, wrapped so that a call needing a signature not yet in memory compiles
    (or loads) it while holding an exclusive lock on `lock_path`.

    Processes that need the same kernel at the same time (test workers, Dask worker
    processes, two commands) then compile it once: the others wait, and numba's
    ``compile`` finds it in its disk cache. A call whose signature is already in memory
    takes no lock. Without POSIX file locks each process compiles for itself, as numba
    alone does.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return dispatcher

    def call(*args):
        sig = tuple(dispatcher.typeof_pyval(a) for a in args)
        if sig not in dispatcher.overloads:
            with open(lock_path, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    dispatcher.compile(sig)
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        return dispatcher(*args)

    call.dispatcher = dispatcher
    call.__doc__ = dispatcher.__doc__
    return call
