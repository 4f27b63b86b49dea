"""Models: C3D (models/c3d.py)."""

from .c3d import C3D, build_model

__all__ = ["C3D", "build_model"]
