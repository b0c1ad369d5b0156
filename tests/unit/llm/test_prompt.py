from __future__ import annotations

from loom.llm.prompt import (
    Example,
    Reference,
    SiloText,
    build_system_prompt,
    estimate_tokens,
    feedback_message,
    user_message,
)


def test_sections_in_order_with_schema_directive() -> None:
    prompt = build_system_prompt(
        "You classify documents.",
        references=[Reference("terms.md", "Habeas corpus: ...")],
        examples=[Example("Contract between A and B", "contract"), Example({"t": "minutes"}, {"label": "m"})],
        silos=[SiloText("rules", True, (("a.md", "Rule A"),))],
        output_schema={"type": "object", "required": ["label"]},
        tools=True,
    )
    order = [
        prompt.index("## Reference: terms.md"),
        prompt.index("## Knowledge: rules"),
        prompt.index("### a.md"),
        prompt.index("You classify documents."),
        prompt.index("## Examples"),
        prompt.index("silo_updates"),
        prompt.index("JSON Schema"),
    ]
    assert order == sorted(order)
    assert "Example 1:\nInput: Contract between A and B\nOutput: contract" in prompt
    assert 'Example 2:\nInput: {"t": "minutes"}\nOutput: {"label": "m"}' in prompt
    assert '"required": [\n    "label"\n  ]' in prompt


def test_read_only_silos_do_not_invite_updates() -> None:
    prompt = build_system_prompt("p", silos=[SiloText("ro", False, ())])
    assert "silo_updates" not in prompt
    assert "(empty)" in prompt


def test_messages_and_estimate() -> None:
    assert user_message({"b": 1, "a": "é"}) == '{"a": "é", "b": 1}'
    text = feedback_message(["n: 'x' is not of type 'integer'", "(root): 'm' is a required property"])
    assert "- n: 'x' is not of type 'integer'\n- (root): 'm' is a required property" in text
    assert estimate_tokens("a" * 400) == 100
    assert estimate_tokens("abc", "d") == 1
