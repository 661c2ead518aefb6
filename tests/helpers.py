"""What the tests share: the project's paths, the commands as a user types them, the relaxation
protocol and job the worker tests send, and hand-made structures of every dimensionality with
writers for the formats the loader reads. Fixtures are in conftest.py; everything here is
imported by name (`from helpers import ...`), never from another test module."""

from __future__ import annotations

import bz2
import json
import os
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc111, molecule, mx2, nanotube
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"  # shipped with the tests (data/README.md): a lone clone has them
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


#: For a bench whose test reads no report: the report is seconds of figures per run.
NO_REPORT = ("--set", "report=false")


def bench_command(*args, results: Path) -> list[str]:
    """`python -m orchestrator bench` on the CPU into `results`, as a user types it."""
    import sys

    return [sys.executable, "-m", "orchestrator", "bench", "--gpus", "cpu", "--set", f"results_dir={results}", *args]


def bench(*args, results: Path, check=True):
    """Run bench_command to its end."""
    import subprocess

    done = subprocess.run(bench_command(*args, results=results), cwd=REPO, capture_output=True, text=True)
    if check and done.returncode:
        raise AssertionError(f"bench failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done


def last_line(done) -> str:
    """The last line a finished command printed: bench's run folder, bundle's archive."""
    return done.stdout.strip().splitlines()[-1]


def make(*args: str, cwd: Path = REPO, timeout: float = 1800, env: dict | None = None):
    """`make` as a user types it in a shell: not as a sub-make of `make test`, whose MAKEFLAGS
    would add "Entering/Leaving directory" lines (and -n, -k...) to what it prints."""
    import subprocess

    env = {k: v for k, v in (env or os.environ).items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    return subprocess.run(["make", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def project_copy(tmp_path: Path) -> Path:
    """The project's files in tmp_path/project, sharing this checkout's host environment."""
    import shutil

    copy = tmp_path / "project"
    shutil.copytree(REPO, copy, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", "__pycache__", ".ci"))
    (copy / ".venv").symlink_to(REPO / ".venv")
    return copy


#: Where the browser tests leave their screenshots (a CI artifact; ignored by git).
SCREENSHOTS = REPO / "test-artifacts" / "browser"


def protocol(**changes) -> dict:
    """The default relaxation protocol (the paper's) as a worker receives it (wire.Job's
    protocol), changed where a test says (max_steps, most often); no fragmentation limits
    unless given."""
    from orchestrator.manifest import SCHEMA

    return {**{key: default for key, (_, default) in SCHEMA["protocol"].items()}, "fragmentation_limits_a": {},
            **changes}


def worker_job(calculator: str = "emt", **fields):
    """A worker's job with the manifest's defaults (the contract's record has none of its own)."""
    from adapters.wire import Job
    from orchestrator.manifest import SCHEMA, STALL_S

    defaults = {"options": {}, "protocol": protocol(), "device": "cpu", "engine": SCHEMA["engine"][1],
                "batch_atoms": SCHEMA["batch_atoms"][1], "structure_timeout_s": SCHEMA["structure_timeout_s"][1],
                "stall_timeout_s": float(STALL_S), "max_retries": SCHEMA["max_worker_retries"][1]}
    return Job(calculator=calculator, **{**defaults, **fields})


def emt_dataset(path: Path) -> list[Atoms]:
    """One structure per dimensionality that EMT knows, plus silicon, which it does not."""
    crystal = bulk("Cu", cubic=True)
    slab = fcc111("Al", (2, 2, 3), vacuum=8.0)
    wire = Atoms("Cu4", positions=[[2.4 * i, 0, 0] for i in range(4)], cell=[9.6, 16, 16], pbc=True)
    wire.center(axis=(1, 2))
    mol = molecule("CO")
    mol.center(vacuum=8.0)
    silicon = bulk("Si")
    frames = []
    for sid, atoms, seed in (("cu-3d", crystal, 1), ("al-2d", slab, 2), ("cu-1d", wire, 3), ("co-0d", mol, 4),
                             ("si-3d", silicon, 5)):
        atoms.rattle(0.02, seed=seed)
        atoms.pbc = True
        atoms.info["mat_id"] = sid
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0 * len(atoms))
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return frames


def slow_emt_dataset(path: Path, count: int = 8) -> None:
    """Rattled 108-atom copper crystals: a second or two each in EMT, time to interrupt."""
    frames = []
    for k in range(count):
        atoms = bulk("Cu", cubic=True) * (3, 3, 3)
        atoms.rattle(0.15, seed=k)
        atoms.pbc = True
        atoms.info["mat_id"] = f"cu108-{k}"
        atoms.calc = SinglePointCalculator(atoms, energy=-3.5 * len(atoms))
        frames.append(atoms)
    write(path, frames, format="extxyz")


def relaxations(*needles: str) -> list[int]:
    """Host pids of the relaxation processes (adapters.relax, under a worker's supervisor) of
    any runtime whose mounts name every needle (the tail of a results folder's path, a shard's
    name): a test's own workers, never those of another run on the same machine. Tails, since
    a mount of a file on another filesystem names it from that filesystem's root."""
    import subprocess

    found = subprocess.run(["pgrep", "-f", "--", "-m adapters.relax"], capture_output=True, text=True).stdout.split()
    pids = []
    for pid in found:
        try:
            mounts = Path(f"/proc/{pid}/mountinfo").read_text()
        except OSError:  # ended meanwhile
            continue
        if all(needle in mounts for needle in needles):
            pids.append(int(pid))
    return pids
