"""diffeqgen.plotting (under construction)."""

__all__ = []
