"""metrics.geometry on structures built with ase.build: axes, extents, bonds, alignment."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, graphene, graphene_nanoribbon, molecule, mx2, nanotube
from scipy.spatial.transform import Rotation

from metrics import geometry
from metrics.geometry import (cell_change, extent, fragments, kabsch_align, periodic_axes, position_errors,
                              unwrap_vacuum)

def along(atoms: Atoms, axis: str) -> Atoms:
    """A c-periodic 1D structure turned into an `axis`-periodic one: cell vectors and
    Cartesian components are permuted together, so the geometry is unchanged."""
    order = {"a": [2, 0, 1], "b": [1, 2, 0], "c": [0, 1, 2]}[axis]
    # lattice vector k of the new cell is old vector order[k]; Cartesian axes follow
    cell = atoms.cell.array[order][:, order]
    return Atoms(numbers=atoms.numbers, positions=atoms.positions[:, order], cell=cell, pbc=True)


def tube(axis="c"):
    return along(nanotube(6, 0, length=2, vacuum=7.5), axis)


def ribbon(axis="c"):
    return along(graphene_nanoribbon(3, 2, type="armchair", saturated=True, vacuum=7.5), axis)


def benzene():
    atoms = molecule("C6H6")
    atoms.center(vacuum=7.5)
    atoms.pbc = True
    return atoms


def tilted_mos2():
    """MoS2 in a cell whose third vector leans over the layer (non-orthogonal to it)."""
    atoms = mx2("MoS2", vacuum=7.5).repeat((2, 2, 1))
    cell = atoms.cell.array.copy()
    cell[2] += 0.4 * cell[0] + 0.25 * cell[1]
    atoms.set_cell(cell, scale_atoms=False)
    atoms.pbc = True  # as Alexandria stores it: periodic cell, vacuum along c
    atoms.wrap()
    return atoms


def layer_thickness(atoms):
    return np.ptp(atoms.positions[:, 2])


# ---- periodic axes ------------------------------------------------------------------

@pytest.mark.parametrize("axis", ["a", "b", "c"])
@pytest.mark.parametrize("build", [tube, ribbon])
def test_periodic_axis_of_wires_along_each_lattice_vector(build, axis):
    atoms = build(axis)
    assert periodic_axes(atoms) == axis
    assert geometry.dimension_of(periodic_axes(atoms)) == "1D"


def test_periodic_axes_of_layers_molecules_and_bulk():
    assert periodic_axes(tilted_mos2()) == "ab"
    assert periodic_axes(graphene(vacuum=7.5)) == "ab"
    assert periodic_axes(fcc111("Cu", (2, 2, 3), vacuum=7.5)) == "ab"
    assert periodic_axes(benzene()) == ""
    assert periodic_axes(bulk("Si", "diamond", 5.43)) == "abc"


def test_periodic_axes_of_a_layer_wrapped_across_the_boundary():
    atoms = mx2("MoS2", vacuum=7.5)
    atoms.pbc = True
    atoms.positions[:, 2] -= atoms.positions[:, 2].min() + 0.5  # the bottom S layer below z=0
    atoms.wrap()
    assert periodic_axes(atoms) == "ab"


# ---- extents ------------------------------------------------------------------------

def test_thickness_of_a_slab_straddling_the_boundary():
    slab = fcc111("Cu", (2, 2, 3), vacuum=7.5, periodic=True)
    true = layer_thickness(slab)
    shifted = slab.copy()
    shifted.positions[:, 2] -= slab.positions[:, 2].mean()  # centre on z=0: half the slab below
    shifted.wrap()
    assert np.ptp(shifted.positions[:, 2]) > 15.0  # naively a thick slab
    assert extent(shifted.positions, shifted.cell.array, "ab") == pytest.approx(true, abs=1e-9)
    assert extent(slab.positions, slab.cell.array, "ab") == pytest.approx(true, abs=1e-9)


def test_thickness_of_a_tilted_cell_is_measured_along_the_normal():
    atoms = tilted_mos2()
    flat = mx2("MoS2", vacuum=7.5)
    assert extent(atoms.positions, atoms.cell.array, "ab") == pytest.approx(layer_thickness(flat), abs=1e-9)


@pytest.mark.parametrize("axis", ["a", "b", "c"])
def test_width_of_a_tube_across_the_boundary(axis):
    atoms = nanotube(6, 0, length=2, vacuum=7.5)
    diameter = 2 * np.linalg.norm(atoms.positions[:, :2] - atoms.positions[:, :2].mean(axis=0), axis=1).max()
    atoms.positions[:, :2] -= atoms.positions[:, :2].mean(axis=0)  # centred on a cell corner
    atoms.wrap()
    atoms = along(atoms, axis)
    width = extent(atoms.positions, atoms.cell.array, axis)
    assert width == pytest.approx(diameter, abs=1e-6)
    assert 4.5 < width < 5.0  # (6,0) carbon tube: 4.7 Å


def test_diameter_of_a_molecule_cut_by_the_boundary():
    atoms = benzene()
    true = max(atoms.get_distance(i, j) for i in range(len(atoms)) for j in range(len(atoms)))
    atoms.positions -= atoms.positions.mean(axis=0)  # the molecule around the cell corner
    atoms.wrap()
    assert extent(atoms.positions, atoms.cell.array, "") == pytest.approx(true, abs=1e-9)
    assert fragments(atoms.numbers, atoms.positions, atoms.cell.array, "") == 1


def test_pulled_apart_structures_exceed_the_fragmentation_limits():
    slab = mx2("MoS2", vacuum=10.0)
    slab.positions[0, 2] += 8.0  # one S atom lifted into the vacuum
    assert extent(slab.positions, slab.cell.array, "ab") > 7.5
    wire = tube()
    wire.positions[:12, 0] += 9.0  # half the tube moved sideways
    assert extent(wire.positions, wire.cell.array, "c") > 12.5
    cluster = benzene()
    cluster.set_cell(cluster.cell.array * 2, scale_atoms=False)
    cluster.positions[:3] += [20.0, 0.0, 0.0]
    assert extent(cluster.positions, cluster.cell.array, "") > 20.0


def test_extent_of_bulk_is_nan_and_a_batch_matches_single_calls():
    si = bulk("Si", "diamond", 5.43)
    assert np.isnan(extent(si.positions, si.cell.array, "abc"))
    tubes = [tube() for _ in range(3)]
    tubes[1].positions[:, 0] *= 1.2
    batch = extent(np.stack([t.positions for t in tubes]), np.stack([t.cell.array for t in tubes]), "c")
    assert batch.shape == (3,)
    assert batch == pytest.approx([extent(t.positions, t.cell.array, "c") for t in tubes])
    assert batch[1] > batch[0]


def test_unwrap_vacuum_moves_only_wrapped_atoms_and_only_by_lattice_vectors():
    slab = fcc111("Cu", (2, 2, 3), vacuum=7.5, periodic=True)
    wrapped = slab.copy()
    wrapped.positions[:, 2] -= 1.0
    wrapped.wrap()
    out = unwrap_vacuum(wrapped.positions, wrapped.cell.array, "ab")
    assert np.allclose(out[:, :2], wrapped.positions[:, :2])
    assert np.ptp(out[:, 2]) == pytest.approx(layer_thickness(slab))
    # untouched when nothing is wrapped
    assert np.array_equal(unwrap_vacuum(slab.positions, slab.cell.array, "ab"), slab.positions)


# ---- connectivity -------------------------------------------------------------------

@pytest.mark.parametrize("axis", ["a", "b", "c"])
def test_wires_are_one_piece_through_the_periodic_boundary(axis):
    for build in (tube, ribbon):
        atoms = build(axis)
        atoms.wrap()
        assert fragments(atoms.numbers, atoms.positions, atoms.cell.array, axis) == 1


def test_layers_and_bulk_are_one_piece_and_molecules_are_counted():
    for atoms, axes in ((tilted_mos2(), "ab"), (graphene(vacuum=7.5), "ab"),
                        (bulk("Si", "diamond", 5.43), "abc"), (bulk("Cu", "fcc", 3.6), "abc")):
        assert fragments(atoms.numbers, atoms.positions, atoms.cell.array, axes) == 1
    # two H2 molecules 6 Å apart: two pieces; one of them cut by the cell boundary: still two
    atoms = Atoms("H2H2", positions=[[0, 0, 3], [0.74, 0, 3], [0, 0, 9.0], [0.74, 0, 9.0]], cell=[12, 12, 12])
    assert fragments(atoms.numbers, atoms.positions, atoms.cell.array, "") == 2
    atoms.positions[1] -= [2.0, 0, 0]  # H at x = -1.26: bonded to its partner only as H - 12 Å + 12 Å
    atoms.pbc = True
    atoms.wrap()
    assert atoms.positions[1, 0] > 10.0
    assert fragments(atoms.numbers, atoms.positions, atoms.cell.array, "") == 3  # -1.26 to 0: 1.26 Å apart
    atoms.positions[1, 0] = 11.6  # 0.4 Å from its partner at x = 0 through the boundary
    assert fragments(atoms.numbers, atoms.positions, atoms.cell.array, "") == 2


def test_a_broken_ribbon_is_disconnected():
    atoms = ribbon()
    n = len(atoms)
    assert fragments(atoms.numbers, atoms.positions, atoms.cell.array, "c") == 1
    x = atoms.positions[:, 0]
    atoms.positions[x > np.median(x), 0] += 3.0  # split lengthwise, 3 Å apart: width still < 12.5
    assert fragments(atoms.numbers, atoms.positions, atoms.cell.array, "c") == 2
    assert extent(atoms.positions, atoms.cell.array, "c") < 12.5
    assert len(atoms) == n


def test_bond_search_finds_images_beyond_the_neighbouring_cell():
    # a strongly sheared 2D cell, b = 5a + (0, 2.5, 0): atom B is 1.7 Å from atom A
    # through the image 2 cells along a, which a plain +-1 image search misses
    cell = np.array([[2.3, 0, 0], [5 * 2.3, 2.5, 0], [0, 0, 15.0]])
    atoms = Atoms("Cu2", scaled_positions=[[0, 0, 0.5], [0, 0.5, 0.5]], cell=cell)
    assert np.linalg.norm(atoms.positions[1] - atoms.positions[0]) > 3.5  # not bonded within the cell
    assert fragments(atoms.numbers, atoms.positions, cell, "ab") == 1
    assert fragments(atoms.numbers, atoms.positions, cell, "") == 2
    # the same layer in its reduced cell agrees
    reduced = np.array([[2.3, 0, 0], [0, 2.5, 0], [0, 0, 15.0]])
    assert fragments(atoms.numbers, atoms.positions, reduced, "ab") == 1


def test_count_components_on_hand_made_graphs():
    adjacency = np.zeros((2, 4, 4), bool)
    adjacency[0, 0, 1] = adjacency[0, 1, 0] = True
    adjacency[1, [0, 1, 2], [1, 2, 3]] = True
    assert list(geometry.count_components(adjacency)) == [3, 1]


# ---- position errors ----------------------------------------------------------------

@pytest.mark.parametrize("make, axes", [(benzene, ""), (tube, "c"), (lambda: tube("a"), "a"),
                                        (tilted_mos2, "ab"), (lambda: bulk("Si", "diamond", 5.43) * 2, "abc")])
def test_rotated_translated_wrapped_copy_has_zero_error(make, axes):
    ref = make()
    ref.rattle(0.05, seed=1)
    model = ref.copy()
    rotation = Rotation.from_euler("xyz", [30, -50, 110], degrees=True).as_matrix()
    model.set_cell(model.cell.array @ rotation.T, scale_atoms=True)  # rotates positions too
    model.positions += [3.3, -7.1, 12.9]
    mask = geometry.axes_mask(axes)
    frac = model.get_scaled_positions(wrap=False)
    frac[:, mask] = np.mod(frac[:, mask] + 0.37, 1.0)  # slid by 0.37 of a cell and wrapped
    model.set_scaled_positions(frac)
    if mask.any():  # some atoms did cross the boundary
        assert not np.allclose(model.positions - model.positions[0], (ref.positions - ref.positions[0]) @ rotation.T)
    mae, rmsd = position_errors(model.positions, model.cell.array, ref.positions, ref.cell.array, axes)
    assert mae < 1e-10 and rmsd < 1e-10


def test_known_displacement_gives_known_error():
    # H2 stretched from 0.74 to 0.94 Å: superposed, each atom is 0.1 Å off along the bond
    two = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[10, 10, 10])
    moved = two.positions.copy()
    moved[1, 2] += 0.2
    mae, rmsd = position_errors(moved + 4.0, two.cell.array, two.positions, two.cell.array, "")
    assert mae == pytest.approx(0.2 / 6, abs=1e-12)  # |0.1| + |0.1| over 6 components
    assert rmsd == pytest.approx(0.1, abs=1e-12)


def test_a_real_distortion_is_kept_when_wrapping_is_undone():
    # fcc Cu breathing by 10 % about its centroid (no rotation can absorb it): each atom
    # moves 0.1 x (0.9, 0.9, 0.9) Å; atom 0 leaves the cell and is wrapped back
    ref = bulk("Cu", "fcc", 3.6, cubic=True)
    centre = ref.positions.mean(axis=0)
    model = ref.copy()
    model.positions = centre + 1.1 * (ref.positions - centre)
    model.wrap()
    assert model.positions[0, 0] > 3.0  # atom 0 now sits on the far side
    mae, rmsd = position_errors(model.positions, model.cell.array, ref.positions, ref.cell.array, "abc")
    assert mae == pytest.approx(0.09, abs=1e-12)
    assert rmsd == pytest.approx(0.09 * np.sqrt(3), abs=1e-12)
    # across the vacuum of a low-dimensional cell nothing is wrapped (the workers never wrap):
    # an atom on the far side went there, and counts as displaced
    assert position_errors(model.positions, model.cell.array, ref.positions, ref.cell.array, "")[0] > 0.2
    # unwrapping only along the axes asked for leaves the wrap in
    kept = geometry.unwrap_to_reference(model.positions, model.cell.array, ref.positions, ref.cell.array, "")
    assert np.array_equal(kept, model.positions)


def test_kabsch_never_reflects():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(6, 3))
    mirrored = points * [1, 1, -1]
    aligned = kabsch_align(mirrored, points)
    assert np.linalg.norm(aligned - points) > 0.1  # a reflection would have matched exactly
    rotation = Rotation.random(random_state=3).as_matrix()
    assert np.allclose(kabsch_align(points @ rotation.T + 5.0, points), points, atol=1e-12)


# ---- cell change --------------------------------------------------------------------

def test_cell_change_per_dimensionality():
    cell = np.diag([3.0, 4.0, 20.0])
    strained = np.diag([3.3, 4.0, 25.0])  # +10 % along a; the vacuum vector changes too
    assert cell_change(strained, cell, "abc") == pytest.approx(1.1 * 1.25 - 1)
    assert cell_change(strained, cell, "ab") == pytest.approx(0.1)
    assert cell_change(strained, cell, "a") == pytest.approx(0.1)
    assert cell_change(strained, cell, "b") == pytest.approx(0.0)
    assert np.isnan(cell_change(strained, cell, ""))
    tilted = tilted_mos2().cell.array
    assert cell_change(tilted, tilted, "ab") == pytest.approx(0.0)


def test_a_collapsed_cell_does_not_stop_the_batch():
    tubes = [tube(), tube()]
    cells = np.stack([t.cell.array for t in tubes])
    cells[1, 2] = 0.0  # the periodic vector collapsed
    counts = fragments(np.stack([t.numbers for t in tubes]), np.stack([t.positions for t in tubes]), cells, "c")
    assert counts[0] == 1 and counts[1] >= 1


def test_large_structures_are_measured_with_linear_memory_and_the_same_results(monkeypatch):
    tubes = [tube(), tube("a")]
    tubes[1].positions[:12, 1] += 9.0  # half the tube moved sideways: two pieces
    flake = graphene_nanoribbon(4, 3, type="armchair", saturated=True, vacuum=7.5)
    flake.pbc = True
    benzenes = [benzene(), benzene()]
    benzenes[1].positions[:3] += [6.0, 0.0, 0.0]
    rng = np.random.default_rng(3)
    sparse = [Atoms(numbers=rng.choice([1, 6, 8, 29], 60), positions=rng.uniform(-3, 12, (60, 3)),
                    cell=[[9, 0, 0], [3, 8, 0], [1, 2, 10]], pbc=True) for _ in range(4)]  # tilted, unwrapped
    cases = [(tubes[0], "c"), (tubes[1], "a"), (bulk("Si", "diamond", 5.43) * 2, "abc"), (benzenes[0], ""),
             (benzenes[1], ""), (flake, ""), *zip(sparse, ["abc", "ab", "b", ""])]
    small = [(fragments(a.numbers, a.positions, a.cell.array, axes), extent(a.positions, a.cell.array, axes))
             for a, axes in cases]
    monkeypatch.setattr(geometry, "LARGE_STRUCTURE", 1)  # every structure takes the large path
    large = [(fragments(a.numbers, a.positions, a.cell.array, axes), extent(a.positions, a.cell.array, axes))
             for a, axes in cases]
    assert [f for f, _ in large] == [f for f, _ in small]
    assert small[0][0] == 1 and small[1][0] > 1 and small[4][0] > 1  # whole, and pulled apart
    assert np.allclose([e for _, e in large], [e for _, e in small], equal_nan=True)
    line = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [3.0, 3.0, 0.0]])  # collinear: no hull at all
    assert geometry._max_pairwise_distance(line[None])[0] == pytest.approx(np.sqrt(18))


def test_scoring_memory_of_a_large_molecule_stays_linear():
    import tracemalloc

    cloud = np.random.default_rng(0).uniform(0, 60, size=(4000, 3))
    numbers = np.full(4000, 6)
    cell = np.eye(3) * 80.0
    tracemalloc.start()
    fragments(numbers, cloud, cell, "")
    extent(cloud, cell, "")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200 * 2**20  # all pairs at once would hold 4000^2 x 8 bytes several times over


def test_coordination_numbers_of_structures_whose_coordination_is_known():
    from ase.build import bulk, graphene, molecule

    from metrics.geometry import coordination

    def mean(atoms, axes):
        return coordination(atoms.numbers, atoms.positions, atoms.cell.array, axes).mean()

    layer = graphene(vacuum=7.5)
    chain = Atoms("C2", positions=[[5, 5, 0], [5, 5, 1.3]], cell=[10, 10, 2.6], pbc=True)
    cut_dimer = Atoms("N2", positions=[[5, 5, 0.3], [5, 5, 14.5]], cell=[15, 15, 15], pbc=True)  # across the boundary
    assert mean(bulk("Cu", "fcc", 3.61) * (2, 2, 2), "abc") == 12
    for metal, a in (("Fe", 2.87), ("W", 3.16), ("Na", 4.23)):  # the second shell, 15 % further, is not counted
        assert mean(bulk(metal, "bcc", a), "abc") == 8, metal
    assert mean(layer, "ab") == 3 and mean(chain, "c") == 2 and mean(cut_dimer, "") == 1
    assert mean(bulk("Si", "diamond", 5.43), "abc") == 4
    assert mean(bulk("NaCl", "rocksalt", 5.64), "abc") == 6  # not the like ions of the next shell
    ethanol = molecule("CH3CH2OH")
    ethanol.center(vacuum=8)
    assert coordination(ethanol.numbers, ethanol.positions, ethanol.cell.array, "").tolist() == [4, 4, 2, 1, 1, 1,
                                                                                              1, 1, 1]
    lone = Atoms("Au", positions=[[1, 1, 1]], cell=[10, 10, 10], pbc=True)
    assert mean(lone, "") == 0
