"""2D toy data, shapes and images."""

__all__ = []
