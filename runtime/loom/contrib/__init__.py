"""Ready-made processing backends and integrations."""
