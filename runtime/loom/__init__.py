"""Loom data plane: stateless worker actors, router, pipelines and scheduler over NATS JetStream."""

__version__ = "0.1.0"
