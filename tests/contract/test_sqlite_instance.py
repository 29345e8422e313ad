"""The standard-library reader of a SQLite store's identity (what the client commands use
to sign their requests to the local dpsd) reads what the SQLAlchemy repository wrote."""

from __future__ import annotations

import base64
import os
import sqlite3
from pathlib import Path

import pytest

from dpsd.domain.sas import ALL_RIGHTS, AccessRights, SharedAccessPolicy
from dpsd.storage.engine import create_engine
from dpsd.storage.migrate import migrate
from dpsd.storage.sql import SqlInstanceRepository
from dpsd.storage.sqlite_instance import NotReadHere, plain_sqlite_file, read_sqlite_instance


def _policy(name: str, rights: AccessRights) -> SharedAccessPolicy:
    key = base64.b64encode(os.urandom(32)).decode()
    other = base64.b64encode(os.urandom(32)).decode()
    return SharedAccessPolicy(name=name, primary_key=key, secondary_key=other, rights=rights)


async def test_it_reads_what_the_repository_wrote(tmp_path: Path) -> None:
    file = tmp_path / "dpsd.db"
    engine = create_engine(f"sqlite:///{file}")
    try:
        await migrate(engine)
        written = [
            _policy("owner", ALL_RIGHTS),
            _policy("reader", AccessRights.ENROLLMENT_READ | AccessRights.REGISTRATION_STATUS_READ),
        ]
        expected = await SqlInstanceRepository(engine).ensure("0ne0000ABCD", written)
        read = read_sqlite_instance(file)  # while the engine holds the file open
    finally:
        await engine.dispose()
    assert read[0] == expected[0] == "0ne0000ABCD"
    assert sorted(read[1], key=lambda p: p.name) == sorted(expected[1], key=lambda p: p.name)


def test_a_missing_file_is_not_read_here_and_not_created(tmp_path: Path) -> None:
    file = tmp_path / "absent.db"
    with pytest.raises(NotReadHere):
        read_sqlite_instance(file)
    assert not file.exists()


def test_a_store_never_initialised_is_not_read_here(tmp_path: Path) -> None:
    file = tmp_path / "other.db"
    with sqlite3.connect(file) as connection:
        connection.execute("CREATE TABLE unrelated (x)")
    with pytest.raises(NotReadHere):
        read_sqlite_instance(file)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////srv/dpsd/dpsd.db", Path("/srv/dpsd/dpsd.db")),
        ("sqlite:///relative.db", Path("relative.db").resolve()),
        ("sqlite:///file:dpsd.db?mode=ro&uri=true", None),
        ("sqlite:////srv/dpsd.db?timeout=5", None),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("postgresql://dpsd@db/dpsd", None),
    ],
)
def test_only_plain_sqlite_file_urls_are_read_here(url: str, expected: Path | None) -> None:
    assert plain_sqlite_file(url) == expected
