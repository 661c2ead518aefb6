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


# --------------------------------------------------------------------------------------
# Measures of a relaxed structure. Every function below takes one structure (positions
# (N, 3), cell (3, 3)) or a batch of structures of equal size and equal periodic axes
# (positions (B, N, 3), cell (B, 3, 3)) and returns a float or a (B,) array: scoring
# 40,000 relaxations is a few hundred numpy calls, not 40,000 Python loops.
# --------------------------------------------------------------------------------------

#: Two atoms are bonded when closer than this multiple of the sum of their covalent
#: radii (ase.neighborlist.natural_cutoffs(atoms, mult=BOND_MULTIPLIER)). Covalent and
#: metallic bonds are at most ~1.1x the sum, non-bonded contacts ~1.4x and more: 1.25
#: sits in the gap, so a bond stretched by a few per cent does not count as broken.
BOND_MULTIPLIER = 1.25

#: Numbers (float64) held by one vectorised chunk: ~64 MB.
_CHUNK_ELEMENTS = 8_000_000
#: Atoms above which a structure's pair measures use a neighbour list or a convex hull
#: instead of every pair at once (memory linear in the atoms, not quadratic).
LARGE_STRUCTURE = 500


def axes_mask(axes: str) -> np.ndarray:
    """Boolean mask over the lattice vectors a, b, c: True where periodic."""
    return np.array([axis in axes for axis in AXES])


def _batched(positions, cell):
    """(B, N, 3) positions and (B, 3, 3) cells, and whether the input was one structure."""
    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float)
    single = positions.ndim == 2
    if single:
        positions, cell = positions[None], cell[None]
    return positions, cell, single


def _out(values, single):
    return float(values[0]) if single else values


