"""dpsd: a self-hostable Azure IoT Hub Device Provisioning Service."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """``dpsd.__version__``, read from the package metadata only when asked for."""
    if name == "__version__":
        from dpsd.version import dpsd_version

        return dpsd_version()
    raise AttributeError(f"module 'dpsd' has no attribute {name!r}")
