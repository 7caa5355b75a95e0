"""Kept for the imports that still name it; the errors live on the ground floor, `kdnb.errors`."""
from kdnb.errors import KdnbError, suggest, warn  # noqa: F401
