"""Contract check of a model image: the factory builds a calculator, which gives finite
energy, forces and stress on a bulk crystal, a 2D layer and a molecule; for a model with
conservative forces, forces match -dE/dx and the stress matches the strain derivative of
the energy by central finite differences (this catches unit slips such as a stress in GPa);
for a family with a batched forward, that forward on all three at once matches the
calculator one by one; for a multi-head checkpoint (a family with heads, its HEAD_OPTION
set), the chosen head is the checkpoint's, gives other energies than its other heads, and
an unknown head name is refused.

    python -m adapters.contract --job JOB_JSON   ->  one JSON report on stdout, exit 0 if passed

JOB_JSON: calculator, options, device, forces ("conservative" or "direct").

    python -m adapters.contract --job JOB_JSON --make-checkpoint PATH

writes the family's stand-in checkpoint (``make_test_checkpoint`` of its factory: the
package's own constructor, random weights, the package's own file format) for a model
whose real checkpoint cannot be had, with model.yaml's options (the model's own), and prints
its path.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from ase import Atoms
from ase.build import bulk, graphene, molecule

from adapters.calculators import capabilities, family_module, has_batched_forward, make_calculator, make_evaluator

#: Displacement (Å) and strain of the central differences.
STEP_A, STEP_STRAIN = 1e-3, 1e-4
#: Allowed |finite difference - model| (eV/Å; eV/Å³ for stress), plus this fraction of the value.
FORCE_TOL, STRESS_TOL, RELATIVE_TOL = 5e-3, 5e-4, 1e-2


def structures() -> dict[str, Atoms]:
    """A strained, rattled crystal, a layer and a molecule of elements every model (and EMT) knows."""
    crystal = bulk("Cu", "fcc", 3.66, cubic=True)
    crystal.rattle(0.03, seed=1)
    crystal.set_cell(crystal.cell.array @ (np.eye(3) + [[0.01, 0.004, 0], [0.004, -0.006, 0], [0, 0, 0.003]]),
                     scale_atoms=True)
    layer = graphene(vacuum=7.5)
    layer.pbc = True
    layer.rattle(0.03, seed=2)
    water = molecule("H2O")
    water.center(vacuum=7.0)
    water.pbc = True
    water.rattle(0.03, seed=3)
    return {"bulk Cu": crystal, "graphene layer": layer, "water molecule": water}


def energy(atoms: Atoms, calculator) -> float:
    atoms.calc = calculator
    return float(atoms.get_potential_energy())


def force_deviation(atoms: Atoms, calculator) -> tuple[float, bool]:
    """max |(-dE/dx by central differences) - F| over a few Cartesian components, and
    whether each is within FORCE_TOL + RELATIVE_TOL |F|."""
    atoms.calc = calculator
    forces = atoms.get_forces().copy()
    worst, ok = 0.0, True
    for i, k in [(0, 0), (len(atoms) - 1, 2), (len(atoms) // 2, 1)]:
        shifted = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, k] += sign * STEP_A
            shifted.append(energy(moved, calculator))
        numeric = -(shifted[0] - shifted[1]) / (2 * STEP_A)
        worst = max(worst, abs(numeric - forces[i, k]))
        ok &= abs(numeric - forces[i, k]) <= FORCE_TOL + RELATIVE_TOL * abs(forces[i, k])
    return float(worst), bool(ok)


def stress_deviation(atoms: Atoms, calculator) -> tuple[float, bool]:
    """max |(dE/d(strain) / V by central differences) - stress| over xx, zz and xy (ASE's
    sign), and whether each is within STRESS_TOL + RELATIVE_TOL |stress|."""
    atoms.calc = calculator
    stress = atoms.get_stress(voigt=False).copy()
    volume = atoms.get_volume()
    worst, ok = 0.0, True
    for a, b in [(0, 0), (2, 2), (0, 1)]:
        strained = []
        for sign in (1, -1):
            strain = np.zeros((3, 3))
            strain[a, b] += sign * STEP_STRAIN / (1 if a == b else 2)
            strain[b, a] = strain[a, b]
            moved = atoms.copy()
            moved.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
            strained.append(energy(moved, calculator))
        numeric = (strained[0] - strained[1]) / (2 * STEP_STRAIN) / volume
        worst = max(worst, abs(numeric - stress[a, b]))
        ok &= abs(numeric - stress[a, b]) <= STRESS_TOL + RELATIVE_TOL * abs(stress[a, b])
    return float(worst), bool(ok)


def check(job: dict) -> dict:
    calculator = make_calculator(job["calculator"], job.get("device", "cpu"), job.get("options", {}))
    report, passed = {"structures": {}}, True
    for name, atoms in structures().items():
        atoms.calc = calculator
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        finite = bool(np.isfinite(e) and np.isfinite(f).all() and np.isfinite(s).all()
                      and f.shape == (len(atoms), 3) and s.shape == (6,))
        report["structures"][name] = {"energy_ev": float(e), "max_force_ev_per_a": float(np.abs(f).max()),
                                      "finite": finite}
        passed &= finite
    if job.get("forces", "conservative") == "conservative":
        forces = [force_deviation(a, calculator) for a in structures().values()]
        stress, stress_ok = stress_deviation(structures()["bulk Cu"], calculator)
        report["force_deviation_ev_per_a"] = max(worst for worst, _ in forces)
        report["stress_deviation_ev_per_a3"] = stress
        passed &= all(ok for _, ok in forces) and stress_ok
    head_option = family_module(job["calculator"]).HEAD_OPTION if "heads" in capabilities(job["calculator"]) else None
    if head_option and job.get("options", {}).get(head_option):
        report["head"] = head_check(job, calculator, head_option)
        passed &= report["head"]["passed"]
    if has_batched_forward(job["calculator"]):
        deviation = batched_deviation(job, calculator)
        report["batched_deviation"] = deviation
        passed &= all(deviation[key] <= limit for key, limit in BATCHED_TOL.items())
    report["passed"] = bool(passed)
    return report


#: Energies of two heads closer than this (eV) count as the same head.
HEAD_ENERGY_TOL = 1e-6


def head_check(job: dict, calculator, head_option: str) -> dict:
    """A multi-head (multi-fidelity, multi-task) checkpoint: the chosen head is one of the
    checkpoint's, its energy on the bulk crystal differs from every other head's (so the
    option reaches the model), and a head name the checkpoint lacks is refused."""
    options = job.get("options", {})
    chosen = options[head_option]
    available = family_module(job["calculator"]).heads(calculator)
    crystal = structures()["bulk Cu"]
    energies = {head: energy(crystal.copy(), calculator if head == chosen else make_calculator(
        job["calculator"], job.get("device", "cpu"), {**options, head_option: head})) for head in available}
    try:
        make_calculator(job["calculator"], job.get("device", "cpu"), {**options, head_option: "no-such-head"})
        refused = False
    except Exception:  # noqa: BLE001 - however the package refuses it (deepmd asserts)
        refused = True
    distinct = all(abs(e - energies[chosen]) > HEAD_ENERGY_TOL for head, e in energies.items() if head != chosen)
    return {"chosen": chosen, "heads": available, "energy_ev": energies, "unknown_head_refused": refused,
            "passed": bool(chosen in available and len(available) > 1 and distinct and refused)}


#: Allowed |batched forward - calculator| (eV/atom, eV/Å, eV/Å³): float32 summation order only.
BATCHED_TOL = {"energy_ev_per_atom": 1e-4, "force_ev_per_a": 1e-3, "stress_ev_per_a3": 1e-4}


def batched_deviation(job: dict, calculator) -> dict:
    """The family's batched forward (make_batched) on the three structures in one call,
    against its calculator one structure at a time: the largest differences."""
    frames = list(structures().values())
    for k, atoms in enumerate(frames):
        atoms.info.update(id=f"contract-{k}", needs_stress=True)
    outputs = make_evaluator(job["calculator"], job.get("device", "cpu"), job.get("options", {}))(frames)
    worst = dict.fromkeys(BATCHED_TOL, 0.0)
    for atoms, output in zip(frames, outputs):
        if isinstance(output, Exception):
            raise output
        e, f, s = output
        atoms.calc = calculator
        worst["energy_ev_per_atom"] = max(worst["energy_ev_per_atom"],
                                          abs(e - atoms.get_potential_energy()) / len(atoms))
        worst["force_ev_per_a"] = max(worst["force_ev_per_a"], float(np.abs(f - atoms.get_forces()).max()))
        worst["stress_ev_per_a3"] = max(worst["stress_ev_per_a3"], float(np.abs(s - atoms.get_stress()).max()))
    return {key: float(value) for key, value in worst.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="JSON: calculator, options, device, forces")
    parser.add_argument("--make-checkpoint", metavar="PATH",
                        help="instead: write the family's stand-in checkpoint (made with the package's own "
                             "constructor) to PATH, with the model's own options")
    args = parser.parse_args(argv)
    job = json.loads(args.job)
    if args.make_checkpoint:
        options = {k: v for k, v in job.get("options", {}).items() if k != "checkpoint"}
        family_module(job["calculator"]).make_test_checkpoint(args.make_checkpoint, **options)
        print(json.dumps({"checkpoint": args.make_checkpoint}))
        return 0
    report = check(job)
    print(json.dumps(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
