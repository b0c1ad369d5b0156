"""Subcommand modules of the ``loom`` CLI (discovered by ``loom.cli.main``)."""
