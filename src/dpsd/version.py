"""dpsd's version, read from the installed package's metadata: pyproject.toml's ``version``
is the one place it is written."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

UNKNOWN = "unknown"


def dpsd_version() -> str:
    """The installed version; ``unknown`` for a source tree that was never installed."""
    try:
        return version("dpsd")
    except PackageNotFoundError:
        return UNKNOWN
