"""Symmetry columns (metrics.symmetry): moyopy's groups checked against spglib, an
independent implementation, on structures of known symmetry built here and on distorted
copies of them, for 3D (space groups) and 2D (layer groups, with the vacuum along each
lattice vector, a tilted vacuum vector and a layer cut by the cell boundary)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import spglib
from ase import Atoms
from ase.build import bulk, graphene, molecule, mx2
from ase.spacegroup import crystal
from spglib._internal import get_symmetry_layerdataset

from metrics import geometry, summary, symmetry
from metrics.per_structure import SCORE_COLUMNS, score

pytestmark = pytest.mark.filterwarnings("ignore:Set OLD_ERROR_HANDLING:DeprecationWarning")


def _crystals() -> dict[str, tuple[Atoms, int]]:
    """3D structures with their space group numbers."""
    return {
        "Cu fcc primitive": (bulk("Cu", "fcc", a=3.61), 225),
        "Cu fcc cubic": (bulk("Cu", "fcc", a=3.61, cubic=True), 225),
        "Ti hcp": (bulk("Ti", "hcp", a=2.95, c=4.68), 194),
        "Si diamond": (bulk("Si", "diamond", a=5.43), 227),
        "NaCl rocksalt": (bulk("NaCl", "rocksalt", a=5.64), 225),
        "ZnO wurtzite": (bulk("ZnO", "wurtzite", a=3.25, c=5.21, u=0.382), 186),
        "SrTiO3 perovskite": (crystal(["Sr", "Ti", "O"], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)],
                                      spacegroup=221, cellpar=[3.905] * 3 + [90] * 3), 221),
        "TiO2 rutile": (crystal(["Ti", "O"], [(0, 0, 0), (0.305, 0.305, 0)], spacegroup=136,
                                cellpar=[4.59, 4.59, 2.96, 90, 90, 90]), 136),
    }


def _layers() -> dict[str, tuple[Atoms, int]]:
    """2D structures (vacuum along c) with their layer group numbers."""
    return {"graphene": (graphene("C2", a=2.46, vacuum=7.5), 80), "hBN": (graphene("BN", a=2.50, vacuum=7.5), 78),
            "MoS2 2H": (mx2("MoS2", "2H", a=3.18, vacuum=7.5), 78),
            "MoS2 1T": (mx2("MoS2", "1T", a=3.18, vacuum=7.5), 72)}


def _distorted(atoms: Atoms, how: str) -> Atoms:
    """`kick`: one atom moved 0.05 Å (a lower group at both tolerances); `rattle`: every
    atom moved ~1e-3 Å (the same group at 1e-2, a lower one at 1e-5); `strain`: the
    first lattice vector 3 % longer."""
    out = atoms.copy()
    out.pbc = True
    if how == "kick":
        out.positions[0] += 0.05 * np.array([0.48, 0.36, 0.8])
    elif how == "rattle":
        out.positions += np.random.default_rng(7).normal(0, 1e-3, out.positions.shape)
    elif how == "strain":
        out.set_cell(out.cell.array * np.array([[1.03], [1.0], [1.0]]), scale_atoms=True)
    return out


def _spglib_group(atoms: Atoms, symprec: float, aperiodic: int | None = None) -> tuple[int, int] | None:
    cell = (atoms.cell.array, atoms.get_scaled_positions(wrap=True), atoms.numbers)
    if aperiodic is None:
        found = spglib.get_symmetry_dataset(cell, symprec=symprec)
    else:
        found = get_symmetry_layerdataset(cell, aperiodic_dir=aperiodic, symprec=symprec)
    return None if found is None else (found.number, len(found.rotations))


def _moyopy_groups(atoms: Atoms, axes: str) -> tuple:
    return symmetry.groups(atoms.numbers, geometry.unwrap_vacuum(atoms.positions, atoms.cell.array, axes),
                           atoms.cell.array, axes)


@pytest.mark.parametrize("name", list(_crystals()))
@pytest.mark.parametrize("how", ["ideal", "kick", "rattle", "strain"])
def test_space_groups_agree_with_spglib(name, how):
    ideal, number = _crystals()[name]
    atoms = _distorted(ideal, how)
    found = _moyopy_groups(atoms, "abc")
    for symprec, mine in zip(symmetry.SYMPRECS, found):
        assert mine == _spglib_group(atoms, symprec), (name, how, symprec)
    ideal_groups = _moyopy_groups(_distorted(ideal, "ideal"), "abc")
    if how == "ideal":
        assert [g[0] for g in found] == [number, number]
    headline = symmetry.outcome(*ideal_groups[0], *found[0])
    tight = symmetry.outcome(*ideal_groups[1], *found[1])
    expected = {"ideal": ("match", "match"), "kick": ("decrease", "decrease"), "rattle": ("match", "decrease")}
    if how in expected and len(atoms) > 1:  # one atom: a move is a translation
        assert (headline, tight) == expected[how], (name, how)


def _with_vacuum_along(atoms: Atoms, vacuum: int, *, tilt: bool, cut: bool) -> tuple[Atoms, str]:
    """The layer with its vacuum vector as lattice vector `vacuum` (0, 1, 2), that vector
    tilted off the normal (tilt), the atoms moved so the cell boundary cuts the layer (cut)."""
    cell = atoms.cell.array.copy()
    if tilt:
        cell[2] = cell[2] + 0.3 * cell[0] - 0.2 * cell[1]
    order = {2: [0, 1, 2], 0: [2, 0, 1], 1: [1, 2, 0]}[vacuum]
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=cell[order], pbc=True)
    if cut:
        out.positions -= np.array([0.0, 0.0, out.positions[:, 2].mean()])  # half of it below the cell
    out.wrap()
    return out, "".join(ax for k, ax in enumerate("abc") if k != vacuum)


@pytest.mark.parametrize("name", list(_layers()))
@pytest.mark.parametrize("how", ["ideal", "kick", "rattle", "strain"])
def test_layer_groups_agree_with_spglib(name, how):
    ideal, number = _layers()[name]
    for vacuum in (2, 0, 1):
        for tilt, cut in ((False, False), (True, False), (False, True)):
            atoms, axes = _with_vacuum_along(_distorted(ideal, how), vacuum, tilt=tilt, cut=cut)
            assert geometry.periodic_axes(atoms) == axes
            found = _moyopy_groups(atoms, axes)
            # spglib on the cell as it is (its own handling of the vacuum direction), on a
            # vacuum vector normal to the layer, which its layer search needs
            upright, _ = _with_vacuum_along(_distorted(ideal, how), vacuum, tilt=False, cut=False)
            for symprec, mine in zip(symmetry.SYMPRECS, found):
                assert mine == _spglib_group(upright, symprec, aperiodic=vacuum), (name, how, vacuum, tilt, cut)
            if how == "ideal":
                assert [g[0] for g in found] == [number, number], (vacuum, tilt, cut)


def test_molecules_and_wires_have_no_group():
    water = molecule("H2O", vacuum=8.0, pbc=True)
    assert symmetry.groups(water.numbers, water.positions, water.cell.array, "") == (None, None)
    wire = Atoms("C2", positions=[(7.5, 7.5, 0), (7.5, 7.5, 1.25)], cell=[15, 15, 2.5], pbc=True)
    assert symmetry.groups(wire.numbers, wire.positions, wire.cell.array, "c") == (None, None)


def test_outcomes():
    assert symmetry.outcome(225, 48, 225, 48) == "match"
    assert symmetry.outcome(225, 48, 123, 16) == "decrease"
    assert symmetry.outcome(123, 16, 225, 48) == "increase"
    assert symmetry.outcome(75, 4, 81, 4) == "changed"
    assert symmetry.suffix(1e-2) == "" and symmetry.suffix(1e-5) == "_1e-05"


def _scored(pairs: list[tuple[str, Atoms, Atoms | None, str]]) -> pd.DataFrame:
    reference, relaxed, rows = {}, {}, []
    for sid, ref, final, reason in pairs:
        ref = ref.copy()
        ref.pbc = True
        ref.info.update(id=sid, periodic_axes=geometry.periodic_axes(ref))
        reference[sid] = ref
        if final is not None:
            relaxed[("m", sid)] = final
        rows.append({"model": "m", "id": sid, "natoms": len(ref), "failure_reason": reason, "converged": True,
                     "steps": 3, "energy_ev": -1.0, "energy_ref_ev": -1.0})
    return score(pd.DataFrame(rows), reference, relaxed, {"2D": 7.5, "1D": 12.5, "0D": 20.0})


def test_score_adds_the_columns_and_the_report_counts_successes():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    mos2 = mx2("MoS2", "2H", a=3.18, vacuum=7.5)
    mos2.pbc = True
    water = molecule("H2O", vacuum=8.0)
    scored = _scored([("cu-kept", cu, _distorted(cu, "rattle"), ""),
                      ("cu-broken", cu, _distorted(cu, "kick"), ""),
                      ("cu-failed", cu, _distorted(cu, "kick"), "not_converged"),
                      ("cu-none", cu, None, "model_error"),
                      ("mos2", mos2, _distorted(mos2, "kick"), ""),
                      ("water", water, water.copy(), "")]).set_index("id")
    assert set(SCORE_COLUMNS) <= set(scored.columns)  # the columns score() says it adds
    assert scored.loc["cu-kept", ["symmetry_kind", "symmetry_group_ref", "symmetry_group", "symmetry"]].tolist() \
        == ["space group", 225, 225, "match"]
    assert scored.loc["cu-kept", "symmetry_1e-05"] == "decrease"
    assert scored.loc["cu-broken", "symmetry"] == "decrease"
    assert scored.loc["cu-broken", "symmetry_ops"] < scored.loc["cu-broken", "symmetry_ops_ref"] == 192
    assert scored.loc["cu-none", "symmetry"] == "" and pd.isna(scored.loc["cu-none", "symmetry_group"])
    assert scored.loc["mos2", ["symmetry_kind", "symmetry_group_ref", "symmetry"]].tolist() \
        == ["layer group", 78, "decrease"]
    assert scored.loc["water", ["symmetry_kind", "symmetry"]].tolist() == ["", ""]

    table = summary.symmetry(scored.reset_index()).set_index(["dimension", "symprec"])
    assert set(table.index.get_level_values("dimension")) == {"2D", "3D"}  # no 0D row
    crystals = table.loc[("3D", 1e-2)]
    # the failed and the result-less copper are not counted
    assert (crystals["n"], crystals["match"], crystals["decrease"]) == (2, 0.5, 0.5)
    assert crystals["ops_mae"] == pytest.approx(
        abs(scored.loc["cu-broken", "symmetry_ops"] - 192) / 2)
    assert table.loc[("3D", 1e-5), "decrease"] == 1.0
    line = summary.summary(scored.reset_index()).set_index("dimension")
    assert line.loc["3D", "symmetry_match"] == 0.5 and np.isnan(line.loc["0D", "symmetry_match"])
