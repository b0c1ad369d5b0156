"""DuckDB connections with the ``fts`` and ``vss`` extensions loaded from their PyPI packages.

DuckDB would otherwise download an extension the first time a query needs it. Here auto-install
and auto-load are off: an extension comes from the ``duckdb-extension-<name>`` package built for
the installed DuckDB (``pip install 'loom-k8s[duckdb]'`` pins the three together), or the query
that needs it fails with an error that says which package to install.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loom.backends import BackendError

#: Extensions this package can load, each from its own PyPI package.
EXTENSIONS = ("fts", "vss")


class DuckDBError(BackendError):
    """A DuckDB tool or backend cannot do what was asked (bad action, field, identifier, missing file)."""

    code = "duckdb_error"


def _duckdb() -> Any:
    try:
        import duckdb
    except ModuleNotFoundError as exc:
        raise DuckDBError("DuckDB is not installed: pip install 'loom-k8s[duckdb]'") from exc
    return duckdb


def extension_path(name: str) -> Path:
    """The extension binary shipped by ``duckdb-extension-<name>`` for the installed DuckDB version."""
    duckdb = _duckdb()
    version = duckdb.__version__
    package = f"duckdb_extension_{name}"
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise DuckDBError(
            f"the DuckDB {name!r} extension is not installed: "
            f"pip install 'duckdb-extension-{name}=={version}'"
        ) from None
    path = Path(str(root)) / "extensions" / f"v{version}" / f"{name}.duckdb_extension"
    if not path.is_file():
        built = sorted(p.name for p in (Path(str(root)) / "extensions").glob("v*"))
        raise DuckDBError(
            f"duckdb-extension-{name} has no build for DuckDB {version} (it has {built}); "
            f"pip install 'duckdb-extension-{name}=={version}'"
        )
    return path


def connect(db_path: str | Path, *, read_only: bool, extensions: tuple[str, ...] = EXTENSIONS) -> Any:
    """Open ``db_path`` (read-only when the caller only reads) and load the extensions from packages.

    A read-only open of a file that does not exist is refused with the path in the message.
    """
    duckdb = _duckdb()
    path = str(db_path)
    if read_only and path != ":memory:" and not Path(path).is_file():
        raise DuckDBError(f"DuckDB file {path} does not exist")
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    try:
        con = duckdb.connect(path, read_only=read_only, config=config)
    except duckdb.Error as exc:
        raise DuckDBError(f"cannot open DuckDB file {path}: {exc}") from None
    try:
        for name in extensions:
            con.execute(f"LOAD '{extension_path(name)}'")
    except BaseException:
        con.close()
        raise
    return con


@dataclass(frozen=True)
class Column:
    """One column of a table or view, as DuckDB describes it."""

    name: str
    type: str

    @property
    def is_vector(self) -> bool:
        """FLOAT[n] / DOUBLE[] / FLOAT[] columns: embeddings, never returned as results by default."""
        return self.type.endswith("]")

    @property
    def is_text(self) -> bool:
        return self.type.upper() in ("VARCHAR", "TEXT", "STRING") or self.type.upper().startswith("VARCHAR")


def columns(con: Any, relation: str) -> list[Column]:
    """The columns of a table or view in the main schema; DuckDBError when there is no such relation."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = ? AND table_schema = 'main' ORDER BY ordinal_position",
        [relation],
    ).fetchall()
    if not rows:
        known = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1"
        ).fetchall()]
        raise DuckDBError(f"no table or view {relation!r} in the database (it has {known})")
    return [Column(str(n), str(t)) for n, t in rows]


def has_fts_index(con: Any, table: str) -> bool:
    """Whether ``PRAGMA create_fts_index`` was run for ``table`` (its ``fts_main_<table>`` schema exists)."""
    row = con.execute(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", [f"fts_main_{table}"]
    ).fetchone()
    return bool(row and row[0])
