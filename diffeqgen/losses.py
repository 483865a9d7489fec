"""diffeqgen.losses (under construction)."""

__all__ = []
