"""Geometry of low-dimensional cells: which lattice vectors are periodic.

Alexandria stores 0D, 1D and 2D systems in cells that are periodic in all three
directions, with vacuum along the non-periodic ones; which lattice vector carries
the vacuum differs between subsets. So periodicity is read off the geometry.
"""

from __future__ import annotations

import numpy as np

AXES = "abc"
#: A gap wider than this along a lattice direction (Å, measured perpendicular to
#: the lattice planes) is vacuum. Alexandria leaves ~15 Å of vacuum; the widest
#: gap in its 9,155 PBE bulk crystals at 0 GPa is 5.9 Å.
VACUUM_GAP_A = 7.0


def vacuum_gaps(cell, scaled_positions) -> np.ndarray:
    """Widest empty slab (Å) along each lattice direction, across the boundary."""
    cell = np.asarray(cell, dtype=float)
    frac = np.sort(np.mod(np.asarray(scaled_positions, dtype=float), 1.0), axis=0)
    # gaps between neighbours along each axis, plus the one across the boundary
    wrapped = np.vstack([frac, frac[:1] + 1.0])
    widest = np.diff(wrapped, axis=0).max(axis=0)
    volume = abs(np.linalg.det(cell))
    spacing = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    return widest * spacing


def periodic_axes(atoms, vacuum_gap: float = VACUUM_GAP_A) -> str:
    """Lattice vectors without vacuum, as letters: "abc" (3D), "ab" (2D), "c" (1D), "" (0D)."""
    gaps = vacuum_gaps(atoms.cell[:], atoms.get_scaled_positions(wrap=False))
    return "".join(axis for axis, gap in zip(AXES, gaps) if gap <= vacuum_gap)


def dimension_of(axes: str) -> str:
    """Dimensionality label ("0D".."3D") of a set of periodic axes."""
    return f"{len(axes)}D"
