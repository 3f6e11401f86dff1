"""The installed version, for the face (``pkpd.__version__``) and for result metadata.

A base module: the layers below the face record the version without importing the package
face (which imports every layer)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ketamine-pkpd")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"
