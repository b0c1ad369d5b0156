"""DuckDB tools and a query backend (the original Loom's ``loom.contrib.duckdb``).

Install with ``pip install 'loom-k8s[duckdb]'``: DuckDB and its ``fts`` and ``vss`` extensions,
pinned to one version and loaded from their packages (never downloaded at run time).
"""

from loom.contrib.duckdb.connection import DuckDBError, connect, extension_path
from loom.contrib.duckdb.query_backend import DuckDBQueryBackend
from loom.contrib.duckdb.tools import DuckDBVectorTool, DuckDBViewTool

__all__ = [
    "DuckDBError",
    "DuckDBQueryBackend",
    "DuckDBVectorTool",
    "DuckDBViewTool",
    "connect",
    "extension_path",
]
