"""diffeqgen.sdes (under construction)."""

__all__ = []
