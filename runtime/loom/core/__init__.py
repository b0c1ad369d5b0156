"""Core helpers shared by workers and backends (the original Loom's ``loom.core`` import path)."""
