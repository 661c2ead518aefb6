"""This project's engines beside TorchSim, the batched engine the field knows: the same model,
structures, torch and machine; speed, and agreement with plain ASE. A benchmark script, not a test.

    python tests/perf/peer_speed.py                                # SevenNet-0 and MACE, 50 crystals, 1 and 2 threads
    python tests/perf/peer_speed.py --peers torchsim-sevennet --structures 10 --threads 1 --repeats 1
    python tests/perf/peer_speed.py --device cuda                  # the first GPU
    python tests/perf/peer_speed.py --here --device cuda           # a GPU node with no container engine
    python tests/perf/peer_speed.py --lock                         # resolve the peer images' packages afresh

Each peer (tests/perf/peer/<name>: a model.yaml, a Dockerfile and a lock of its own, on the
Python 3.13 runtime, as TorchSim 0.6 needs) is an image holding TorchSim, one model family's
package and the project's worker code. Every engine runs in that image, one process per thread
count, its network off, in rounds that interleave the engines (ENGINES; the minimum wall time of
the rounds is reported). `--here` runs the same in this Python instead, where torch-sim, the
model's package and the project's adapters are installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

#: Where the script sits in the checkout (mounted alone as /perf.py in a container: None there).
PERF = Path(__file__).resolve().parent
REPO = PERF.parents[1] if (PERF / "engine_speed.py").exists() else None
PEERS = PERF / "peer"
PROTOCOL = {"variant": "paper", "optimizer": "FIRE", "fmax_ev_per_a": 0.04, "max_steps": 15000,
            "divergence_limit_ev_per_a": 10000.0, "cell_filter": "FrechetCellFilter"}
#: Families whose weights cannot be had here: their package's own random model stands in
#: (SevenNet-0's weights ship in its wheel).
STAND_INS = {"mace"}
#: The engines, in the order each round runs them. TorchSim's: `optimize` with its FIRE
#: (fire_flavor "ase_fire") on its Fréchet cell filter; "default" keeps its defaults (convergence
#: tested every 5 steps, cell forces outside the force criterion), "as ASE" tests every step
#: with cell forces in (what makes it closest to ASE's FIRE on FrechetCellFilter).
ENGINES = {"ase": "plain ASE, one structure after another",
           "sequential": "this project, sequential (ASE's FIRE, filter once a step)",
           "batched": "this project, batched",
           "torchsim-as-ase": "TorchSim, tested every step, cell forces in",
           "torchsim-default": "TorchSim, its defaults (every 5 steps, atom forces)"}


def relax_ase(records: list[dict], calculator, protocol: dict) -> list[dict]:
    """FIRE on ASE's own FrechetCellFilter, as a user would write it (3D structures only)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from adapters.frames import structure_from_record

    out = []
    for record in records:
        atoms = structure_from_record(record)
        atoms.calc = calculator
        optimizer = FIRE(FrechetCellFilter(atoms), logfile=None)
        converged = optimizer.run(fmax=protocol["fmax_ev_per_a"], steps=protocol["max_steps"])
        out.append(result_of(record["id"], atoms, atoms.get_potential_energy(), optimizer.nsteps, converged))
    return out


def result_of(sid: str, atoms, energy: float, steps: int, converged: bool) -> dict:
    return {"id": sid, "steps": int(steps), "converged": bool(converged), "energy_ev": float(energy),
            "positions": atoms.positions.tolist(), "cell": atoms.cell[:].tolist()}


def torchsim_model(family: str, options: dict, device: str):
    """The family's TorchSim ModelInterface, from the checkpoint the project's factory loads."""
    import torch

    if family == "sevennet":
        from torch_sim.models.sevennet import SevenNetModel

        return SevenNetModel(model=options.get("checkpoint") or options["model"], modal=options.get("modal"),
                             device=device)
    if family == "mace":
        from torch_sim.models.mace import MaceModel

        dtype = getattr(torch, options.get("dtype") or "float64")
        return MaceModel(model=torch.load(options["checkpoint"], map_location=device, weights_only=False),
                         device=device, dtype=dtype, compute_forces=True, compute_stress=True)
    raise SystemExit(f"peer_speed: no TorchSim model for the {family!r} family")


