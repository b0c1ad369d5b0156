"""Find the JSON value in a model's reply: bare, in a Markdown fence, or embedded in prose."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


class NoJSONFound(ValueError):
    """The reply holds no parseable JSON value."""


def extract_json(text: str) -> Any:
    """The first JSON object or array in ``text``.

    Tries, in order: the whole reply; each fenced block; then every ``{`` or ``[``
    from the left, decoding the longest valid value that starts there.
    """
    stripped = text.strip()
    if not stripped:
        raise NoJSONFound("the reply is empty")
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    for block in _FENCE.findall(stripped):
        try:
            return json.loads(block.strip())
        except ValueError:
            continue
    for index, char in enumerate(stripped):
        if char in "{[":
            try:
                value, _ = _DECODER.raw_decode(stripped, index)
            except ValueError:
                continue
            return value
    preview = stripped if len(stripped) <= 200 else stripped[:200] + "..."
    raise NoJSONFound(f"no JSON object found in the reply: {preview!r}")
