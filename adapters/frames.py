"""The relaxation frame both engines relax a structure in, and a shard record as ASE atoms."""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms


def alignment_and_mask(cell: np.ndarray, periodic_axes: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Rotation that puts the periodic directions on Cartesian axes, and the cell mask.

    ASE's cell filters mask Cartesian strain components, so the periodic
    subspace must lie along Cartesian axes for the mask to keep the vacuum
    direction fixed. Alexandria's cells already do (rotation = identity); a
    tilted cell is rotated rigidly for the relaxation and rotated back after.
    Returns (rotation, mask); mask None means the cell does not relax (0D).
    """
    idx = ["abc".index(a) for a in periodic_axes]
    if len(idx) == 3:
        return np.eye(3), np.ones((3, 3))
    if not idx:
        return np.eye(3), None
    if len(idx) == 2:
        direction = np.cross(cell[idx[0]], cell[idx[1]])  # plane normal: must stay fixed
    else:
        direction = cell[idx[0]].copy()  # wire axis: the only direction that relaxes
    direction /= np.linalg.norm(direction)
    k = int(np.argmax(np.abs(direction)))
    target = np.zeros(3)
    target[k] = math.copysign(1.0, direction[k])
    rotation = rotation_between(direction, target)
    mask = np.ones((3, 3)) if len(idx) == 2 else np.zeros((3, 3))
    if len(idx) == 2:
        mask[k, :] = mask[:, k] = 0.0
    else:
        mask[k, k] = 1.0
    return rotation, mask


def rotation_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Proper rotation taking unit vector u onto unit vector v (Rodrigues)."""
    axis = np.cross(u, v)
    s, c = np.linalg.norm(axis), float(np.dot(u, v))
    if s < 1e-12:
        return np.eye(3)  # already aligned (antiparallel never happens: v is u's dominant sign)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]]) / s
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def structure_from_record(record: dict) -> Atoms:
    return Atoms(numbers=record["numbers"], positions=record["positions"], cell=record["cell"], pbc=record["pbc"])
