"""A subset of a dataset: dimensionalities, a reproducible draw per dimensionality, elements,
ids; and the subset's short key for a run folder's name."""

from __future__ import annotations

import hashlib
import random
import re

from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from orchestrator.datasets.records import normalise_dimension, some_ids
from orchestrator.errors import BenchError


def _as_list(value) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value) if v]
    return list(value) or None


def _subset_args(dimensions, limit_per_dimension, seed, elements, ids):
    dims = _as_list(dimensions)
    dims = sorted({normalise_dimension(d) for d in dims}) if dims else None
    els = _as_list(elements)
    if els:
        unknown = [e for e in els if e not in chemical_symbols[1:]]
        if unknown:
            raise BenchError(f"subset elements: {', '.join(map(str, unknown))} not a chemical symbol")
        els = sorted(set(els))
    id_list = _as_list(ids)
    id_list = sorted({str(i) for i in id_list}) if id_list else None
    if limit_per_dimension is not None:
        if isinstance(limit_per_dimension, bool) or int(limit_per_dimension) != limit_per_dimension \
                or limit_per_dimension < 1:
            raise BenchError(f"subset limit_per_dimension must be a positive integer, not {limit_per_dimension!r}")
        limit_per_dimension = int(limit_per_dimension)
    return dims, limit_per_dimension, int(seed or 0), els, id_list


def select(structures, *, dimensions=None, limit_per_dimension=None, seed=0, elements=None, ids=None) -> list[Atoms]:
    """The structures kept by every given filter, in their input order.

    dimensions: labels to keep ("0D".."3D"). elements: keep a structure that contains
    ANY of these elements. ids: keep exactly these ids (an id not in the data is an
    error). limit_per_dimension: then at most N per dimensionality, drawn as
    random.Random(seed).sample(sorted ids, N) separately for each dimensionality, so a
    dimensionality's draw does not depend on which others are selected.
    """
    dims, limit, seed, els, id_list = _subset_args(dimensions, limit_per_dimension, seed, elements, ids)
    keep = list(structures)
    if id_list:
        known = {a.info["id"] for a in keep}
        missing = [i for i in id_list if i not in known]
        if missing:
            raise BenchError(f"subset ids not in the dataset: {some_ids(missing)}")
        wanted = set(id_list)
        keep = [a for a in keep if a.info["id"] in wanted]
    if dims:
        keep = [a for a in keep if a.info["dimension"] in dims]
    if els:
        wanted_z = {atomic_numbers[e] for e in els}
        keep = [a for a in keep if wanted_z.intersection(a.numbers.tolist())]
    if limit:
        chosen = set()
        for dim in sorted({a.info["dimension"] for a in keep}):
            pool = sorted(a.info["id"] for a in keep if a.info["dimension"] == dim)
            chosen.update(random.Random(seed).sample(pool, min(limit, len(pool))))
        keep = [a for a in keep if a.info["id"] in chosen]
    return keep


def subset_key(*, dimensions=None, limit_per_dimension=None, seed=0, elements=None, ids=None) -> str:
    """A short stable name of a selection, "all" when nothing is selected; equal for equal
    selections however they are spelled (order, case of "2d", repeats). E.g.
    "0D+2D_n100s0_el-Fe+O_ids-1a2b3c4d"; the seed appears only with a limit."""
    dims, limit, seed, els, id_list = _subset_args(dimensions, limit_per_dimension, seed, elements, ids)
    parts = []
    if dims:
        parts.append("+".join(dims))
    if limit:
        parts.append(f"n{limit}s{seed}")
    if els:
        text = "+".join(els)
        parts.append("el-" + (text if len(els) <= 6 else hashlib.sha256(text.encode()).hexdigest()[:8]))
    if id_list:
        parts.append("ids-" + hashlib.sha256("\n".join(id_list).encode()).hexdigest()[:8])
    return "_".join(parts) or "all"
