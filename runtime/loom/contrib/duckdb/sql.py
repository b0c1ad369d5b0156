"""Pure checks that keep DuckDB statements built from configuration and payloads safe.

Values always travel as ``?`` parameters. What cannot be a parameter — table, column and
order-by names, filter and aggregate fragments from the configuration — is checked here
against the columns DuckDB reports for the table, and quoted. Anything else is refused
with a :class:`DuckDBError` that names the offending text.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

from loom.contrib.duckdb.connection import DuckDBError

#: Comparison operators a ``filter_fields`` fragment may use (``column OP ?``).
FILTER_OPERATORS = ("=", "!=", "<>", "<", "<=", ">", ">=", "LIKE", "ILIKE")
#: Aggregate and scalar functions a ``stats_aggregates`` expression may call.
AGGREGATE_FUNCTIONS = frozenset({
    "count", "sum", "avg", "min", "max", "round", "median", "stddev", "stddev_samp", "variance",
    "any_value", "approx_count_distinct", "coalesce", "abs", "mode", "count_if", "bool_or", "bool_and",
})
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_OPS = "|".join(re.escape(o) for o in sorted(FILTER_OPERATORS, key=len, reverse=True))
_FILTER_RE = re.compile(
    rf"^\s*(?P<col>{_IDENT})\s*(?P<op>{_OPS})\s*\?\s*$",
    re.IGNORECASE,
)
_ORDER_RE = re.compile(rf"^\s*(?P<col>{_IDENT})(?:\s+(?P<dir>ASC|DESC))?\s*$", re.IGNORECASE)
_AGG_RE = re.compile(rf"^\s*(?P<expr>.+?)\s+AS\s+(?P<alias>{_IDENT})\s*$", re.IGNORECASE | re.DOTALL)
_TOKEN_RE = re.compile(rf"\s+|(?P<num>\d+(?:\.\d+)?)|(?P<ident>{_IDENT})|(?P<punct>[*(),+\-/])")


def quote(name: str) -> str:
    """A DuckDB quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def check_identifier(name: object, known: Collection[str], what: str) -> str:
    """``name`` when it is one of ``known`` (the introspected columns), else DuckDBError."""
    if not isinstance(name, str) or name not in known:
        raise DuckDBError(f"unknown {what} {name!r}; known: {sorted(known)}")
    return name


def check_identifiers(names: Iterable[object], known: Collection[str], what: str) -> list[str]:
    """Every name checked by :func:`check_identifier`."""
    return [check_identifier(n, known, what) for n in names]


def filter_sql(fragment: str, known: Collection[str]) -> str:
    """A ``filter_fields`` fragment (``"score >= ?"``) checked and re-emitted with a quoted column."""
    m = _FILTER_RE.match(fragment)
    if not m:
        raise DuckDBError(
            f"filter fragment {fragment!r} must be 'column OP ?' with OP one of {', '.join(FILTER_OPERATORS)}"
        )
    col = check_identifier(m.group("col"), known, "filter column")
    return f"{quote(col)} {m.group('op').upper()} ?"


def order_by_sql(text: str, known: Collection[str]) -> str:
    """``"created_at DESC, id"`` checked against the columns (and aliases) and quoted."""
    parts = []
    for item in text.split(","):
        m = _ORDER_RE.match(item)
        if not m:
            raise DuckDBError(f"order by {text!r}: each item must be 'column [ASC|DESC]'")
        col = check_identifier(m.group("col"), known, "order-by column")
        parts.append(f"{quote(col)} {(m.group('dir') or 'ASC').upper()}")
    if not parts:
        raise DuckDBError("order by is empty")
    return ", ".join(parts)


def aggregate_sql(text: str, known: Collection[str]) -> tuple[str, str]:
    """A ``stats_aggregates`` entry (``"ROUND(AVG(score), 2) AS avg_score"``) checked token by token:
    numbers, ``* ( ) , + - /``, the functions in :data:`AGGREGATE_FUNCTIONS`, ``DISTINCT`` and the
    table's columns. Returns (SQL, alias)."""
    m = _AGG_RE.match(text)
    if not m:
        raise DuckDBError(f"aggregate {text!r} must be 'EXPRESSION AS name'")
    expr, alias = m.group("expr"), m.group("alias")
    out: list[str] = []
    pos = 0
    tokens = []
    while pos < len(expr):
        t = _TOKEN_RE.match(expr, pos)
        if t is None:
            raise DuckDBError(f"aggregate {text!r}: {expr[pos:pos + 10]!r} is not allowed")
        pos = t.end()
        if t.lastgroup:
            tokens.append((t.lastgroup, t.group(t.lastgroup)))
    for i, (kind, value) in enumerate(tokens):
        if kind != "ident":
            out.append(value)
            continue
        calls = i + 1 < len(tokens) and tokens[i + 1] == ("punct", "(")
        if calls:
            if value.lower() not in AGGREGATE_FUNCTIONS:
                raise DuckDBError(
                    f"aggregate {text!r}: function {value!r} is not allowed; "
                    f"allowed: {', '.join(sorted(AGGREGATE_FUNCTIONS))}"
                )
            out.append(value.upper())
        elif value.upper() == "DISTINCT":
            out.append("DISTINCT ")
        else:
            out.append(quote(check_identifier(value, known, f"column in aggregate {text!r}")))
    return f"{''.join(out)} AS {quote(alias)}", alias


def bounded_int(value: object, name: str, default: int, low: int, high: int) -> int:
    """An integer payload field within [low, high]; DuckDBError for anything else."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise DuckDBError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise DuckDBError(f"{name} must be between {low} and {high}, got {value}")
    return value
