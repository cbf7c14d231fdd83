"""``aioproc.__version__``: the version of the installed distribution."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]


def _installed_version() -> str:
    try:
        return version("aioproc")
    except PackageNotFoundError:  # a plain checkout on sys.path, never installed
        return "0+unknown"


__version__ = _installed_version()
"""The installed version of aioproc, or ``"0+unknown"`` when it is not installed."""
