"""Ablation grids (``python -m llava_restore.ablate``): grid files, run folders, launchers, reports."""
from .grid import Grid, GridError, GridRun, load_grid

__all__ = ["Grid", "GridError", "GridRun", "load_grid"]
