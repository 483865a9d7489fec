"""diffeqgen.groundtruth (under construction)."""

__all__ = []
