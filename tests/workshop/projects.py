"""Project folders for the browser tests: a worker file with comments and a multi-line prompt, a
RouterPolicy pointing at fake providers, and an eval suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.fakes.llm_server import FakeLLMServer, Reply, last_user_text

CATEGORIES = ["invoice", "contract", "news", "other"]

WORKER = """\
# The classifier: one category per document.
apiVersion: loom.dev/v1alpha1
kind: Worker
metadata:
  name: classifier
spec:
  workerKind: llm
  # The prompt is a block scalar: it must stay one.
  systemPrompt: |
    Sort the document into a category.
    Answer with JSON only.
  defaultModelTier: standard
  tiers: [standard]
  inputSchema:
    type: object
    required: [text]
    properties:
      text: {type: string}
      pages: {type: integer}
  outputSchema:
    type: object
    required: [category]
    additionalProperties: false
    properties:
      category: {type: string, enum: [invoice, contract, news, other]}  # closed set
  outputRetries: 1
  timeoutSeconds: 30
"""

PIPELINE = """\
apiVersion: loom.dev/v1alpha1
kind: Pipeline
metadata:
  name: triage
spec:
  pipelineStages:
    - name: classify
      workerType: classifier
      inputMapping:
        text: goal.context.text
    - name: route
      workerType: classifier
      inputMapping:
        text: classify.output.category
"""


def classify(body: dict[str, Any]) -> Reply:
    """A fake model that finds the category named in the text, unless the prompt says STRICT, which
    makes it refuse contracts (the deliberate regression)."""
    system = next((m["content"] for m in body.get("messages", []) if m.get("role") == "system"), "")
    text = last_user_text(body).lower()
    found = next((c for c in CATEGORIES if c in text), "other")
    if "STRICT" in system and found == "contract":
        found = "other"
    return Reply(json={"category": found}, model="m-1")


def policy(openai: FakeLLMServer) -> str:
    doc = {
        "apiVersion": "loom.dev/v1alpha1",
        "kind": "RouterPolicy",
        "metadata": {"name": "default"},
        "spec": {
            "tiers": [
                {
                    "name": "standard",
                    "backend": "openai",
                    "model": "m-1",
                    "baseUrl": openai.url,
                    "maxRetries": 0,
                }
            ],
            "modelEndpoints": {"allowedUrls": [openai.root_url]},
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


SUITE = {
    "name": "classifier-evals",
    "worker": "classifier",
    "threshold": 0.5,
    "regressionTolerance": 0.0,
    "scorers": [{"type": "fields", "fields": [{"path": "/category"}], "weight": 3}, {"type": "schema"}],
    "cases": [
        {"id": "invoice", "input": {"text": "An invoice for 3 chairs"}, "expected": {"category": "invoice"}},
        {"id": "contract", "input": {"text": "This contract binds"}, "expected": {"category": "contract"}},
        {"id": "news", "input": {"text": "Today's news"}, "expected": {"category": "news"}},
    ],
}


def classifier_project(root: Path, openai: FakeLLMServer) -> Path:
    """The classifier worker, its policy, a pipeline using it and its eval suite."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "worker-classifier.yaml").write_text(WORKER)
    (root / "policy.yaml").write_text(policy(openai))
    (root / "pipeline-triage.yaml").write_text(PIPELINE)
    evals = root / "evals"
    evals.mkdir()
    (evals / "classifier.yaml").write_text(yaml.safe_dump(SUITE, sort_keys=False))
    return root
