"""docs/reference.md is generated from the spec models and must not drift from them."""

from __future__ import annotations

from pathlib import Path

from loom.api import docgen

ROOT = Path(__file__).resolve().parents[3]


def test_reference_page_matches_the_models() -> None:
    committed = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert committed == docgen.render(), "docs/reference.md is stale: run make generate"


def test_every_spec_field_is_documented() -> None:
    page = docgen.render()
    for _, model in docgen.SECTIONS:
        for name, info in model.model_fields.items():
            field = info.alias or name
            assert f"| `{field}` |" in page, f"{model.__name__}.{name} missing from the reference"
