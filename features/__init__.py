"""Vertical slices: each folder is one use case, its implementation beside its tests."""
