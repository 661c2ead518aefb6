"""metrics.per_structure.score on a hand-made run: errors, failure reasons, precedence."""

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.build import bulk, graphene, graphene_nanoribbon, molecule, mx2, nanotube
from scipy.spatial.transform import Rotation

from metrics.geometry import extent
from metrics.per_structure import FAILURE_REASONS, score

LIMITS = {"2D": 7.5, "1D": 12.5, "0D": 20.0}


def _reference():
    mol = molecule("CH3CH2OH")
    mol.center(vacuum=15.0)  # 30 Å of vacuum: room for a fragment to end up > 20 Å away
    tube = nanotube(6, 0, length=2, vacuum=7.5)
    # the tube periodic along b: lattice vectors and Cartesian axes permuted together
    order = [1, 2, 0]
    tube = Atoms(tube.numbers, positions=tube.positions[:, order], cell=tube.cell.array[order][:, order])
    ribbon = graphene_nanoribbon(3, 2, type="armchair", saturated=True, vacuum=7.5)
    layer = mx2("MoS2", vacuum=7.5).repeat((2, 2, 1))
    cell = layer.cell.array.copy()
    cell[2] += 0.3 * cell[0]
    layer.set_cell(cell)
    si = bulk("Si", "diamond", 5.43) * (2, 1, 1)
    structures = {"mol": (mol, "0D"), "tube": (tube, "1D"), "ribbon": (ribbon, "1D"), "mos2": (layer, "2D"),
                  "si": (si, "3D")}
    reference = {}
    for sid, (atoms, dim) in structures.items():
        atoms.pbc = True
        atoms.info.update(id=sid, dimension=dim, energy_ref_ev=-5.0 * len(atoms))
        reference[sid] = atoms
    reference["tube"].info["periodic_axes"] = "b"  # given; the others are read off the geometry
    return reference


def _moved(atoms, seed):
    """A rigidly rotated, translated and wrapped copy: a perfect relaxation."""
    out = atoms.copy()
    rotation = Rotation.random(random_state=seed).as_matrix()
    out.set_cell(out.cell.array @ rotation.T, scale_atoms=True)
    out.positions += [1.7, -2.9, 4.4]
    out.wrap()
    return out


def _row(model, sid, ref, reason="", energy_per_atom=-5.0, steps=10):
    return {"model": model, "id": sid, "dimension": ref.info.get("dimension", "?"), "natoms": len(ref),
            "converged": reason == "", "failure_reason": reason, "steps": steps,
            "energy_ev": energy_per_atom * len(ref), "energy_ref_ev": ref.info["energy_ref_ev"],
            "max_force_ev_per_a": 0.01, "wall_s": 1.0}


@pytest.fixture(scope="module")
def run():
    reference = _reference()
    rows, relaxed = [], {}
    for k, (sid, ref) in enumerate(reference.items()):
        rows.append(_row("good", sid, ref, energy_per_atom=-5.0 + 0.002 * (k + 1)))
        relaxed[("good", sid)] = _moved(ref, k)
    # "bad": every way to fail
    mol = reference["mol"].copy()
    mol.positions[:3] += [12.0, 12.0, 12.0]  # three atoms flung 21 Å away: 0D diameter > 20 Å
    relaxed[("bad", "mol")] = mol
    rows.append(_row("bad", "mol", mol, energy_per_atom=-5.1))
    ribbon = reference["ribbon"].copy()
    x = ribbon.positions[:, 0]
    ribbon.positions[x > np.median(x), 0] += 3.0  # split lengthwise: narrow, but two pieces
    relaxed[("bad", "ribbon")] = ribbon
    rows.append(_row("bad", "ribbon", ribbon))
    layer = reference["mos2"].copy()
    layer.positions[0] += layer.cell.array[2] * 0.4  # an S atom 40 % of c into the vacuum, wrapped below
    layer.wrap()
    relaxed[("bad", "mos2")] = layer
    rows.append(_row("bad", "mos2", layer))
    tube = reference["tube"].copy()
    tube.positions[:12, 0] += 9.0  # fragmented, but the container already said diverged
    relaxed[("bad", "tube")] = tube
    rows.append(_row("bad", "tube", tube, reason="diverged", energy_per_atom=np.nan))
    rows.append(_row("bad", "si", reference["si"], reason="model_error", energy_per_atom=np.nan, steps=0))
    results = pd.DataFrame(rows)
    return results, reference, relaxed


