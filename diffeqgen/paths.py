"""diffeqgen.paths (under construction)."""

__all__ = []
