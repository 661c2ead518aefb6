"""What a dataset holds, per dimensionality (the paper's Figs. 2 and 3): elements,
atoms per cell, interatomic distances and PBE energies of the reference structures.
Pure functions over ase.Atoms records as the dataset loader makes them."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd

from metrics.geometry import axes_mask, dimension_of

#: Interatomic distances are collected up to this cutoff (Å), as in the paper's Fig. 3.
DISTANCE_CUTOFF_A = 7.0
#: Structures per dimensionality whose distances are collected (a seeded draw beyond).
DISTANCE_SAMPLE = 2000


def structure_table(structures) -> pd.DataFrame:
    """One row per reference structure: id, dimension, natoms, elements (space-separated,
    sorted), energy_per_atom_ev (total uncorrected PBE energy / N)."""
    rows = [{"id": a.info["id"], "dimension": dimension_of(a.info["periodic_axes"]), "natoms": len(a),
             "elements": " ".join(sorted(set(a.get_chemical_symbols()))),
             "energy_per_atom_ev": a.info["energy_ref_ev"] / len(a)} for a in structures]
    return pd.DataFrame(rows, columns=["id", "dimension", "natoms", "elements", "energy_per_atom_ev"])


def element_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Structures containing each element, per dimensionality: columns dimension, element,
    structures, and fraction (of that dimensionality's structures, as the paper's Fig. 2)."""
    long = table.assign(element=table["elements"].str.split()).explode("element")
    counts = long.groupby(["dimension", "element"]).size().rename("structures").reset_index()
    counts["fraction"] = counts["structures"] / counts["dimension"].map(table["dimension"].value_counts())
    return counts


def pair_distances(structures, cutoff: float = DISTANCE_CUTOFF_A, per_dimension: int = DISTANCE_SAMPLE,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Interatomic distances below `cutoff` per dimensionality, periodic images only along
    the periodic axes (never across the vacuum). Every pair appears twice (i-j and j-i,
    as ASE's neighbor_list gives them), which leaves the distribution unchanged. At most
    `per_dimension` structures each, drawn with random.Random(seed) beyond that."""
    from ase.neighborlist import neighbor_list

    by_dim: dict[str, list] = {}
    for atoms in structures:
        by_dim.setdefault(dimension_of(atoms.info["periodic_axes"]), []).append(atoms)
    out = {}
    for dim, group in sorted(by_dim.items()):
        if len(group) > per_dimension:
            group = random.Random(seed).sample(group, per_dimension)
        found = []
        for atoms in group:
            view = atoms.copy()
            view.pbc = axes_mask(atoms.info["periodic_axes"])
            found.append(neighbor_list("d", view, cutoff))
        out[dim] = np.concatenate(found) if found else np.empty(0)
    return out
