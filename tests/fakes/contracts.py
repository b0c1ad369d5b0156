"""Pydantic models used as ``input_schema_ref`` / ``output_schema_ref`` in tests."""

from __future__ import annotations

from pydantic import BaseModel


class Verdict(BaseModel):
    verdict: str
    confidence: float
