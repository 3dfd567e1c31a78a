"""Opening the store: which database, its schema brought up to date, errors as one clear line.

How it works: the URL is `--db URL`, else the environment variable FW_DB, else a SQLite file keyed
by the network namespace (`/var/lib/fw/fw-<inode of /proc/self/ns/net>.db`), so daemons in
different namespaces never share one by accident. A plain path stands for a SQLite file. `Store`
creates the SQLAlchemy engine lazily; on first use it runs Alembic's `upgrade head` (the
migrations live in fw/store/migrations) unless the database is already at head. SQLite runs in
WAL mode with a busy timeout, so `fw log` reads while the daemon writes.

Every database failure (unreachable server, corrupt file, unknown driver, a schema newer than
this program) becomes one `StoreError` whose message names the database and the cause in one
line; the CLI prints it and exits 1. Sessions are opened by the caller (`with store.session() as
s:`), committed when the block ends, rolled back on an exception; functions that use data take
the session as their first argument.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

DEFAULT_DIR = Path("/var/lib/fw")
STATE_DIR_VAR = "FW_STATE_DIR"  # another folder for the database and snapshots (tests, packaging)


def state_dir() -> Path:
    """Where the default database and the snapshots live: $FW_STATE_DIR, else /var/lib/fw."""
    return Path(os.environ.get(STATE_DIR_VAR) or DEFAULT_DIR)
ENV_VAR = "FW_DB"
MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_MS = 5000
CONNECT_TIMEOUT = 5  # seconds, for servers (PostgreSQL)


class StoreError(Exception):
    """The store cannot be used: one line, for the operator. `exit_code` per SPEC (1 runtime)."""

    exit_code = 1


class NotFound(StoreError):
    """A revision the user named is not in the store (bad usage: exit 2)."""

    exit_code = 2


def netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def default_url() -> str:
    return f"sqlite:///{state_dir() / f'fw-{netns_inode()}.db'}"


def resolve_url(url: str | None = None) -> str:
    """`url` (--db), else $FW_DB, else the namespace's default; a plain path is a SQLite file."""
    url = url or os.environ.get(ENV_VAR) or default_url()
    if "://" not in url:
        url = f"sqlite:///{Path(url).absolute()}"
    return url


def label(url: str) -> str:
    """The URL as it may be shown: without a password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return url


def explain(error: BaseException) -> str:
    """One line saying what went wrong, from a SQLAlchemy/DBAPI/OS error."""
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip() or type(cause).__name__
    return text.splitlines()[0].strip().rstrip(".:")


class Store:
    """One database. Cheap to create; connects and migrates on first use."""

    def __init__(self, url: str | None = None):
        self.url = resolve_url(url)
        self.label = label(self.url)
        self._engine: Engine | None = None
        self._opening = threading.Lock()  # the daemon's threads share a Store

    def __repr__(self) -> str:
        return f"Store({self.label})"

    @property
    def engine(self) -> Engine:
        if self._engine is not None:
            return self._engine
        with self._opening, self.errors():
            if self._engine is None:
                engine = self._create_engine()
                try:
                    migrate(engine)
                except BaseException:
                    engine.dispose()
                    raise
                self._engine = engine
        return self._engine

    def open(self) -> Store:
        """Connect and migrate now (StoreError if that fails); the store, for chaining."""
        _ = self.engine
        return self

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Turn database failures in the block into StoreError (naming this database)."""
        try:
            yield
        except StoreError:
            raise
        except (exc.SQLAlchemyError, OSError, ImportError) as error:
            raise StoreError(f"database {self.label}: {explain(error)}") from None
        except Exception as error:  # alembic and drivers have errors of their own
            if type(error).__module__.split(".")[0] in ("alembic", "psycopg", "sqlite3"):
                raise StoreError(f"database {self.label}: {explain(error)}") from None
            raise

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session for one unit of work: committed at the end of the block, else rolled back."""
        engine = self.engine
        with self.errors(), Session(engine, expire_on_commit=False) as session:
            with session.begin():
                yield session

    def dispose(self) -> None:
        """Close the pooled connections (after a failure, or at the end)."""
        if self._engine is not None:
            self._engine.dispose()

    def _create_engine(self) -> Engine:
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite":
            return _sqlite_engine(url, default=self.url == default_url())
        connect_args = {"connect_timeout": CONNECT_TIMEOUT} if url.get_backend_name() == "postgresql" else {}
        if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we install
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_engine(url, default: bool) -> Engine:
    database = url.database
    if database and database != ":memory:":
        path = Path(database)
        if default:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        elif not path.parent.is_dir():
            raise StoreError(f"database {url}: folder {path.parent} does not exist")
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def migrate(engine: Engine) -> str | None:
    """Bring the schema to Alembic's head; returns the revision it was at (None: empty).

    Two processes may open a new database at once: SQLite's migration runs under BEGIN IMMEDIATE
    (the second waits, then finds the schema at head); elsewhere a failed upgrade is forgiven when
    the schema turns out to be at head after all."""
    from alembic import command  # noqa: PLC0415  (alembic loads slowly; only on first use)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    head = scripts.get_current_head()
    current = schema_revision(engine)
    if current == head:
        return current
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            current = _current(connection)
            if current == head:
                return current
            if current is not None and current not in {script.revision for script in scripts.walk_revisions()}:
                raise StoreError(f"database schema {current} is newer than this fw knows (head {head})")
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except StoreError:
        raise
    except Exception:
        if schema_revision(engine) != head:  # not a second process migrating at the same moment
            raise
    return current


def _current(connection) -> str | None:
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    return MigrationContext.configure(connection).get_current_revision()


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at."""
    with engine.connect() as connection:
        return _current(connection)

