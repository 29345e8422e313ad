"""``--workers``: a number, or ``auto``."""

from __future__ import annotations

import os

import pytest
import typer

from dpsd.cli.options import worker_count


def test_auto_is_the_number_of_cores_dpsd_may_run_on() -> None:
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count(" AUTO ") == len(os.sched_getaffinity(0))


def test_a_number_is_taken_as_it_is() -> None:
    assert worker_count("3") == 3


@pytest.mark.parametrize("text", ["", "two", "1.5"])
def test_anything_else_is_a_usage_error(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="workers must be a number or auto"):
        worker_count(text)
