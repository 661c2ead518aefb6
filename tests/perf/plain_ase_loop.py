"""The paper's relaxation written as a plain ASE loop, for bulk (3D) structures.

Runs inside a model image, with no pipeline around it:
    python plain_ase_loop.py CALCULATOR OPTIONS_JSON SHARD.jsonl > out.jsonl
It shares only the calculator factory with the pipeline, so a test comparing
the two checks the pipeline's own relaxation code against textbook ASE.
"""

import json
import sys
import time

from ase import Atoms
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from adapters.calculators import make_calculator


def main(family: str, options: str, shard: str) -> None:
    calc = make_calculator(family, "cpu", json.loads(options))
    for line in open(shard):
        record = json.loads(line)
        if record["periodic_axes"] != "abc":
            raise SystemExit(f"{record['id']}: the plain loop covers 3D structures only")
        atoms = Atoms(numbers=record["numbers"], positions=record["positions"], cell=record["cell"], pbc=True)
        atoms.calc = calc
        start = time.perf_counter()
        opt = FIRE(FrechetCellFilter(atoms), logfile=None)
        converged = opt.run(fmax=0.04, steps=15000)
        print(json.dumps({"id": record["id"], "converged": bool(converged), "steps": opt.nsteps,
                          "energy_ev": float(atoms.get_potential_energy()),
                          "positions": atoms.positions.tolist(), "wall_s": time.perf_counter() - start}),
              flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
