"""``loom operator`` and ``loom render`` (registered through the ``loom.commands`` entry points)."""
