"""NeMo training recipes and the small default models."""
