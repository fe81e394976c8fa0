"""``bench server``: one MLflow tracking server that every node of a cluster logs to.

It wraps ``mlflow server`` with a SQL backend store (SQLite here, or PostgreSQL / MySQL on a
cluster) and serves artifacts itself (``--serve-artifacts`` into ``--artifacts-destination``), so
compute nodes need only HTTP access to it, not a shared disk. On loopback (127.0.0.1) by default:
MLflow's server has no authentication, so bind another interface only on a trusted network.

A SQLite store accepts one writer at a time; the server is then the only process that opens the
file (one worker), which is what makes it safe for many nodes. Without a server, a SQLite file on a
shared (NFS) disk works only for small clusters: SQLite's locking is unreliable over NFS, and
concurrent writers wait on each other's locks (``database is locked`` under load).
"""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path

from registry import BenchError

SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def default_artifacts(backend_store_uri: str) -> Path:
    """``<dir of the SQLite file>/mlartifacts`` for a SQLite store, else ``./mlartifacts``."""
    if backend_store_uri.startswith("sqlite:///"):
        path = Path(urllib.parse.urlparse(backend_store_uri).path)
        path = Path(str(path)[1:]) if backend_store_uri.startswith("sqlite:////") else Path(str(path).lstrip("/"))
        return path.expanduser().resolve().parent / "mlartifacts"
    return Path("mlartifacts").resolve()


def server_command(backend_store_uri: str, *, artifacts: Path | None = None, host: str = "127.0.0.1",
                   port: int = 5000, workers: int | None = None) -> list[str]:
    """The ``mlflow server`` command line for a SQL backend store with served artifacts.

    Raises `BenchError` for a store that is not a SQL URI (file stores are not for sharing).
    """
    scheme = backend_store_uri.split(":", 1)[0].split("+", 1)[0]
    if scheme not in SQL_SCHEMES:
        raise BenchError(f"--backend-store-uri must be a SQL database URI ({', '.join(s + '://' for s in SQL_SCHEMES)}"
                         f"...), got '{backend_store_uri}'")
    if workers is None:
        workers = 1 if scheme == "sqlite" else 4
    if scheme == "sqlite" and workers > 1:
        raise BenchError("a SQLite store takes one writer: use --workers 1, or a PostgreSQL / MySQL store for more")
    destination = (artifacts or default_artifacts(backend_store_uri)).expanduser().resolve()
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
            "--serve-artifacts", "--artifacts-destination", str(destination), "--host", host, "--port", str(port),
            "--workers", str(workers)]
