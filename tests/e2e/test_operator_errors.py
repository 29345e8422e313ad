"""What an operator meets when something is wrong, through the real ``dpsd`` command: one
line on stderr and the exit status (1: it failed, 2: it was used wrongly), never a
traceback; and the files that hold secrets, private from the start, with a warning at start
for any opened since."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.process import DpsdProcess, run_dpsd

pytestmark = pytest.mark.e2e

SECRET = "s3cret-pw"
NO_LISTENERS = ("--https-port", "0", "--mqtt-port", "-1", "--amqp-port", "-1")


def failure_line(result: subprocess.CompletedProcess[str], status: int = 1) -> str:
    """The one ``error:`` line a failed command wrote, once its exit status is checked."""
    output = result.stdout + result.stderr
    assert result.returncode == status, f"exit status {result.returncode}:\n{output}"
    assert "Traceback" not in output, output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"not one line on stderr:\n{result.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port of 127.0.0.1 that refuses connections: bound here, never listening."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


def data_dir_args(data_dir: Path) -> tuple[str, ...]:
    return ("--data-dir", str(data_dir))


# --- the store --------------------------------------------------------------------------------


def test_an_unreachable_database_is_named_without_its_password_and_not_remembered(
    tmp_path: Path, refusing_port: int
) -> None:
    data_dir = tmp_path / "data"
    database = f"postgresql://nobody:{SECRET}@127.0.0.1:{refusing_port}/fleet"
    result = run_dpsd("serve", *data_dir_args(data_dir), "--database", database, *NO_LISTENERS)
    line = failure_line(result)
    assert line.startswith(
        f"error: cannot use the database postgresql://nobody:***@127.0.0.1:{refusing_port}/fleet: "
    ), line
    assert SECRET not in result.stdout + result.stderr
    # Not remembered: a later plain `dpsd info` uses the data dir's own SQLite store.
    assert not (data_dir / "store.json").exists()
    info = run_dpsd("info", "--json", *data_dir_args(data_dir))
    assert info.returncode == 0, info.stderr


def test_a_remembered_database_that_fails_says_where_it_is_remembered(
    tmp_path: Path, refusing_port: int
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = f"postgresql://nobody:{SECRET}@127.0.0.1:{refusing_port}/fleet"
    (data_dir / "store.json").write_text(json.dumps({"database": database}))
    for command in (("info",), ("hub", "list"), ("certificate", "list")):
        line = failure_line(run_dpsd(*command, *data_dir_args(data_dir)))
        assert "cannot use the database postgresql://nobody:***@" in line, line
        assert f"remembered in {data_dir / 'store.json'}" in line, line


@pytest.mark.parametrize(
    ("database", "words"),
    [
        ("postgresql://fleet@db.example:notaport/fleet", "the database URL cannot be read"),
        ("postgresql:/fleet", "write sqlite:///PATH or postgresql://USER"),
    ],
)
def test_a_database_url_that_cannot_be_read_is_a_usage_error(
    tmp_path: Path, database: str, words: str
) -> None:
    result = run_dpsd("serve", *data_dir_args(tmp_path / "data"), "--database", database)
    assert words in failure_line(result, status=2)


def test_a_file_that_is_no_sqlite_database(tmp_path: Path) -> None:
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("these are notes, not a database\n" * 200)
    database = f"sqlite:///{not_a_database}"
    line = failure_line(run_dpsd("info", *data_dir_args(tmp_path / "data"), "--database", database))
    assert line == f"error: cannot use the database {database}: file is not a database"
    missing = f"sqlite:///{tmp_path / 'no-such-folder' / 'dpsd.db'}"
    line = failure_line(run_dpsd("info", *data_dir_args(tmp_path / "data"), "--database", missing))
    assert line == f"error: cannot use the database {missing}: No such file or directory"


def test_a_store_a_newer_dpsd_migrated_is_refused_in_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert run_dpsd("info", *data_dir_args(data_dir)).returncode == 0
    with sqlite3.connect(data_dir / "dpsd.db") as store:
        store.execute("UPDATE alembic_version SET version_num = '9999'")
    for command in (("hub", "list"), ("serve", *NO_LISTENERS)):
        line = failure_line(run_dpsd(*command, *data_dir_args(data_dir)))
        assert line.startswith(
            f"error: cannot use the database sqlite:///{data_dir / 'dpsd.db'}: its schema "
            "is not one this dpsd knows, perhaps a newer one's"
        ), line
        assert "9999" in line


@pytest.mark.parametrize(
    "command", [("serve", *NO_LISTENERS), ("info",), ("hub", "list"), ("certificate", "list")]
)
def test_a_data_dir_that_cannot_be_written(tmp_path: Path, command: tuple[str, ...]) -> None:
    line = failure_line(run_dpsd(*command, *data_dir_args(Path("/proc/dpsd-data"))))
    assert (
        line == "error: cannot write into the data dir /proc/dpsd-data: No such file or directory"
    )
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    line = failure_line(run_dpsd(*command, *data_dir_args(a_file)))
    assert line == f"error: the data dir {a_file} is a file, not a folder"


def test_tls_files_that_cannot_be_read(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert run_dpsd("info", *data_dir_args(data_dir)).returncode == 0
    (data_dir / "tls" / "ca.pem").write_text("not a certificate\n")
    line = failure_line(run_dpsd("info", *data_dir_args(data_dir)))
    assert line.startswith(f"error: the TLS files in {data_dir / 'tls'} cannot be read ("), line


def test_a_hub_connection_string_says_which_part_is_wrong(tmp_path: Path) -> None:
    result = run_dpsd(
        "hub", "add", "hub1.example.net", "--connection-string", "garbage", *data_dir_args(tmp_path)
    )
    line = failure_line(result)
    assert "part 'garbage' is not NAME=VALUE" in line
    assert "HostName=HUB;SharedAccessKeyName=POLICY;SharedAccessKey=KEY" in line


# --- client commands ------------------------------------------------------------------------


def test_a_bad_connection_string_says_which_part_and_what_one_looks_like() -> None:
    for connection_string, words in (
        ("garbage", "part 'garbage' is not NAME=VALUE"),
        ("HostName=localhost;SharedAccessKeyName=owner", "lacks SharedAccessKey"),
    ):
        result = run_dpsd("enrollment", "list", "--connection-string", connection_string)
        line = failure_line(result, status=2)
        assert words in line, line
        assert "a connection string is HostName=HOST[:PORT];SharedAccessKeyName=POLICY;" in line


def test_a_ca_file_that_is_no_pem_certificate(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not a certificate\n")
    connection_string = "HostName=localhost;SharedAccessKeyName=owner;SharedAccessKey=a2V5"
    result = run_dpsd(
        "enrollment", "list", "--connection-string", connection_string, "--ca-file", str(ca_file)
    )
    assert f"--ca-file {ca_file} holds no PEM certificate" in failure_line(result, status=2)


def test_an_untrusted_certificate_hints_at_the_ca_file(dpsd_info: dict[str, Any]) -> None:
    result = run_dpsd(
        "enrollment", "list", "--connection-string", dpsd_info["serviceConnectionString"]
    )
    line = failure_line(result)
    assert line.startswith("error: the service's TLS certificate is not trusted ("), line
    assert "pass --ca-file with the CA certificate that signed it" in line


def test_a_certificate_for_another_name_says_so(dpsd_info: dict[str, Any]) -> None:
    """0.0.0.0 reaches the server's 127.0.0.1 listener on Linux, but no certificate names it."""
    https_port = dpsd_info["endpoints"]["https"].rsplit(":", 1)[1]
    connection_string = dpsd_info["serviceConnectionString"].replace(
        f"localhost:{https_port}", f"0.0.0.0:{https_port}"
    )
    ca_file = ("--ca-file", dpsd_info["caCertificatePath"])
    result = run_dpsd("enrollment", "list", "--connection-string", connection_string, *ca_file)
    line = failure_line(result)
    assert line.startswith("error: the service's TLS certificate is not for the HostName"), line
    assert "dpsd serve --tls-name" in line


