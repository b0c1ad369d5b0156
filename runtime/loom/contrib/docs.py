"""Processor backends of the document-analysis demo: fact extraction and report assembly.

Both are deterministic and cheap, so the demo spends its model time only where a
model is needed (classification, summary and entities). The extractor also cuts
an excerpt short enough for a small local model's context window.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from loom.backends import BackendError, SyncProcessingBackend

_MONTHS = (
    "january|february|march|april|may|june|july|august|september|october|november|december|"
    "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
)
_DATE_RE = re.compile(
    r"\b(?:\d{4}-\d{2}-\d{2}"  # 2024-03-01
    r"|\d{1,2}[./]\d{1,2}[./]\d{4}"  # 01.03.2024, 1/3/2024
    rf"|\d{{1,2}}\.?\s+(?:{_MONTHS})\.?\s+\d{{4}}"  # 1 March 2024
    rf"|(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"  # March 1, 2024
    r")\b",
    re.IGNORECASE,
)
_TIME_RE = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\b")
_EMAIL_RE = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_URL_RE = re.compile(r"\bhttps?://[^\s<>\"')\]]+", re.IGNORECASE)
_NUMBER_RE = re.compile(
    r"(?<![\w.])[-+]?\d{1,3}(?:[,\s]\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.])[-+]?\d+(?:\.\d+)?%?(?![\w])"
)
_WORD_RE = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*", re.UNICODE)
_SENTENCE_RE = re.compile(r"[^.!?\n]+[.!?]")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Frequent short words per language: enough to tell these languages apart on a paragraph.
_STOPWORDS: dict[str, frozenset[str]] = {
    "en": _words("the and of to in is that for it with as was on are be by this from at or an have"),
    "de": _words("der die und das ist nicht mit den von zu ein eine sich des auf für im dem wir"),
    "fr": _words("le la les et des est un une pour que dans du en pas sur au qui avec ce sont"),
    "es": _words("el la los las y de que en un una es por con para del se no al lo como"),
    "it": _words("il la le e di che un una per non con del della sono gli nel si come ma"),
    "nl": _words("de het een en van is dat op te in niet met voor zijn er aan ook als"),
    "pt": _words("o a os as e de que em um uma para com não do da se por mais como"),
}

_LIMIT = 20


def _unique(items: list[str], limit: int = _LIMIT) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item.strip(), None)
        if len(seen) >= limit:
            break
    return list(seen)


def guess_language(words: list[str]) -> str:
    """ISO 639-1 code of the language whose common words dominate, or ``unknown``."""
    counts = Counter(w.lower() for w in words)
    scores = {lang: sum(counts[w] for w in stop) for lang, stop in _STOPWORDS.items()}
    best, score = max(scores.items(), key=lambda kv: kv[1])
    total = sum(scores.values())
    if score < 2 or score * 2 < total:
        return "unknown"
    return best


def guess_title(text: str, max_chars: int = 120) -> str:
    """The first non-empty line (markdown heading marks removed), else the first sentence, shortened."""
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            if len(line) <= max_chars:
                return line
            first = _SENTENCE_RE.match(line)
            title = first.group(0).strip() if first else line
            return title if len(title) <= max_chars else title[: max_chars - 1].rstrip() + "…"
    return ""


def excerpt(text: str, max_chars: int) -> str:
    """The text with whitespace collapsed, cut at a word boundary to at most ``max_chars``."""
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    cut = flat[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip(" ,;:") + " …"


def extract_facts(text: str, max_excerpt_chars: int = 1200) -> dict[str, Any]:
    """Counts, title, dates, numbers, e-mail addresses, URLs, language and an excerpt of a text."""
    # Numbers that belong to a URL, address, date or time of day are not facts of their own.
    masked = text
    for pattern in (_URL_RE, _EMAIL_RE, _DATE_RE, _TIME_RE):
        masked = pattern.sub(" ", masked)
    words = _WORD_RE.findall(text)
    return {
        "title": guess_title(text),
        "word_count": len(words),
        "sentence_count": len(_SENTENCE_RE.findall(text)),
        "line_count": len(text.splitlines()),
        "char_count": len(text),
        "language": guess_language(words),
        "dates": _unique(_DATE_RE.findall(text)),
        "numbers": _unique([n.strip() for n in _NUMBER_RE.findall(masked)]),
        "emails": _unique(_EMAIL_RE.findall(text)),
        "urls": _unique([u.rstrip(".,;:") for u in _URL_RE.findall(text)]),
        "excerpt": excerpt(text, max_excerpt_chars),
    }


class DocumentFacts(SyncProcessingBackend):
    """Payload ``{text}`` → simple facts about the text plus an excerpt for the model stages."""

    def __init__(self, max_excerpt_chars: int = 1200, max_chars: int = 1_000_000):
        if max_excerpt_chars < 50:
            raise ValueError("max_excerpt_chars must be at least 50")
        self.max_excerpt_chars = max_excerpt_chars
        self.max_chars = max_chars

    def process_sync(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        text = payload.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BackendError("payload.text must be a non-empty string", code="empty_text")
        if len(text) > self.max_chars:
            raise BackendError(
                f"payload.text has {len(text)} characters; the limit is {self.max_chars}", code="too_long"
            )
        return {
            "output": extract_facts(text, self.max_excerpt_chars),
            "model_used": "loom.contrib.docs.facts",
        }


def render_report(report: dict[str, Any]) -> str:
    """The assembled report as Markdown."""
    lines = [f"# {report['title'] or 'Untitled document'}", ""]
    lines.append(f"**Category:** {report['category']}  ")
    lines.append(f"**Language:** {report['language']}  ")
    lines.append(f"**Length:** {report['word_count']} words")
    lines += ["", "## Summary", "", report["summary"] or "(no summary)"]
    if report["entities"]:
        lines += ["", "## Entities", ""] + [f"- {e}" for e in report["entities"]]
    facts = report["key_facts"]
    labels = {"dates": "Dates", "numbers": "Numbers", "emails": "E-mail", "urls": "Links"}
    shown = [(label, facts[key]) for key, label in labels.items() if facts[key]]
    if shown:
        lines += ["", "## Key facts", ""] + [f"- **{label}:** {', '.join(values)}" for label, values in shown]
    return "\n".join(lines) + "\n"


class ReportAssembler(SyncProcessingBackend):
    """Payload ``{facts, classification, summary}`` (earlier stages' outputs) → one report."""

    def process_sync(self, payload: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        facts = payload.get("facts")
        if not isinstance(facts, dict):
            raise BackendError(
                "payload.facts must be the fact extractor's output (an object)", code="missing_facts"
            )
        classification = payload.get("classification") or {}
        summary = payload.get("summary") or {}
        if not isinstance(classification, dict) or not isinstance(summary, dict):
            raise BackendError("payload.classification and payload.summary must be objects", code="bad_input")
        entities = [str(e).strip() for e in summary.get("entities") or [] if str(e).strip()]
        report: dict[str, Any] = {
            "title": str(facts.get("title") or ""),
            "category": str(classification.get("category") or "unclassified"),
            "language": str(facts.get("language") or "unknown"),
            "word_count": int(facts.get("word_count") or 0),
            "summary": str(summary.get("summary") or "").strip(),
            "entities": _unique(entities),
            "key_facts": {k: list(facts.get(k) or []) for k in ("dates", "numbers", "emails", "urls")},
        }
        report["markdown"] = render_report(report)
        return {"output": report, "model_used": "loom.contrib.docs.report"}