def by_key(scored):
    return scored.set_index(["model", "id"])


def test_perfect_relaxations_score_zero_and_keep_every_row(run):
    results, reference, relaxed = run
    scored = score(results, reference, relaxed, LIMITS)
    assert len(scored) == len(results)
    assert list(scored.columns[: len(results.columns)]) == list(results.columns)
    good = by_key(scored).loc["good"]
    assert (good["failure_reason"] == "").all()
    assert good["position_mae_a"].max() < 1e-10
    assert good["position_rmsd_a"].max() < 1e-10
    assert np.allclose(good.loc[["tube", "ribbon", "mos2", "si"], "cell_change_rel"], 0.0, atol=1e-12)
    assert np.isnan(good.loc["mol", "cell_change_rel"])
    assert good["periodic_axes"].to_dict() == {"mol": "", "tube": "b", "ribbon": "c", "mos2": "ab", "si": "abc"}
    assert 4.5 < good.loc["tube", "extent_a"] < 5.0
    assert np.isnan(good.loc["si", "extent_a"])
    assert (good["fragments"] == good["fragments_ref"]).all()
    assert results["failure_reason"].tolist().count("") == 8  # the input is not modified


def test_energy_error_is_signed_per_atom_in_mev(run):
    results, reference, relaxed = run
    scored = by_key(score(results, reference, relaxed, LIMITS))
    good = scored.loc["good", "energy_error_mev_per_atom"]
    assert good.tolist() == pytest.approx([2.0, 4.0, 6.0, 8.0, 10.0])  # the model is higher: positive
    assert scored.loc[("bad", "mol"), "energy_error_mev_per_atom"] == pytest.approx(-100.0)
    assert np.isnan(scored.loc[("bad", "tube"), "energy_error_mev_per_atom"])


def test_failure_reasons_and_their_precedence(run):
    results, reference, relaxed = run
    scored = by_key(score(results, reference, relaxed, LIMITS))
    bad = scored.loc["bad"]
    assert bad["failure_reason"].to_dict() == {
        "mol": "fragmented_diameter",   # also disconnected, which is no failure
        "ribbon": "",                   # two pieces, but narrow: connectivity is a diagnostic
        "mos2": "fragmented_thickness",
        "tube": "diverged",             # also fragmented: the container's reason wins
        "si": "model_error",            # no final structure at all
    }
    assert bad.loc["mol", "extent_a"] > 20.0
    assert bad.loc["mos2", "extent_a"] > 7.5
    assert bad.loc["ribbon", "extent_a"] < 12.5
    assert bad.loc["ribbon", "fragments"] == 2 and bad.loc["ribbon", "fragments_ref"] == 1
    assert bad["disconnected"].to_dict() == {"mol": True, "ribbon": True, "mos2": True, "tube": True, "si": False}
    assert np.isnan(bad.loc["si", "position_mae_a"]) and np.isnan(bad.loc["si", "extent_a"])
    assert bad.loc["tube", "extent_a"] > 12.5  # measured even when it does not decide
    assert set(scored["failure_reason"]) <= {"", *FAILURE_REASONS}


def test_limits_decide_fragmentation(run):
    results, reference, relaxed = run
    loose = by_key(score(results, reference, relaxed, {"2D": 50.0, "1D": 50.0, "0D": 50.0}))
    assert loose.loc[("bad", "mol"), "failure_reason"] == ""
    assert loose.loc[("bad", "mos2"), "failure_reason"] == ""
    assert loose.loc[("bad", "mos2"), "disconnected"]  # the lifted S atom is alone: reported, not failed


