"""The data dir and the secrets in it.

dpsd creates the data dir and its ``tls/`` folders owner-only (0700) and every file that
holds a secret owner-only (0600): the SQLite database with its WAL and shared-memory files
(every key of the store), the TLS private keys, ``store.json`` (a database URL may hold a
password). A file or folder that exists already keeps its mode: ``dpsd serve`` says which
are open to other users, and how to close them, but changes nothing (the operator may have
opened one on purpose, say for a backup user).
"""

from __future__ import annotations

import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dpsd.settings import store_file
from dpsd.tls_paths import KEY_SUFFIX, tls_files

PRIVATE_FOLDER = 0o700
PRIVATE_FILE = 0o600
_OTHERS = 0o077


class DataDirError(Exception):
    """The data dir cannot be created or written into."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def prepare_data_dir(path: Path) -> None:
    """Create the data dir owner-only unless it exists (its parents as the umask has them),
    and make sure files can be created in it."""
    if path.exists() and not path.is_dir():
        raise DataDirError(f"the data dir {path} is a file, not a folder")
    try:
        path.mkdir(mode=PRIVATE_FOLDER, parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise DataDirError(f"cannot write into the data dir {path}: {reason}") from error


def sqlite_companions(database: Path) -> tuple[Path, Path, Path]:
    """The database file and the WAL and shared-memory files SQLite keeps beside it."""
    return database, Path(f"{database}-wal"), Path(f"{database}-shm")


def _private_paths(data_dir: Path, database: Path | None) -> Iterator[tuple[Path, int]]:
    tls = tls_files(data_dir)
    for folder in (data_dir, tls.ca_key.parent, tls.hub_certificates):
        yield folder, PRIVATE_FOLDER
    secrets = [store_file(data_dir), tls.ca_key, tls.server_key]
    if tls.hub_certificates.is_dir():
        secrets.extend(sorted(tls.hub_certificates.glob(f"*{KEY_SUFFIX}.pem")))
    if database is not None:
        secrets.extend(sqlite_companions(database))
    for secret in secrets:
        yield secret, PRIVATE_FILE


def loose_permissions(data_dir: Path, database: Path | None) -> list[str]:
    """One line for each secret, or folder of secrets, that other users may open: what it
    is, its mode and the command that closes it. ``database``: a SQLite database file."""
    lines = []
    for path, private in _private_paths(data_dir, database):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:  # not there (yet): nothing to say
            continue
        if mode & _OTHERS:
            lines.append(
                f"{path} is open to other users (mode {mode:04o}; dpsd makes it "
                f"{private:04o}): chmod {private:o} {path}"
            )
    return lines
