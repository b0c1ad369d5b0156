"""Turning DuckDB rows into JSON-ready dicts, and the vector-similarity expression for a column."""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import re
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from loom.contrib.duckdb.connection import Column, DuckDBError
from loom.contrib.duckdb.sql import quote

_ARRAY_RE = re.compile(r"^(?P<base>FLOAT|DOUBLE)\[(?P<n>\d+)\]$", re.IGNORECASE)
_LIST_RE = re.compile(r"^(?P<base>FLOAT|DOUBLE)\[\]$", re.IGNORECASE)


def json_value(value: Any) -> Any:
    """A DuckDB value as plain JSON (dates as ISO text, decimals as floats, UUIDs as text)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID | bytes):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return value


def row_dict(names: Sequence[str], row: Sequence[Any], json_columns: Collection[str] = ()) -> dict[str, Any]:
    """One row as a dict; ``json_columns`` holding JSON text are parsed (left as text when not JSON)."""
    out: dict[str, Any] = {}
    for name, value in zip(names, row, strict=True):
        if name in json_columns and isinstance(value, str):
            with contextlib.suppress(ValueError):  # not JSON after all: the text itself is the value
                value = json.loads(value)
        out[name] = json_value(value)
    return out


def similarity_sql(column: Column) -> tuple[str, int | None]:
    """``array_cosine_similarity(col, ?::FLOAT[n])`` for a FLOAT[n] column (the vss HNSW index can serve
    it), ``list_cosine_similarity`` for a FLOAT[] list; and the fixed dimension when there is one."""
    if m := _ARRAY_RE.match(column.type):
        n = int(m.group("n"))
        return f"array_cosine_similarity({quote(column.name)}, ?::{m.group('base').upper()}[{n}])", n
    if m := _LIST_RE.match(column.type):
        return f"list_cosine_similarity({quote(column.name)}, ?::{m.group('base').upper()}[])", None
    raise DuckDBError(
        f"column {column.name!r} ({column.type}) is not an embedding column (FLOAT[n] or FLOAT[])"
    )


def check_vector(vector: object, dimensions: int | None) -> list[float]:
    """A query vector: a non-empty list of numbers of the column's dimension."""
    if not isinstance(vector, list) or not vector or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in vector
    ):
        raise DuckDBError("embedding must be a non-empty list of numbers")
    if dimensions is not None and len(vector) != dimensions:
        raise DuckDBError(f"embedding has {len(vector)} dimensions, the column has {dimensions}")
    return [float(x) for x in vector]