def test_a_reference_in_several_pieces_is_not_disconnected():
    h2 = Atoms("H2H2", positions=[[5, 5, 3], [5.74, 5, 3], [5, 5, 9], [5.74, 5, 9]], cell=[12, 12, 12], pbc=True)
    h2.info.update(id="dimer", dimension="0D", energy_ref_ev=-1.0)
    model = h2.copy()
    model.positions[2:] += [0, 0, 0.5]
    results = pd.DataFrame([_row("m", "dimer", h2)])
    results["failure_reason"] = np.nan  # as read back from a CSV
    scored = score(results, {"dimer": h2}, {("m", "dimer"): model}, LIMITS)
    assert scored["failure_reason"].tolist() == [""]
    assert scored["fragments"].tolist() == [2] and scored["fragments_ref"].tolist() == [2]
    assert scored["disconnected"].tolist() == [False]
    split = model.copy()
    split.positions[1] += [1.0, 0, 0]
    scored = score(results, {"dimer": h2}, {("m", "dimer"): split}, LIMITS)
    assert scored["failure_reason"].tolist() == [""] and scored["disconnected"].tolist() == [True]


def _one(reference: Atoms, final: Atoms, sid="x"):
    reference = reference.copy()
    reference.pbc = True
    reference.info.setdefault("energy_ref_ev", -1.0 * len(reference))
    reference.info["id"] = sid
    results = pd.DataFrame([_row("m", sid, reference)])
    return score(results, {sid: reference}, {("m", sid): final}, LIMITS).iloc[0]


def test_a_uniformly_expanded_crystal_is_a_success():
    # the last: neighbours at 1.2x the sum of covalent radii, so 6 % more breaks every bond
    stretched = bulk("Cu", "fcc", 1.2 * 2 * 1.32 * np.sqrt(2), cubic=True)
    for crystal in (bulk("Si", "diamond", 5.43), bulk("NaCl", "rocksalt", 5.64), stretched):
        expanded = crystal.copy()
        expanded.set_cell(crystal.cell.array * 1.06, scale_atoms=True)  # a 6 % lattice error
        row = _one(crystal, expanded)
        assert row["failure_reason"] == ""
        assert row["cell_change_rel"] == pytest.approx(1.06**3 - 1)
    assert row["disconnected"]  # reported beside the failures, never among them


def square_wire(side: float) -> Atoms:
    """Four atoms at the corners of a side x side square, periodic along c (z)."""
    corners = [[0, 0], [side, 0], [0, side], [side, side]]
    return Atoms("C4", positions=[[10 + x, 10 + y, 1.0] for x, y in corners], cell=[side + 20, side + 20, 2.5],
                 pbc=True)


def test_wire_width_follows_the_authors_spans():
    nine = square_wire(9.0)
    row = _one(nine, nine.copy())
    assert row["dimension"] == "1D"
    assert row["extent_a"] == pytest.approx(9.0)  # the diagonal would be 12.7 Å, over the limit
    assert row["failure_reason"] == ""
    thirteen = square_wire(13.0)
    assert _one(thirteen, thirteen.copy())["failure_reason"] == "fragmented_width"


def test_wire_width_is_measured_with_the_axis_along_z():
    wire = square_wire(9.0)
    # the same wire periodic along a (x): permute lattice vectors and Cartesian axes together
    order = [2, 0, 1]
    along_a = Atoms(wire.numbers, positions=wire.positions[:, order], cell=wire.cell.array[order][:, order], pbc=True)
    row = _one(along_a, along_a.copy())
    assert row["periodic_axes"] == "a" and row["extent_a"] == pytest.approx(9.0)


def test_benzene_split_across_the_boundary_rotated_rigidly_has_no_position_error():
    whole = molecule("C6H6")
    whole.set_cell([15.0, 15.0, 15.0])
    whole.positions += [0.0, 0.0, 0.0]  # centred on the cell corner: split across all faces
    reference = whole.copy()
    reference.wrap()
    shifts = np.round((reference.positions - whole.positions) / 15.0)
    rotated = whole.copy()
    rotated.rotate(3.0, "z", center="COM")
    rotated.positions += shifts * 15.0  # each atom on the same side of the boundary as its twin
    row = _one(reference, rotated)
    assert row["periodic_axes"] == "" and row["failure_reason"] == ""
    assert row["position_mae_a"] < 1e-10 and row["position_rmsd_a"] < 1e-10
    assert row["extent_a"] == pytest.approx(row["extent_ref_a"])


