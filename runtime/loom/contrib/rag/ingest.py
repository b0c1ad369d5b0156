"""Documents from text, Markdown and JSONL streams (social-media records: text, author, timestamp,
source). Every reader raises :class:`IngestError` naming the file and line of bad input; nothing
is half-read."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: File suffixes :func:`read_path` understands.
SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".jsonl": "jsonl"}
_RECORD_FIELDS = ("author", "timestamp", "source")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


class IngestError(ValueError):
    """Input that cannot become documents; the message names where and why."""


@dataclass(frozen=True)
class Document:
    """One unit of source text with where it came from."""

    id: str
    text: str
    source: str
    author: str | None = None
    timestamp: dt.datetime | None = None
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def parse_timestamp(value: object, where: str) -> dt.datetime | None:
    """ISO 8601 text (``Z`` allowed) or epoch seconds, as an aware UTC datetime."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(float(value), dt.UTC)
        if isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise IngestError(f"{where}: timestamp {value!r} is neither ISO 8601 nor epoch seconds")


def read_text(text: str, source: str, doc_id: str | None = None) -> list[Document]:
    """Plain text: one document."""
    return [Document(id=doc_id or source, text=text.strip(), source=source)] if text.strip() else []


def read_markdown(text: str, source: str) -> list[Document]:
    """Markdown: one document per heading section (the heading path is its title), code kept as text."""
    docs: list[Document] = []
    path: list[str] = []
    body: list[str] = []

    def flush() -> None:
        content = "\n".join(body).strip()
        if content:
            title = " / ".join(path) or None
            docs.append(Document(id=f"{source}#{len(docs)}", text=content, source=source, title=title))
        body.clear()

    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m:
            flush()
            del path[len(m.group(1)) - 1:]
            path.append(m.group(2))
        else:
            body.append(line)
    flush()
    return docs


def record_document(record: Mapping[str, Any], source: str, where: str, text_field: str = "text") -> Document:
    """One social-media record: ``text`` required; ``id``, ``author``, ``timestamp``, ``source`` optional;
    other fields kept as metadata."""
    text = record.get(text_field)
    if not isinstance(text, str) or not text.strip():
        raise IngestError(f"{where}: record has no {text_field!r} text")
    rid = record.get("id")
    author = record.get("author")
    return Document(
        id=str(rid) if rid is not None else where,
        text=text.strip(),
        source=str(record.get("source") or source),
        author=str(author) if author is not None else None,
        timestamp=parse_timestamp(record.get("timestamp"), where),
        metadata={k: v for k, v in record.items() if k not in {"id", text_field, *_RECORD_FIELDS}},
    )


def read_jsonl(lines: Iterable[str], source: str, text_field: str = "text") -> list[Document]:
    """A JSONL stream; blank lines skipped, any bad line refuses the whole stream with its number."""
    docs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise IngestError(f"{where}: not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise IngestError(f"{where}: expected an object, got {type(record).__name__}")
        docs.append(record_document(record, source, where, text_field))
    return docs


def read_path(path: Path, source: str | None = None) -> list[Document]:
    """A file by suffix (``.txt``, ``.md``, ``.jsonl``)."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise IngestError(f"{path}: unsupported file type {path.suffix!r}; one of {sorted(SUFFIXES)}")
    name = source or path.name
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if kind == "markdown":
        return read_markdown(text, name)
    if kind == "jsonl":
        return read_jsonl(text.splitlines(), name)
    return read_text(text, name)
