"""Loom control plane: a Kopf operator for Worker, Pipeline, RouterPolicy and Schedule."""
