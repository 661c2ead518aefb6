"""Symmetry of the PBE and of the relaxed structure: kept, lost or gained (moyopy).

- 3D: the space group (moyopy.MoyoDataset) of the cell as it is.
- 2D: the layer group (moyopy.MoyoLayerDataset, 80 types). moyopy wants the vacuum
  direction as the third basis vector, perpendicular to the two periodic ones, with
  those in the xy-plane: the structure (made contiguous across the vacuum first) is
  rotated so that the layer's normal is +z and given a c of its own thickness plus
  VACUUM_A. Which lattice vectors are periodic differs between Alexandria's subsets,
  so the periodic pair is taken from the structure's periodic axes.
- 0D and 1D: not determined. The crystallographic libraries see a molecule or a wire
  through its box, which admits only the box lattice's operations (no five-fold axis of
  a cluster, no helical screw of a nanotube), so a space group of the boxed structure
  would measure the box; moyopy and spglib have no point- or rod-group detection.

Each structure is read by moyopy at two tolerances (its symprec, in Å):
SYMPRECS[0] = 1e-2, the headline, and 1e-5 beside it. The same number given to spglib is
not the same test: its search differs at the tolerance's edge (an audit of 100 crystals found
two whose groups moyopy and spglib read otherwise at 1e-2), so groups compare with spglib's
only away from that edge. float32 models are judged at 1e-5
against float64 DFT geometry, where round-off alone can break a symmetry: read 1e-5 as
the strict test.

The outcome follows matbench-discovery's definitions: `match` the same group number;
otherwise `decrease` with fewer symmetry operations in the (same) cell, `increase` with
more, `changed` with as many (another group of the same order). "" where either group
could not be determined (moyopy found no consistent symmetry, or the dimensionality has
none here). The number of operations counts every operation of the input cell,
centring translations included: the relaxed cell holds the same atoms, so the counts
compare.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from metrics import geometry

SYMPRECS = (1e-2, 1e-5)
#: The group each dimensionality is given; the others get none (see the module docstring).
KIND = {"3D": "space group", "2D": "layer group"}
#: Height of a layer's cell beyond its own thickness (Å): the layer group is a property of
#: the layer alone, so any vacuum that keeps its images apart gives the same group.
VACUUM_A = 20.0
OUTCOMES = ("match", "decrease", "increase", "changed")


def suffix(symprec: float) -> str:
    """Column-name suffix of a tolerance: "" for the headline one, else e.g. "_1e-05"."""
    return "" if symprec == SYMPRECS[0] else f"_{symprec:.0e}"


def columns(symprec: float) -> tuple[str, ...]:
    """The per-structure columns at one tolerance: group and operations of the PBE and of
    the relaxed structure, and the outcome."""
    s = suffix(symprec)
    return (f"symmetry_group_ref{s}", f"symmetry_group{s}", f"symmetry_ops_ref{s}", f"symmetry_ops{s}",
            f"symmetry{s}")


def layer_cell(positions, cell, axes: str) -> tuple[np.ndarray, np.ndarray]:
    """(basis, fractional positions) of a layer as moyopy's layer groups want it: the two
    periodic lattice vectors in the xy-plane, c along +z, the atoms inside the cell.
    `positions` must be contiguous across the vacuum (geometry.unwrap_vacuum)."""
    positions, cell = np.asarray(positions, dtype=float), np.asarray(cell, dtype=float)
    i, j = np.flatnonzero(geometry.axes_mask(axes))
    normal = np.cross(cell[i], cell[j])
    rotation = geometry.rotations_onto_z(normal[None])[0]
    a, b = rotation @ cell[i], rotation @ cell[j]
    rotated = positions @ rotation.T
    heights = rotated[:, 2] - rotated[:, 2].min()
    thickness = heights.max() + VACUUM_A
    in_plane = np.linalg.solve(np.array([a[:2], b[:2]]).T, rotated[:, :2].T).T
    basis = np.array([[a[0], a[1], 0.0], [b[0], b[1], 0.0], [0.0, 0.0, thickness]])
    fractional = np.column_stack([np.mod(in_plane, 1.0), (heights + VACUUM_A / 2) / thickness])
    return basis, fractional


def groups(numbers, positions, cell, axes: str) -> tuple:
    """(group number, number of operations) of one structure at each of SYMPRECS, each
    None where it has no group here (0D, 1D) or moyopy finds no consistent one."""
    import moyopy

    dim = geometry.dimension_of(axes)
    if dim not in KIND:
        return (None,) * len(SYMPRECS)
    numbers = [int(z) for z in numbers]
    try:
        if dim == "3D":
            basis = np.asarray(cell, dtype=float)
            fractional = np.mod(np.linalg.solve(basis.T, np.asarray(positions, dtype=float).T).T, 1.0)
            dataset = moyopy.MoyoDataset
        else:
            basis, fractional = layer_cell(positions, cell, axes)
            dataset = moyopy.MoyoLayerDataset
    except np.linalg.LinAlgError:  # a singular cell
        return (None,) * len(SYMPRECS)
    structure = moyopy.Cell(basis.tolist(), fractional.tolist(), numbers)
    found = []
    for symprec in SYMPRECS:
        try:
            result = dataset(structure, symprec=symprec)
            found.append((result.number, len(result.operations)))
        except ValueError:  # no consistent symmetry at this tolerance
            found.append(None)
    return tuple(found)


def table_columns(ids, dims, reference: dict, relaxed: dict) -> dict:
    """The per-structure columns of every row: `ids` and `dims` the rows' structure ids
    and dimensionalities, `reference`
    groups() of each PBE structure by id, `relaxed` groups() of each row's relaxed
    structure by row number (rows without one are absent)."""
    n_rows = len(ids)
    out = {"symmetry_kind": np.array([KIND.get(dim, "") for dim in dims], dtype=str)}
    for k, symprec in enumerate(SYMPRECS):
        group_ref, group_final, ops_ref, ops_final = (np.full(n_rows, -1) for _ in range(4))
        change = np.array([""] * n_rows, dtype=object)
        for row, sid in enumerate(ids):
            ref, final = reference[sid][k], relaxed.get(row, (None,) * len(SYMPRECS))[k]
            if ref is not None:
                group_ref[row], ops_ref[row] = ref
            if final is not None:
                group_final[row], ops_final[row] = final
            if ref is not None and final is not None:
                change[row] = outcome(*ref, *final)
        names = columns(symprec)
        for name, values in zip(names[:4], (group_ref, group_final, ops_ref, ops_final)):
            out[name] = pd.array(np.where(values >= 0, values, None), dtype="Int64")
        out[names[4]] = change.astype(str)
    return out


def outcome(group_ref: int, ops_ref: int, group_final: int, ops_final: int) -> str:
    """match / decrease / increase / changed (see the module docstring)."""
    if group_final == group_ref:
        return "match"
    return "decrease" if ops_final < ops_ref else "increase" if ops_final > ops_ref else "changed"


def version() -> str:
    """The version of the symmetry library, for the provenance."""
    from importlib.metadata import version as installed

    return installed("moyopy")