def test_a_wire_labelled_2d_is_a_wire_everywhere():
    wire = square_wire(9.0)
    wire.info["dimension_label"] = "2D"  # as the loader sets it from the dataset's label
    row = _one(wire, wire.copy())
    assert (row["dimension"], row["dimension_label"], row["dimension_mismatch"]) == ("1D", "2D", True)
    assert row["failure_reason"] == ""  # tested as a wire (9 Å < 12.5 Å), not as a 9 Å-thick slab (> 7.5 Å)


def test_a_reference_wider_than_its_limit_is_flagged():
    wide = square_wire(13.0)
    row = _one(wide, wide.copy())
    assert row["reference_over_limit"] and row["extent_ref_a"] == pytest.approx(13.0)
    assert not _one(square_wire(9.0), square_wire(9.0))["reference_over_limit"]


def test_nan_in_one_row_leaves_the_others_scored(run):
    results, reference, relaxed = run
    broken = dict(relaxed)
    nan_tube = relaxed[("good", "tube")].copy()
    nan_tube.positions[3] = np.nan
    broken[("good", "tube")] = nan_tube
    nan_cell = relaxed[("good", "si")].copy()
    nan_cell.cell[0, 0] = np.inf
    broken[("good", "si")] = nan_cell
    scored = by_key(score(results, reference, broken, LIMITS))
    good = scored.loc["good"]
    assert np.isnan(good.loc["tube", "position_mae_a"]) and np.isnan(good.loc["si", "position_mae_a"])
    assert good.loc[["mol", "ribbon", "mos2"], "position_mae_a"].max() < 1e-10


def test_an_unknown_id_is_an_error(run):
    results, reference, relaxed = run
    broken = results.copy()
    broken.loc[0, "id"] = "nowhere"
    with pytest.raises(ValueError, match="nowhere"):
        score(broken, reference, relaxed, LIMITS)


# ---- fragments that drift across the vacuum: measured where they went ------------------

def bilayer(c: float = 18.3, gap: float = 3.35) -> Atoms:
    """Two graphene sheets `gap` apart, centred in a cell `c` high."""
    sheet = graphene(vacuum=0.0)
    lower, upper = sheet.copy(), sheet.copy()
    upper.positions[:, 2] += gap
    atoms = lower + upper
    atoms.set_cell([atoms.cell[0], atoms.cell[1], [0.0, 0.0, c]])
    atoms.positions[:, 2] += c / 2 - gap / 2
    return atoms


def pulled_apart(atoms: Atoms, to: float, axis: int = 2) -> Atoms:
    """The two halves of `atoms` (split at the mean along `axis`) moved apart, each by the
    same amount, until the structure spans `to` Å along `axis` (never wrapped, as the
    workers write positions)."""
    moved = atoms.copy()
    pos = moved.positions[:, axis]
    upper = pos > pos.mean()
    grow = (to - np.ptp(pos)) / 2
    moved.positions[upper, axis] += grow
    moved.positions[~upper, axis] -= grow
    return moved


@pytest.mark.parametrize("to, modulo", [(11.3, 7.0), (13.0, 5.3)])
def test_a_bilayer_pulled_apart_across_the_vacuum_is_fragmented(to, modulo):
    reference = bilayer()
    final = pulled_apart(reference, to)
    # measured on the final structure alone (modulo the cell), the widest gap (between the
    # layers) looks like the vacuum
    assert extent(final.positions, final.cell.array, "ab") == pytest.approx(modulo, abs=1e-6)
    row = _one(reference, final)
    assert row["dimension"] == "2D"
    assert row["extent_a"] == pytest.approx(to, abs=1e-6)
    assert row["failure_reason"] == "fragmented_thickness"
    assert not row["extent_ambiguous"]


def test_a_molecule_pulled_apart_across_its_box_is_fragmented():
    n2 = Atoms("N2", positions=[[15.0, 15.0, 14.45], [15.0, 15.0, 15.55]], cell=[30.0, 30.0, 30.0], pbc=True)
    final = pulled_apart(n2, 20.1)
    assert extent(final.positions, final.cell.array, "") == pytest.approx(9.9, abs=1e-6)
    row = _one(n2, final)
    assert (row["dimension"], row["failure_reason"]) == ("0D", "fragmented_diameter")
    assert row["extent_a"] == pytest.approx(20.1, abs=1e-6)


