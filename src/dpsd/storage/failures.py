"""Why a database cannot be used, in words for the one line an operator reads: the server
refused or did not answer, the database or role does not exist, the file is no SQLite
database, the schema is from another dpsd. URLs are shown without their password."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from dpsd.storage.engine import async_url, sqlite_file
from dpsd.storage.migrate import UnknownSchema

_URL_FORMS = "write sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"


def redacted(database: str) -> str:
    """The URL with its password, if any, as ``***``."""
    try:
        return make_url(database).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(a database URL that cannot be read)"


def url_problem(database: str) -> str | None:
    """Why ``database`` is not a URL dpsd can open (without repeating it: it may hold a
    password), or None when it is one."""
    try:
        async_url(database)
    except ArgumentError:
        return f"the database URL cannot be read: {_URL_FORMS}"
    except ValueError as error:  # a port that is not a number, an unsupported database
        return f"the database URL cannot be read ({_first_line(error)}): {_URL_FORMS}"
    return None


def database_failure(error: BaseException, database: str) -> str | None:
    """What ``error``, raised while ``database`` was opened, says is wrong with it; None
    when the error is about something else."""
    if isinstance(error, DBAPIError):
        cause = error.orig or error
        return _first_line(cause) or type(cause).__name__
    if isinstance(error, ArgumentError):
        return f"not a database URL ({_first_line(error)})"
    if isinstance(error, UnknownSchema):
        return f"its schema is not one this dpsd knows, perhaps a newer one's ({error})"
    if isinstance(error, OSError) and error.filename is not None:
        file = sqlite_file(database)  # created before SQLite opens it: see create_engine
        return error.strerror if file is not None and error.filename == str(file) else None
    network = database.startswith("postgresql")
    if network and isinstance(error, OSError) and error.filename is None:
        # asyncpg lets the socket's own errors through: refused, unknown host, timeout
        if isinstance(error, TimeoutError):
            return "the server did not answer in time"
        return error.strerror or _first_line(error) or type(error).__name__
    return None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""