def relax_torchsim(records: list[dict], model, protocol: dict, every: int, cell_forces: bool,
                   batch_atoms: int) -> list[dict]:
    """TorchSim's optimize over the records as one queue (its in-flight batcher, sized like the
    project's batch: `batch_atoms` atoms), counting each structure's steps."""
    import torch_sim as ts
    from torch_sim.autobatching import InFlightAutoBatcher
    from torch_sim.optimizers import fire_init, fire_step
    from torch_sim.runners import generate_force_convergence_fn

    from adapters.frames import structure_from_record

    batcher = InFlightAutoBatcher(model, memory_scales_with="n_atoms", max_memory_scaler=batch_atoms)
    steps = [0] * len(records)

    def counted_step(state, model, **kwargs):  # optimize's own step counter is not returned
        for k in batcher.current_idx:
            steps[k] += 1
        return fire_step(state=state, model=model, **kwargs)

    fmax = protocol["fmax_ev_per_a"]
    final = ts.optimize(system=[structure_from_record(r) for r in records], model=model,
                        optimizer=(fire_init, counted_step), max_steps=protocol["max_steps"],
                        convergence_fn=generate_force_convergence_fn(fmax, include_cell_forces=cell_forces),
                        steps_between_swaps=every, autobatcher=batcher,
                        init_kwargs={"cell_filter": ts.CellFilter.frechet}, fire_flavor="ase_fire")
    converged = generate_force_convergence_fn(fmax, include_cell_forces=True)(final).tolist()
    energies = final.energy.detach().cpu().tolist()
    return [result_of(r["id"], atoms, energy, n, ok) for r, atoms, energy, n, ok
            in zip(records, ts.io.state_to_atoms(final), energies, steps, converged)]


def run_engines(records: list[dict], job: dict, batch_atoms: int) -> dict:
    """Every engine of job["engines"] over the records, job["repeats"] interleaved rounds, after
    a warm-up of each; the wall time of every round and the results of the last."""
    from adapters.batched import relax_batched
    from adapters.calculators import make_calculator, make_evaluator
    from adapters.relax import relax_record

    family, options, device = job["calculator"], dict(job["options"]), job["device"]
    if job.get("stand_in"):  # a family whose weights cannot be had here: its package's own random model
        import importlib

        options["checkpoint"] = "/tmp/stand-in.model"
        factory = importlib.import_module(f"adapters.calculators.{family}")
        factory.make_test_checkpoint(options["checkpoint"])
    protocol = {**PROTOCOL, "max_steps": job.get("max_steps", PROTOCOL["max_steps"]),
                "fmax_ev_per_a": job.get("fmax", PROTOCOL["fmax_ev_per_a"])}
    engines = job.get("engines") or list(ENGINES)
    calculator = make_calculator(family, device, options)
    evaluate = make_evaluator(family, device, options) if "batched" in engines else None  # a second copy of the model
    peer = torchsim_model(family, options, device) if any(e.startswith("torchsim") for e in engines) else None

    def batched(records):
        done = {}
        relax_batched(records, evaluate, protocol, lambda sid, result: done.__setitem__(sid, result),
                      batch_atoms=batch_atoms)
        return [{"id": r["id"], **{k: done[r["id"]][k] for k in ("steps", "converged", "energy_ev", "positions",
                                                                "cell")}} for r in records]

    run = {"ase": lambda rs: relax_ase(rs, calculator, protocol),
           "sequential": lambda rs: [relax_record(r, calculator, protocol) for r in rs],
           "batched": batched,
           "torchsim-as-ase": lambda rs: relax_torchsim(rs, peer, protocol, 1, True, batch_atoms),
           "torchsim-default": lambda rs: relax_torchsim(rs, peer, protocol, 5, False, batch_atoms)}
    for engine in engines:
        run[engine](records[:1])  # warm-up: lazy initialisation is no one's cost
    outcome = {engine: {"wall_s": []} for engine in engines}
    for _ in range(job.get("repeats", 1)):
        for engine in engines:
            start = time.perf_counter()
            results = run[engine](records)
            outcome[engine]["wall_s"].append(time.perf_counter() - start)
            outcome[engine]["results"] = results
    return {"engines": outcome, "versions": versions(family)}


def versions(family: str) -> dict:
    """Python and the versions of the packages that set the figures (those installed)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    names = ["torch-sim-atomistic", "torch", "ase", "numpy", "scipy", {"sevennet": "sevenn"}.get(family, f"{family}-torch")]
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:  # (TorchSim, in a model's own image)
            pass
    return {"python": platform.python_version(), **found}


def agreement(results: list[dict], reference: list[dict]) -> dict:
    """Against plain ASE: structures with the same steps, max |ΔE| (meV/atom), |Δr| and |Δcell| (Å)."""
    import numpy as np

    same = sum(a["steps"] == b["steps"] for a, b in zip(results, reference))
    energy = max(abs(a["energy_ev"] - b["energy_ev"]) / len(b["positions"]) * 1000 for a, b in zip(results, reference))
    dr = max(float(np.abs(np.subtract(a["positions"], b["positions"])).max()) for a, b in zip(results, reference))
    dcell = max(float(np.abs(np.subtract(a["cell"], b["cell"])).max()) for a, b in zip(results, reference))
    return {"same_steps": same, "energy_mev": energy, "dr_a": dr, "dcell_a": dcell}


def table(outcome: dict) -> str:
    """One row per engine: the fastest round, and agreement with plain ASE."""
    engines = outcome["engines"]
    reference = engines.get("ase", {}).get("results")
    lines = ["| engine | wall s (min) | structures/s | µs/atom/step | steps identical to ASE | "
             "max \\|ΔE\\| meV/atom | max \\|Δr\\| Å | max \\|Δcell\\| Å |", "| --- " * 8 + "|"]
    for engine, run in engines.items():
        wall = min(run["wall_s"])
        results = run["results"]
        atom_steps = sum(len(r["positions"]) * max(1, r["steps"]) for r in results)
        row = f"| {ENGINES[engine]} | {wall:.2f} | {len(results) / wall:.2f} | {wall / atom_steps * 1e6:,.0f} |"
        if reference is None or engine == "ase":
            row += " reference | – | – | – |" if engine == "ase" else " – | – | – | – |"
        else:
            a = agreement(results, reference)
            row += (f" {a['same_steps']}/{len(results)} | {a['energy_mev']:.2g} | {a['dr_a']:.2g} | "
                    f"{a['dcell_a']:.2g} |")
        lines.append(row)
    return "\n".join(lines)


def ratios(outcome: dict) -> str:
    """The project's batched engine against TorchSim, and each against plain ASE (fastest rounds)."""
    best = {engine: min(run["wall_s"]) for engine, run in outcome["engines"].items()}
    pairs = [("batched", "torchsim-as-ase"), ("batched", "torchsim-default"), ("batched", "ase"),
             ("sequential", "ase"), ("torchsim-as-ase", "ase"), ("torchsim-default", "ase")]
    return ", ".join(f"{a} / {b} {best[a] / best[b]:.2f}" for a, b in pairs if a in best and b in best)


