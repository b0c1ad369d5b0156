"""The pipeline orchestrator: stages of a Pipeline run as routed tasks, durable across restarts."""
