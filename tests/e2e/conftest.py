"""Fixtures of the end-to-end suite: a real ``dpsd serve`` subprocess per test module."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.process import DpsdProcess, start_dpsd


@pytest.fixture(scope="module")
def dpsd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpsdProcess]:
    """One dpsd per test module; its teardown checks that SIGTERM stops it cleanly."""
    base = tmp_path_factory.mktemp("dpsd")
    server = start_dpsd(base / "data", base / "serve.log")
    yield server
    server.stop_cleanly(signal.SIGTERM)


@pytest.fixture(scope="module")
def dpsd_info(dpsd_server: DpsdProcess) -> dict[str, Any]:
    """``dpsd info --json`` of the module's server."""
    return dpsd_server.info


@pytest.fixture
def launch_dpsd(tmp_path: Path) -> Iterator[Callable[..., DpsdProcess]]:
    """Start extra servers in a test (``launch(data_dir, *more_serve_args)``); any still
    running at the end must stop cleanly."""
    started: list[DpsdProcess] = []

    def launch(data_dir: Path, *extra_args: str) -> DpsdProcess:
        server = start_dpsd(data_dir, tmp_path / f"serve-{len(started)}.log", *extra_args)
        started.append(server)
        return server

    yield launch
    for server in started:
        if server.process.poll() is None:
            server.stop_cleanly(signal.SIGTERM)
