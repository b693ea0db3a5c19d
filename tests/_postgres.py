"""A throwaway PostgreSQL cluster for the ledger tests.

:func:`start_cluster` runs ``initdb`` in a fresh temporary directory and starts the server listening
on a unix socket in that directory only (no TCP). As root, ``initdb`` and the server run as the
``postgres`` user (``initdb`` refuses root). :meth:`Cluster.new_database` creates an empty database
and returns its URL; :meth:`Cluster.stop` stops the server by its pid and removes the directory.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

REQUIRE_ENV = "DPMAGIC_REQUIRE_POSTGRES"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None if they can."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install jupyter-dpmagic[postgres])"
    if _bindir() is None:
        return "the PostgreSQL server binaries are not installed (no /usr/lib/postgresql/*/bin/initdb)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user to run initdb as"
    return None


class Cluster:
    def __init__(self, root: Path, bindir: Path) -> None:
        self.root, self.bindir = root, bindir
        self.data, self.socket = root / "data", root / "socket"
        self.pid: int | None = None
        self._names = itertools.count()
        self._admin = None

    def _as_owner(self, *command: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)

    def url(self, database: str) -> str:
        user = "postgres" if os.geteuid() == 0 else _current_user()
        return f"postgresql:///{database}?host={self.socket}&user={user}"

    def start(self) -> None:
        self.socket.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket, "postgres", "postgres")
        subprocess.run(
            self._as_owner(str(self.bindir / "initdb"), "-D", str(self.data), "--auth=trust", "--no-sync",
                           "-E", "UTF8", "--locale=C"),
            check=True, capture_output=True, timeout=120,
        )
        options = f"-c listen_addresses='' -k {self.socket} -c fsync=on -c max_connections=100"
        subprocess.run(
            self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                           "-o", options, "-w", "-t", "60", "start"),
            check=True, capture_output=True, timeout=120,
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def new_database(self) -> str:
        """Create an empty database; return its URL."""
        import psycopg

        if self._admin is None:
            self._admin = psycopg.connect(self.url("postgres"), autocommit=True)
        name = f"ledger_{os.getpid()}_{next(self._names)}"
        self._admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self.pid is not None:
            try:
                # Immediate shutdown: the cluster is thrown away, so there is no point in a final checkpoint.
                os.kill(self.pid, signal.SIGQUIT)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        os.kill(self.pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.05)
                else:
                    os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)


def _current_user() -> str:
    import getpass

    return getpass.getuser()


def start_cluster() -> Cluster:
    bindir = _bindir()
    assert bindir is not None
    # Directly under the temporary directory: pytest's own are private to root, which the server,
    # running as postgres, could not enter; and the socket path must stay short.
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="dpmagic-pg-")), bindir)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


# -- the same raw access to either kind of ledger ------------------------------------------------


def is_postgres(location) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


class Raw:
    """A plain connection to a ledger, outside the ledger's code: SQLite's ``?`` statements on either.

    On PostgreSQL the statements are translated as the ledger translates its own (``%s``
    placeholders, ``user`` and ``time`` quoted); the connection is in autocommit mode, like
    ``sqlite3.connect(path, isolation_level=None)``.
    """

    def __init__(self, location) -> None:
        self.postgres = is_postgres(location)
        if self.postgres:
            import psycopg

            self.conn = psycopg.connect(str(location), autocommit=True)
        else:
            import sqlite3

            self.conn = sqlite3.connect(location, timeout=30, isolation_level=None)

    def execute(self, statement: str, params=()):
        if self.postgres:
            from jupyter_dpmagic.ledger_postgres import _translate

            return self.conn.execute(_translate(statement.replace("BEGIN IMMEDIATE", "BEGIN")), tuple(params) or None)
        return self.conn.execute(statement, params)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def integrity_error(location) -> type[Exception]:
    """What a statement the schema or the triggers refuse raises."""
    if is_postgres(location):
        import psycopg

        return psycopg.IntegrityError
    import sqlite3

    return sqlite3.IntegrityError


def tamper(location, *statements, params=()) -> None:
    """Change the ledger as its owner could with a database shell: triggers dropped, no foreign keys."""
    with Raw(location) as raw:
        if raw.postgres:
            # A superuser's session that fires neither triggers nor foreign-key checks.
            raw.execute("SET session_replication_role = replica")
            for table, trigger in raw.execute(
                "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal"
            ).fetchall():
                raw.execute(f"DROP TRIGGER {trigger} ON {table}")
        else:
            for (trigger,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
                raw.execute(f"DROP TRIGGER {trigger}")
        for statement in statements:
            raw.execute(statement, params)
