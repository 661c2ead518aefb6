"""Hand-made structures of every dimensionality and writers for the formats the loader reads."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import numpy as np
from ase.build import bulk, molecule, mx2, nanotube

DATA = Path(__file__).resolve().parent / "data"  # shipped with the tests (data/README.md)
SAMPLE = DATA / "alexandria-pbe-3d-sample200.json.bz2"
P000 = DATA / "alexandria-pbe-benchmark-pressure-P000.json.bz2"
P000_SHA256 = "10ded841c7c0b206a2eabc768b06f605d3ce22f27363c779dbbcbc3012457950"


def structures(prefix: str = "t") -> list:
    """Two structures per dimensionality, each periodic in all three directions with
    vacuum along the non-periodic ones, as Alexandria stores them; info carries mat_id,
    id_dimension and uncorrected_energy, arrays small forces."""
    rng = np.random.default_rng(7)
    out = []
    water = molecule("H2O")
    water.center(vacuum=8.0)
    ch4 = molecule("CH4")
    ch4.center(vacuum=8.0)
    tube = nanotube(3, 3, length=1)
    tube.center(vacuum=8.0, axis=(0, 1))
    wire = bulk("Cu", "fcc", a=3.6, orthorhombic=True)
    wire = wire.repeat((1, 1, 1))
    wire.center(vacuum=8.0, axis=(0, 1))
    mos2 = mx2("MoS2", vacuum=8.0)
    graphene_like = mx2("WSe2", vacuum=8.0)
    for dim, atoms_list in (("0D", (water, ch4)), ("1D", (tube, wire)), ("2D", (mos2, graphene_like)),
                            ("3D", (bulk("Si"), bulk("NaCl", "rocksalt", a=5.6)))):
        for k, atoms in enumerate(atoms_list):
            atoms = atoms.copy()
            atoms.pbc = True
            atoms.info = {"mat_id": f"{prefix}{dim}{k}", "id_dimension": dim,
                          "uncorrected_energy": float(-3.0 * len(atoms) - k)}
            atoms.arrays["forces"] = rng.normal(scale=1e-3, size=(len(atoms), 3))
            out.append(atoms)
    return out


def write_db(path: Path, atoms_list, *, labels: bool = True) -> Path:
    """An ASE SQLite database like the authors' 0123D_pbe.db."""
    import ase.db
    from ase.calculators.singlepoint import SinglePointCalculator

    path.unlink(missing_ok=True)
    with ase.db.connect(str(path), type="db") as db:
        for atoms in atoms_list:
            kvp = {"mat_id": atoms.info["mat_id"], "uncorrected_energy": atoms.info["uncorrected_energy"]}
            if labels:
                kvp["id_dimension"] = atoms.info["id_dimension"]
            copy = atoms.copy()
            copy.calc = SinglePointCalculator(copy, forces=atoms.arrays["forces"])
            db.write(copy, key_value_pairs=kvp)
    return path


def entry(atoms, *, label: bool = False, stress_kbar=None) -> dict:
    """A pymatgen ComputedStructureEntry dict as Alexandria writes it."""
    data = {"mat_id": atoms.info["mat_id"], "formula": atoms.get_chemical_formula(), "nsites": len(atoms),
            "energy_total": atoms.info["uncorrected_energy"],
            "stress": (np.zeros((3, 3)) if stress_kbar is None else np.asarray(stress_kbar)).tolist()}
    if label:
        data["id_dimension"] = atoms.info["id_dimension"]
    sites = [{"species": [{"element": s, "occu": 1}], "xyz": p.tolist(), "abc": f.tolist(), "label": s,
              "properties": {"forces": F.tolist(), "magmom": 0.0}}
             for s, p, f, F in zip(atoms.get_chemical_symbols(), atoms.positions,
                                   atoms.get_scaled_positions(wrap=False), atoms.arrays["forces"])]
    return {"@module": "pymatgen.entries.computed_entries", "@class": "ComputedStructureEntry",
            "energy": atoms.info["uncorrected_energy"], "correction": 0.0, "data": data, "entry_id": None,
            "structure": {"@class": "Structure", "charge": 0, "sites": sites,
                          "lattice": {"matrix": atoms.cell[:].tolist(), "pbc": [True, True, True]}}}


def write_entries(path: Path, atoms_list, *, compress: bool = True, label: bool = False) -> Path:
    text = json.dumps({"entries": [entry(a, label=label) for a in atoms_list]})
    if compress:
        path.write_bytes(bz2.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def compress(path: Path, target: Path) -> Path:
    target.write_bytes(bz2.compress(path.read_bytes()))
    return target