def _chunks(n_items: int, per_item: int):
    """Slices of a batch so that each chunk holds about _CHUNK_ELEMENTS numbers."""
    step = max(1, _CHUNK_ELEMENTS // max(per_item, 1))
    return [slice(i, i + step) for i in range(0, n_items, step)]


def _scaled(positions, cell):
    """Fractional coordinates (B, N, 3) and a (B,) mask of the cells that can be inverted.

    A singular cell (an Atoms without a cell, as a bare molecule has) gives zeros, and
    the callers use the Cartesian positions as they are.
    """
    ok = np.abs(np.linalg.det(cell)) > 1e-6
    safe = np.where(ok[:, None, None], cell, np.eye(3))
    return np.einsum("bnj,bjk->bnk", positions, np.linalg.inv(safe)) * ok[:, None, None], ok


def contiguity_shifts(positions, cell, axes: str) -> np.ndarray:
    """(B, N, 3) (or (N, 3)) whole numbers of lattice vectors that make the atoms
    contiguous along every non-periodic lattice vector (see unwrap_vacuum); zero along
    the periodic ones and for a singular cell."""
    positions, cell, single = _batched(positions, cell)
    frac, ok = _scaled(positions, cell)
    n_atoms = positions.shape[1]
    shift = np.zeros_like(frac)
    for k in np.flatnonzero(~axes_mask(axes)):
        f = np.mod(frac[..., k], 1.0)
        s = np.sort(f, axis=1)
        gaps = np.diff(np.concatenate([s, s[:, :1] + 1.0], axis=1), axis=1)
        # the first atom after the widest gap starts the contiguous stretch
        start = np.take_along_axis(s, ((gaps.argmax(axis=1) + 1) % n_atoms)[:, None], axis=1)
        shift[..., k] = np.round(np.mod(f - start, 1.0) + start - frac[..., k])
    shift *= ok[:, None, None]
    return shift[0] if single else shift


def unwrap_vacuum(positions, cell, axes: str) -> np.ndarray:
    """Cartesian positions made contiguous along every non-periodic lattice vector.

    Along each lattice vector not in `axes`, atoms are moved by whole lattice vectors
    so that the widest empty slab (the vacuum, as in vacuum_gaps) lies across the cell
    boundary and the atoms sit together on one side of it: an atom that a code wrapped
    to the far side of the vacuum comes back next to its neighbours. Atoms already on
    the right side do not move. Periodic directions are left alone. A structure with a
    singular cell is returned as it is.
    """
    positions, cell, single = _batched(positions, cell)
    out = positions + np.einsum("bnj,bjk->bnk", contiguity_shifts(positions, cell, axes), cell)
    return out[0] if single else out


def rotations_onto_z(directions) -> np.ndarray:
    """(B, 3, 3) proper rotations taking each (B, 3) direction onto +z (Rodrigues; the
    identity for a direction already along +z, a half turn about x for one along -z)."""
    u = np.asarray(directions, dtype=float)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    v = np.stack([u[:, 1], -u[:, 0], np.zeros(len(u))], axis=1)  # u x z
    c = u[:, 2]
    skew = np.zeros((len(u), 3, 3))
    skew[:, 0, 2], skew[:, 1, 2], skew[:, 2, 0], skew[:, 2, 1] = v[:, 1], -v[:, 0], -v[:, 1], v[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        rotation = np.eye(3) + skew + skew @ skew / (1.0 + c)[:, None, None]
    rotation[c < -1.0 + 1e-12] = np.diag([1.0, -1.0, -1.0])
    return rotation


def _max_pairwise_distance(points) -> np.ndarray:
    """(B,) largest distance between any two of the (B, N, 3) points. A large structure
    is measured on its convex hull (the farthest pair are hull vertices), so memory stays
    linear in its atoms."""
    n = points.shape[1]
    if n > LARGE_STRUCTURE:
        return np.array([_all_pairs_max(_hull(p)[None])[0] for p in points])
    return _all_pairs_max(points)


def _all_pairs_max(points) -> np.ndarray:
    """_max_pairwise_distance over every pair at once, in chunks of structures."""
    n = points.shape[1]
    result = np.empty(points.shape[0])
    for part in _chunks(points.shape[0], n * n):
        p = points[part] - points[part].mean(axis=1, keepdims=True)
        sq = np.einsum("bni,bni->bn", p, p)
        d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * np.einsum("bni,bmi->bnm", p, p)
        result[part] = np.sqrt(np.clip(d2.reshape(len(p), -1).max(axis=1), 0.0, None))
    return result


def _hull(points: np.ndarray) -> np.ndarray:
    """The vertices of the convex hull of (N, 3) points; of their plane's hull when they
    are flat (a planar molecule), and the two ends when they lie on a line."""
    from scipy.spatial import ConvexHull, QhullError

    try:
        return points[ConvexHull(points).vertices]
    except QhullError:
        centred = points - points.mean(axis=0)
        axes = np.linalg.svd(centred, full_matrices=False)[2]
        try:
            return points[ConvexHull(centred @ axes[:2].T).vertices]
        except QhullError:
            along = centred @ axes[0]
            return points[[along.argmin(), along.argmax()]]


def _span(pos, cell, axes: str) -> np.ndarray:
    """(B,) size across the non-periodic directions of (B, N, 3) positions taken as they
    are (no unwrapping): see extent."""
    periodic = np.flatnonzero(axes_mask(axes))
    if len(periodic) == 3:
        return np.full(len(pos), np.nan)
    if len(periodic) == 2:
        normal = np.cross(cell[:, periodic[0]], cell[:, periodic[1]])
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        height = np.einsum("bni,bi->bn", pos, normal)
        return height.max(axis=1) - height.min(axis=1)
    if len(periodic) == 1:
        upright = np.einsum("bij,bnj->bni", rotations_onto_z(cell[:, periodic[0]]), pos)
        spans = upright[..., :2].max(axis=1) - upright[..., :2].min(axis=1)
        return spans.max(axis=1)
    return _max_pairwise_distance(pos)


def extent(positions, cell, axes: str):
    """Size of a low-dimensional structure across its non-periodic directions (Å), from
    its own geometry alone (the PBE structure's; a relaxed one is measured by
    followed_extent).

    The positions are first made contiguous along the non-periodic lattice vectors
    (unwrap_vacuum), so a structure straddling the cell boundary is measured whole.

    - 2D (two periodic vectors a1, a2): thickness, the spread of the positions along
      the unit normal a1 x a2 / |a1 x a2| of the periodic plane (max - min).
    - 1D (one periodic vector a1): width as the authors' code measures it
      (adjust_vacuum_1D): in the frame where a1 lies along z, the larger of the spans
      (max - min) along x and along y, each of which is tested against the limit.
    - 0D: diameter, the largest interatomic distance.
    - 3D: NaN (nothing to measure).

    Periodic translations do not change any of these, so periodic directions need no
    unwrapping.
    """
    positions, cell, single = _batched(positions, cell)
    if axes_mask(axes).all():
        return _out(np.full(len(positions), np.nan), single)
    return _out(_span(unwrap_vacuum(positions, cell, axes), cell, axes), single)


#: A relaxed atom displaced from its PBE twin, about the structure's mean displacement, by
#: more than this fraction of a non-periodic lattice vector has gone past half the cell:
#: nearer a periodic image of its partners than to where it started, which of them it
#: belongs with is ambiguous.
AMBIGUOUS_DISPLACEMENT = 0.5


def follow(positions, cell, ref_positions, ref_cell, axes: str):
    """Relaxed positions followed continuously from the PBE structure, atom by atom.

    The workers never wrap positions (the authors' variant undoes its own re-centring),
    so a relaxed atom is where it went. The reference is made contiguous across the
    vacuum (unwrap_vacuum: Alexandria stores molecules and slabs cut by the cell
    boundary) and each relaxed atom is moved by the same whole lattice vectors as its
    twin, in its own cell; along the periodic lattice vectors, where a slide or a wrap is
    a lattice equivalence, each atom is brought to the image nearest its twin about the
    mean displacement (unwrap_to_reference). Nothing is wrapped across the vacuum: a
    layer that drifted away from its partner is measured where it went, not next to a
    periodic image of it.

    Returns (followed positions, contiguous reference positions, ambiguous), the last a
    (B,) bool (or a bool): some atom moved, about the mean, by more than
    AMBIGUOUS_DISPLACEMENT of a non-periodic lattice vector.
    """
    positions, cell, single = _batched(positions, cell)
    ref_positions = np.asarray(ref_positions, dtype=float).reshape(positions.shape)
    ref_cell = np.asarray(ref_cell, dtype=float).reshape(cell.shape)
    shifts = contiguity_shifts(ref_positions, ref_cell, axes)
    ref_positions = ref_positions + np.einsum("bnj,bjk->bnk", shifts, ref_cell)
    followed = positions + np.einsum("bnj,bjk->bnk", shifts, cell)
    followed = unwrap_to_reference(followed, cell, ref_positions, ref_cell, axes)
    vacuum = ~axes_mask(axes)
    ambiguous = np.zeros(len(positions), bool)
    if vacuum.any():
        frac, _ = _scaled(followed, cell)
        ref_frac, _ = _scaled(ref_positions, ref_cell)
        moved = (frac - ref_frac)[..., vacuum]
        moved -= moved.mean(axis=1, keepdims=True)
        ambiguous = (np.abs(moved) > AMBIGUOUS_DISPLACEMENT).any(axis=(1, 2))
    if single:
        return followed[0], ref_positions[0], bool(ambiguous[0])
    return followed, ref_positions, ambiguous


def followed_extent(followed, cell, axes: str):
    """The measure of `extent` on a relaxed structure's positions followed from the PBE
    structure (see follow), as they are: never modulo the cell."""
    followed, cell, single = _batched(followed, cell)
    return _out(_span(followed, cell, axes), single)


def _image_offsets(cell, axes: str, reach: float) -> np.ndarray:
    """Integer lattice translations (M, 3), along periodic axes only, that can bring an
    image of an atom within `reach` of another atom of the cell (exact for any cell
    shape: a displacement d has |d . b_k| <= |d| along the unit reciprocal vector b_k,
    and the lattice planes of vector k are `spacing_k` apart)."""
    volume = np.abs(np.linalg.det(cell))
    cross = np.linalg.norm(np.cross(cell[:, [1, 2, 0]], cell[:, [2, 0, 1]]), axis=2)
    spacing = volume[:, None] / np.where(cross > 0, cross, np.inf)
    with np.errstate(divide="ignore"):
        reach_k = np.floor(reach / spacing + 0.5).max(axis=0)
    ranges = [np.arange(-int(r), int(r) + 1) if periodic and np.isfinite(r) else np.zeros(1, int)
              for r, periodic in zip(reach_k, axes_mask(axes))]
    return np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3).astype(float)


def bonded(numbers, positions, cell, axes: str, multiplier: float = BOND_MULTIPLIER,
           unwrap: bool = True) -> np.ndarray:
    """(B, N, N) (or (N, N)) bond matrix: atoms i and j are bonded when some image of j,
    translated along the periodic axes only, lies closer to i than
    multiplier x (r_cov(i) + r_cov(j)) (ASE covalent radii, as natural_cutoffs).

    With `unwrap`, positions are first made contiguous across the vacuum (unwrap_vacuum),
    so a stored molecule cut by the cell boundary stays in one piece; without, they are
    taken where they are (a relaxed structure's followed positions: a layer that drifted
    across the vacuum is not joined again to an image of its partner).
    """
    from ase.data import covalent_radii

    positions, cell, single = _batched(positions, cell)
    numbers = np.broadcast_to(np.asarray(numbers), positions.shape[:2])
    pos = unwrap_vacuum(positions, cell, axes) if unwrap else positions
    mask = axes_mask(axes)
    frac, ok = _scaled(pos, cell)
    if mask.any() and not ok.all():  # a collapsed cell has no images: bonds within the cell only
        result = np.zeros(pos.shape[:2] + (pos.shape[1],), dtype=bool)
        result[ok] = bonded(numbers[ok], pos[ok], cell[ok], axes, multiplier, unwrap=False)
        result[~ok] = bonded(numbers[~ok], pos[~ok], cell[~ok], "", multiplier, unwrap=False)
        return result[0] if single else result
    cutoff = multiplier * covalent_radii[numbers]
    n = pos.shape[1]
    first, second = np.triu_indices(n, 1)  # each pair once
    near = np.zeros((len(pos), len(first)), dtype=bool)
    for part in _chunks(len(pos), len(first) * 8):
        cut2 = (cutoff[part][:, first] + cutoff[part][:, second]) ** 2
        if mask.any():
            dfrac = frac[part][:, second] - frac[part][:, first]
            dfrac[..., mask] -= np.round(dfrac[..., mask])
            delta = np.moveaxis(dfrac @ cell[part], -1, 0)  # (3, b, pairs)
            offsets = _image_offsets(cell[part], axes, float(np.sqrt(cut2.max(initial=0.0))))
            shifts = np.einsum("mk,bkl->mlb", offsets, cell[part])[..., None]  # (M, 3, b, 1)
            hit = np.zeros(cut2.shape, dtype=bool)
            for shift in shifts:  # a running test over the images: no (b, pairs, M) array
                d2 = (delta[0] + shift[0]) ** 2
                d2 += (delta[1] + shift[1]) ** 2
                d2 += (delta[2] + shift[2]) ** 2
                hit |= d2 <= cut2
            near[part] = hit
        else:
            d = pos[part][:, second] - pos[part][:, first]
            near[part] = np.einsum("bpi,bpi->bp", d, d) <= cut2
    result = np.zeros(pos.shape[:2] + (n,), dtype=bool)
    result[:, first, second] = near
    result[:, second, first] = near
    return result[0] if single else result


def count_components(adjacency) -> np.ndarray | int:
    """Number of connected pieces of each (N, N) (or (B, N, N)) bond matrix, found by
    scipy.sparse.csgraph.connected_components over one block-diagonal graph."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    adjacency = np.asarray(adjacency, dtype=bool)
    single = adjacency.ndim == 2
    if single:
        adjacency = adjacency[None]
    batch, n = adjacency.shape[:2]
    if n == 0:
        return 0 if single else np.zeros(batch, int)
    b, i, j = np.nonzero(adjacency)
    graph = coo_matrix((np.ones(len(b), bool), (b * n + i, b * n + j)), shape=(batch * n,) * 2)
    _, labels = connected_components(graph, directed=False)
    labels = np.sort(labels.reshape(batch, n), axis=1)
    counts = 1 + (np.diff(labels, axis=1) != 0).sum(axis=1)
    return int(counts[0]) if single else counts


def fragments(numbers, positions, cell, axes: str, multiplier: float = BOND_MULTIPLIER, unwrap: bool = True):
    """Number of covalently bonded pieces (see bonded, and its `unwrap`), per structure.
    Structures of more than LARGE_STRUCTURE atoms are bonded through a neighbour list, one
    at a time (the same bonds; memory linear in the atoms)."""
    positions, cell, single = _batched(positions, cell)
    numbers = np.broadcast_to(np.asarray(numbers), positions.shape[:2])
    if positions.shape[1] <= LARGE_STRUCTURE:
        counts = count_components(bonded(numbers, positions, cell, axes, multiplier, unwrap))
    else:
        positions = unwrap_vacuum(positions, cell, axes) if unwrap else positions
        counts = np.array([_pieces_by_neighbour_list(z, p, c, axes, multiplier)
                           for z, p, c in zip(numbers, positions, cell)])
    return int(counts[0]) if single else counts


def _pieces_by_neighbour_list(numbers, positions, cell, axes: str, multiplier: float) -> int:
    """bonded + count_components for one large structure: the same bonds (an image of j
    along the periodic axes within multiplier x (r_cov(i) + r_cov(j)) of i), found with a
    k-d tree over the atoms and their images near the cell; positions taken as they are."""
    from ase.data import covalent_radii
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pos = positions
    cutoff = multiplier * covalent_radii[numbers]
    reach = 2.0 * float(cutoff.max())
    periodic = axes_mask(axes) if abs(np.linalg.det(cell)) > 1e-6 else np.zeros(3, bool)  # collapsed: no images
    if periodic.any():  # into the cell along the periodic axes, then every image that can come within reach
        frac = np.linalg.solve(cell.T, pos.T).T
        frac[:, periodic] %= 1.0
        pos = frac @ cell
        spacing = abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        ranges = [np.arange(-r, r + 1) if on else np.zeros(1, int)
                  for r, on in zip(np.ceil(reach / spacing).astype(int) + 1, periodic)]
        shifts = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3) @ cell
    else:
        shifts = np.zeros((1, 3))
    images = (pos[None] + shifts[:, None]).reshape(-1, 3)
    near = cKDTree(pos).sparse_distance_matrix(cKDTree(images), reach, output_type="coo_matrix")
    first, second = near.row, near.col % len(pos)
    bond = (near.data <= cutoff[first] + cutoff[second]) & (first != second)
    graph = coo_matrix((np.ones(int(bond.sum()), bool), (first[bond], second[bond])), shape=(len(pos),) * 2)
    return int(connected_components(graph, directed=False)[0])


def unwrap_to_reference(positions, cell, ref_positions, ref_cell, axes: str) -> np.ndarray:
    """Model positions with wrapping undone, atom by atom, against the reference.

    Each atom's fractional displacement along the lattice vectors in `axes`, model
    (in the model's cell) minus reference (in the PBE cell), is reduced to its minimum
    image: the whole number of lattice vectors it contains is removed. The rounding is
    done about the structure's mean displacement (a circular mean, so a rigidly
    translated or slid structure is not torn apart at +-half a cell), and the removed
    translations are lattice vectors of the model's own cell: that is how a code wraps
    an atom, and it stays exact when the relaxation changed or rotated the cell (with
    an unchanged cell it is the same as using the PBE cell). Lattice vectors not in
    `axes` are not touched.
    """
    positions, cell, single = _batched(positions, cell)
    ref_positions = np.asarray(ref_positions, dtype=float).reshape(positions.shape)
    ref_cell = np.asarray(ref_cell, dtype=float).reshape(cell.shape)
    mask = axes_mask(axes)
    if not mask.any():
        return positions[0] if single else positions
    frac, _ = _scaled(positions, cell)
    ref_frac, _ = _scaled(ref_positions, ref_cell)
    dfrac = frac - ref_frac
    phase = np.exp(2j * np.pi * dfrac).mean(axis=1, keepdims=True)
    centre = np.angle(phase) / (2.0 * np.pi)
    wraps = np.round(dfrac - centre) * mask
    out = positions - np.einsum("bnj,bjk->bnk", wraps, cell)
    return out[0] if single else out


def kabsch_align(positions, ref_positions) -> np.ndarray:
    """`positions` moved rigidly (proper rotation + translation, no reflection) onto
    `ref_positions` by the Kabsch algorithm: the least-squares superposition. Works on
    (N, 3) or (B, N, 3) arrays (one batched SVD)."""
    p = np.asarray(positions, dtype=float)
    q = np.asarray(ref_positions, dtype=float)
    single = p.ndim == 2
    if single:
        p, q = p[None], q[None]
    p_mean, q_mean = p.mean(axis=1, keepdims=True), q.mean(axis=1, keepdims=True)
    pc, qc = p - p_mean, q - q_mean
    u, _, vt = np.linalg.svd(np.einsum("bni,bnj->bij", pc, qc))
    d = np.sign(np.linalg.det(np.einsum("bij,bjk->bik", u, vt)))
    d[d == 0] = 1.0
    u[:, :, 2] *= d[:, None]
    rotation = np.einsum("bij,bjk->bik", u, vt)
    out = np.einsum("bni,bij->bnj", pc, rotation) + q_mean
    return out[0] if single else out


def position_errors(positions, cell, ref_positions, ref_cell, axes: str):
    """(MAE, RMSD) in Å of a relaxed structure against its PBE reference.

    Atom i of the model is compared with atom i of the reference (no permutations). The
    model's positions are followed from the reference (see follow: the reference made
    contiguous across the vacuum and each model atom moved as its twin, wraps along the
    periodic lattice vectors undone about the mean displacement); the model is
    superposed on the reference by Kabsch
    (rotation + translation), and MAE = mean over the 3N Cartesian components of
    |x_model - x_ref| and RMSD = sqrt(mean over the N atoms of |r_model - r_ref|^2).
    """
    followed, ref_positions, _ = follow(positions, cell, ref_positions, ref_cell, axes)
    return aligned_errors(followed, ref_positions)


def aligned_errors(followed, ref_positions):
    """(MAE, RMSD) of positions already followed from the reference (follow), after a
    Kabsch superposition."""
    followed, ref_positions = np.asarray(followed, dtype=float), np.asarray(ref_positions, dtype=float)
    single = followed.ndim == 2
    if single:
        followed, ref_positions = followed[None], ref_positions[None]
    diff = kabsch_align(followed, ref_positions) - ref_positions
    mae = np.abs(diff).mean(axis=(1, 2))
    rmsd = np.sqrt((diff**2).sum(axis=2).mean(axis=1))
    if single:
        return float(mae[0]), float(rmsd[0])
    return mae, rmsd


def periodic_measure(cell, axes: str):
    """Volume (3D), area |a1 x a2| of the two periodic vectors (2D), length of the
    periodic vector (1D); NaN for 0D. For (3, 3) or (B, 3, 3) cells."""
    cell = np.asarray(cell, dtype=float)
    single = cell.ndim == 2
    if single:
        cell = cell[None]
    periodic = np.flatnonzero(axes_mask(axes))
    if len(periodic) == 3:
        value = np.abs(np.linalg.det(cell))
    elif len(periodic) == 2:
        value = np.linalg.norm(np.cross(cell[:, periodic[0]], cell[:, periodic[1]]), axis=1)
    elif len(periodic) == 1:
        value = np.linalg.norm(cell[:, periodic[0]], axis=1)
    else:
        value = np.full(len(cell), np.nan)
    return _out(value, single)


def cell_change(cell, ref_cell, axes: str):
    """Relative change (model - ref) / ref of periodic_measure: volume (3D), periodic
    area (2D), periodic length (1D); NaN for 0D."""
    return periodic_measure(cell, axes) / periodic_measure(ref_cell, axes) - 1.0


#: The first coordination shell of an atom: its neighbours within COORDINATION_SHELL of its
#: shortest distance to a neighbour (pymatgen's MinimumDistanceNN, tol 0.1: Zimmermann et al.,
#: Front. Mater. 4, 34 (2017)), among the atoms within BOND_MULTIPLIER x the sum of the two
#: covalent radii (a bond, as for the fragments). Hydrogen is judged apart, since a bond to it is
#: far shorter than any other: an atom's bonded hydrogens all count, and its shell among the
#: other elements is measured from its shortest bond to them (ethanol's carbon: 3 H and 1 C).
COORDINATION_SHELL = 1.10


def coordination(numbers, positions, cell, axes: str) -> np.ndarray:
    """Each atom's coordination number in one structure (see COORDINATION_SHELL), images
    along the periodic axes included; positions made contiguous across the vacuum first."""
    from ase.data import covalent_radii
    from ase.neighborlist import primitive_neighbor_list

    numbers = np.asarray(numbers)
    cell = np.asarray(cell, float)
    positions = unwrap_vacuum(np.asarray(positions, float)[None], cell[None], axes)[0]
    mask = axes_mask(axes)
    radii = covalent_radii[numbers]
    box = cell.copy()
    for k in np.flatnonzero(~mask):  # no images across the vacuum: a box around the structure, with room
        box[k] = cell[k] / np.linalg.norm(cell[k]) * (np.ptp(positions @ cell[k] / np.linalg.norm(cell[k]))
                                                      + 4 * BOND_MULTIPLIER * radii.max() + 1.0)
    first, second, distance = primitive_neighbor_list("ijd", mask, box, positions, BOND_MULTIPLIER * radii,
                                                      self_interaction=False)
    hydrogen = numbers[second] == 1
    # the shell is measured among hydrogen for a hydrogen atom, among the other elements otherwise
    judged = ~hydrogen | (numbers[first] == 1)
    shortest = np.full(len(numbers), np.inf)
    np.minimum.at(shortest, first[judged], distance[judged])
    shell = (judged & (distance <= COORDINATION_SHELL * shortest[first])) | (hydrogen & (numbers[first] != 1))
    return np.bincount(first[shell], minlength=len(numbers))
