"""diffeqgen.cnf (under construction)."""

__all__ = []
