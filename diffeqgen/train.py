"""diffeqgen.train (under construction)."""

__all__ = []
