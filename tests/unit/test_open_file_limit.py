"""dpsd serve raises its soft RLIMIT_NOFILE for 10,000 device connections, as far as the hard
limit allows (checked in a fresh interpreter: the limit is the process's)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

from dpsd.server import OPEN_FILES_WANTED

PROBE = """
import json, resource, logging
from dpsd.server import raise_open_file_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, {hard}))
logging.basicConfig(level=logging.WARNING, format="%(message)s")
raise_open_file_limit()
print(json.dumps(resource.getrlimit(resource.RLIMIT_NOFILE)))
"""


def probe(hard: int) -> tuple[tuple[int, int], str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(hard=hard)],
        capture_output=True,
        text=True,
        check=True,
    )
    soft_after, hard_after = json.loads(result.stdout)
    return (soft_after, hard_after), result.stderr


def test_the_soft_limit_rises_to_what_the_connections_need() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limits, warning = probe(hard)
    if hard == resource.RLIM_INFINITY or hard >= OPEN_FILES_WANTED:
        assert limits == (OPEN_FILES_WANTED, hard)
        assert warning == ""
    else:
        assert limits == (hard, hard)
        assert "raise it to" in warning


def test_a_low_hard_limit_is_reached_and_reported() -> None:
    limits, warning = probe(512)
    assert limits == (512, 512)
    assert "may open only 512 files" in warning
    assert f"raise it to {OPEN_FILES_WANTED}" in warning
