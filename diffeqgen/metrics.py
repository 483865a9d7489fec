"""diffeqgen.metrics (under construction)."""

__all__ = []
