"""The settings object refuses values dpsd cannot serve with."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpsd.settings import Settings


@pytest.mark.parametrize("field", ["webhook_timeout", "hub_timeout"])
@pytest.mark.parametrize("seconds", [0.0, -1.0, 121.0])
def test_timeouts_out_of_range_are_refused(field: str, seconds: float, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timeout must be"):
        Settings(data_dir=tmp_path, **{field: seconds})  # type: ignore[arg-type]


def test_timeouts_in_range_are_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, webhook_timeout=2.5, hub_timeout=30)
    assert (settings.webhook_timeout, settings.hub_timeout) == (2.5, 30)
