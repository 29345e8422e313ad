"""dpsd.client exports exactly its public names; the modules behind them stay private."""

from __future__ import annotations

import types

import dpsd.client


def test_exported_members() -> None:
    public = sorted(name for name in vars(dpsd.client) if not name.startswith("_"))
    assert dpsd.client.__all__ == public


def test_the_modules_are_private() -> None:
    modules = [
        name for name, value in vars(dpsd.client).items() if isinstance(value, types.ModuleType)
    ]
    assert modules
    assert all(name.startswith("_") for name in modules)