def test_a_double_chain_pulled_apart_across_the_vacuum_is_fragmented():
    pair = Atoms("Cu4", positions=[[9.75, 11.0, 0.0], [9.75, 11.0, 1.25], [12.25, 11.0, 0.0], [12.25, 11.0, 1.25]],
                 cell=[22.0, 22.0, 2.5], pbc=True)
    final = pulled_apart(pair, 15.0, axis=0)
    assert extent(final.positions, final.cell.array, "c") == pytest.approx(7.0, abs=1e-6)
    row = _one(pair, final)
    assert (row["dimension"], row["failure_reason"]) == ("1D", "fragmented_width")
    assert row["extent_a"] == pytest.approx(15.0, abs=1e-6)


def test_a_bilayer_moved_rigidly_and_slid_and_wrapped_in_plane_keeps_its_extent():
    reference = bilayer()
    final = reference.copy()
    final.positions[:, 2] += 12.0  # a drift of the whole bilayer, past half the cell
    final.positions[:, :2] += [0.7, -0.3]
    frac = final.get_scaled_positions(wrap=False)
    frac[:, :2] %= 1.0  # wrapped along the periodic directions only
    final.set_scaled_positions(frac)
    row = _one(reference, final)
    assert row["extent_a"] == pytest.approx(3.35, abs=1e-6)
    assert (row["failure_reason"], row["extent_ambiguous"]) == ("", False)
    assert row["position_mae_a"] < 1e-9


def test_a_layer_that_went_past_half_the_cell_is_flagged_ambiguous():
    reference = bilayer()
    assert not _one(reference, pulled_apart(reference, 3.35 + 2 * 0.45 * 18.3))["extent_ambiguous"]
    row = _one(reference, pulled_apart(reference, 3.35 + 2 * 0.55 * 18.3))  # past its partner's image
    assert row["extent_ambiguous"] and row["failure_reason"] == "fragmented_thickness"


def test_a_layer_that_drifted_across_the_vacuum_is_a_piece_of_its_own():
    # the audit's case: a bilayer whose top layer went 15 Å up, across the vacuum, to sit next to
    # the periodic image of the bottom one: taken modulo the cell it looked like one piece
    slab = Atoms("Cu2", positions=[[0, 0, 5.0], [1.25, 1.25, 7.3]], cell=[2.5, 2.5, 20.0], pbc=True,
                 info={"id": "slab", "dimension": "2D", "energy_ref_ev": -8.0})
    drifted = slab.copy()
    drifted.positions[1, 2] += 15.4  # z = 22.7: 2.7 modulo the cell, 2.3 Å below its partner's z
    rows = [_row("m", "slab", slab)]
    table = score(pd.DataFrame(rows), {"slab": slab}, {("m", "slab"): drifted}, LIMITS).iloc[0]
    assert table["fragments_ref"] == 1 and table["fragments"] == 2 and bool(table["disconnected"])
    assert table["failure_reason"] == "fragmented_thickness" and table["extent_a"] == pytest.approx(17.7)


def test_the_shipped_samples_crystals_have_their_coordination(tmp_path):
    from pathlib import Path

    from metrics.summary import coordination
    from orchestrator.datasets import load_dataset

    sample = Path(__file__).resolve().parent.parent / "orchestrator" / "data" / "alexandria-pbe-3d-sample50.json.bz2"
    structures = load_dataset(str(sample), {}, tmp_path, show_progress=False).structures
    reference = {a.info["id"]: a for a in structures}
    rows = [_row("perfect", sid, atoms) for sid, atoms in reference.items()]
    table = score(pd.DataFrame(rows), reference, {("perfect", sid): a.copy() for sid, a in reference.items()}, LIMITS)
    assert table["coordination"].between(1, 14).all()  # every atom of a crystal has neighbours, none absurdly many
    bins = coordination(table)
    assert bins["n"].sum() == len(structures) and set(bins["dimensions"]) == {"3D"}
    assert (bins["failed_share"] == 0).all()
