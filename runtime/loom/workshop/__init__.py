"""The Workshop: a local web UI to test, edit and evaluate workers (``loom workshop``).

A top-level role like the CLI: it may use the worker engines, evals and pipeline code, and
nothing in the runtime imports it.
"""
