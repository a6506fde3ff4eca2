"""A private PostgreSQL cluster for tests (Debian's `postgresql`): initdb and pg_ctl on a socket in a short
directory of its own, trust authentication, no TCP port. initdb refuses root, so under root the cluster is
made and run as the `postgres` user (runuser); its directory is owned by that user.

    from postgres import PostgresCluster
    with PostgresCluster() as cluster:
        url = cluster.create_database("t1")      # postgresql:///t1?host=/tmp/pg...&user=postgres
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def postgres_bin(name: str) -> str:
    """Debian keeps initdb and pg_ctl in /usr/lib/postgresql/<version>/bin, off the PATH: the newest there."""
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    found = str(versions[-1]) if versions else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install the Debian package `postgresql` (make test does)")
    return found


class PostgresCluster:
    def __init__(self) -> None:
        # A short path: the socket's (directory + /.s.PGSQL.5432) must stay under ~107 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="cmpg", dir="/tmp"))
        self.data = self.directory / "data"
        self._as_postgres = os.geteuid() == 0
        self._names = itertools.count()

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    def start(self) -> PostgresCluster:
        if self._as_postgres:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
                  "-E", "UTF8", "--locale=C")
        return self.resume()

    def pause(self) -> None:
        """Stop the server, keeping its data: an outage of the database, as clients see it."""
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> PostgresCluster:
        # fsync off: a test cluster need not survive a power cut, and the suite runs on 2 busy cores.
        options = f"-k {self.directory} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql:///{database}?host={self.directory}&user=postgres"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its url."""
        import psycopg

        name = name or f"t{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