def peer_models(names: list[str]):
    from orchestrator.errors import BenchError
    from orchestrator.models import discover_models

    peers = discover_models(PEERS)
    unknown = [name for name in names if name not in peers]
    if unknown:
        raise BenchError(f"unknown peer {', '.join(unknown)}; choose from {sorted(peers)} (folders of {PEERS})")
    return peers, [peers[name] for name in names]


def measure(args, peer, builder, threads: int, records: list[dict]) -> dict:
    job = {"calculator": peer.calculator, "options": peer.options, "device": args.device,
           "engines": args.engines, "repeats": args.repeats, "max_steps": args.max_steps, "fmax": args.fmax,
           "stand_in": peer.calculator in STAND_INS}
    if args.here:
        return run_engines(records, job, args.batch_atoms)
    from engine_speed import run_in_image

    return run_in_image(builder.model(peer), job, records, threads, args.batch_atoms, script=Path(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="torchsim-sevennet,torchsim-mace",
                        help="comma-separated folders of tests/perf/peer")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--structures", type=int, default=50, help="the first N crystals of the shipped sample")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts, one process each")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the fastest is reported")
    parser.add_argument("--max-steps", type=int, default=PROTOCOL["max_steps"])
    parser.add_argument("--fmax", type=float, default=PROTOCOL["fmax_ev_per_a"],
                        help="eV/Å; a stand-in's random model is nearly flat: a lower one gives it steps to time")
    parser.add_argument("--batch-atoms", type=int, default=2000)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--here", action="store_true", help="every engine in this Python, no container")
    parser.add_argument("--lock", action="store_true", help="instead: resolve and write each peer's lock afresh")
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)  # records file, in the container
    args = parser.parse_args()
    if args.inside:
        job = json.loads(os.environ["ENGINE_SPEED_JOB"])
        records = [json.loads(line) for line in args.inside.read_text().splitlines()]
        print(json.dumps(run_engines(records, job, args.batch_atoms)))
        return

    sys.path.insert(0, str(REPO))  # the orchestrator; with --here, the adapters too
    args.engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(args.engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    from engine_speed import sample_records
    from orchestrator.errors import BenchError
    from orchestrator.images import ImageBuilder, write_lock
    from orchestrator.manifest import load
    from orchestrator.workers.docker import DockerEngine

    try:
        peers, chosen = peer_models([p for p in args.peers.split(",") if p])
        builder = None
        if not args.here:
            builder = ImageBuilder.from_manifest(DockerEngine(), load(REPO / "benchmark.yaml"))
            builder.models = peers
        if args.lock:
            for peer in chosen:
                print(f"wrote {write_lock(builder, peer, command=f'make perf-peer LOCK=1 PEERS={peer.name}')}")
            return
        records = sample_records(args.structures)
        for peer in chosen:
            for threads in [int(t) for t in args.threads.split(",")]:
                if args.here:
                    from orchestrator.workers.spec import worker_threading

                    os.environ.update(worker_threading(threads))  # (read by torch at its first import only)
                outcome = measure(args, peer, builder, threads, records)
                print(f"\n{peer.name}: {peer.description.split(';')[0]}")
                print(f"{len(records)} crystals of the shipped Alexandria sample, {args.device}, {threads} thread(s), "
                      f"{peer.dtype}, fmax {args.fmax:g} eV/Å, batch_atoms {args.batch_atoms}, best of {args.repeats} interleaved round(s), "
                      f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.2f}; "
                      + ", ".join(f"{k} {v}" for k, v in outcome["versions"].items()))
                print(table(outcome))
                print(ratios(outcome))
    except BenchError as err:
        sys.exit(f"peer_speed: {err}")


if __name__ == "__main__":
    main()
