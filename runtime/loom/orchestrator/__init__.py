"""The goal orchestrator: a model decomposes a goal over workers, results are synthesized."""