def test_an_unreachable_service(refusing_port: int) -> None:
    connection_string = (
        f"HostName=127.0.0.1:{refusing_port};SharedAccessKeyName=owner;SharedAccessKey=a2V5"
    )
    result = run_dpsd("enrollment", "list", "--connection-string", connection_string)
    assert failure_line(result).startswith("error: cannot reach the service: ")


# --- files that hold secrets ------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_private_and_ones_opened_since_are_said_at_start(
    tmp_path: Path, launch_dpsd: Callable[..., DpsdProcess]
) -> None:
    data_dir = tmp_path / "data"
    database = tmp_path / "store" / "fleet.db"  # a SQLite store of its own, elsewhere
    database.parent.mkdir()
    first = launch_dpsd(data_dir, "--database", f"sqlite:///{database}")
    linked = run_dpsd("hub", "add", "hub1.dpsd.local", "--builtin", *data_dir_args(data_dir))
    assert linked.returncode == 0, linked.stderr
    tls = data_dir / "tls"
    private = {
        data_dir: 0o700,
        tls: 0o700,
        tls / "hubs": 0o700,
        data_dir / "store.json": 0o600,
        tls / "ca-key.pem": 0o600,
        tls / "server-key.pem": 0o600,
        tls / "hubs" / "hub1.dpsd.local-key.pem": 0o600,
        database: 0o600,
        database.with_name("fleet.db-wal"): 0o600,  # SQLite gives them the database's mode
        database.with_name("fleet.db-shm"): 0o600,
    }
    assert {path: mode(path) for path in private} == private
    assert "warning:" not in first.output()
    first.stop_cleanly(signal.SIGTERM)

    opened = (data_dir, database, tls / "ca-key.pem")
    for path in opened:
        path.chmod(mode(path) | 0o044)
    second = launch_dpsd(data_dir)  # the remembered store
    warnings = [line for line in second.output().splitlines() if line.startswith("warning:")]
    # Folders first, then files; the WAL and shared-memory files SQLite made anew take the
    # database's mode, and are said too.
    assert warnings == [
        f"warning: {path} is open to other users (mode {mode(path):04o}; dpsd makes it "
        f"{wanted:04o}): chmod {wanted:o} {path}"
        for path, wanted in private.items()
        if path.exists() and mode(path) & 0o077
    ]
    assert all(any(str(path) in line for line in warnings) for path in opened)
    assert all(mode(path) & 0o044 for path in opened)  # said, not changed
