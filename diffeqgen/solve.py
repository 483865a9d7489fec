"""diffeqgen.solve (under construction)."""

__all__ = []
