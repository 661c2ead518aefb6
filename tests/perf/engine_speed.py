"""The batched engine against the sequential one, same model, same structures, same
machine: agreement (steps, converged, energies) and speed (structures/s, µs per atom
per step). A benchmark script, not a test.

    python tests/perf/engine_speed.py --model sevennet-0 --structures 100   # in the model's image
    python tests/perf/engine_speed.py --model emt --structures 20
    python tests/perf/engine_speed.py --model mace-mpa-0 --device cuda     # its weights fetched first
    python tests/perf/engine_speed.py --model sevennet-0 --here --device cuda
    python tests/perf/engine_speed.py --model chgnet --breakdown   # the sequential engine's step, by part

On the host it runs itself inside the model's image (built if needed) with the
container's network off and the weights folder mounted as the bench mounts it;
`--inside` is that second half. `--here` runs both engines in this Python instead, for a
GPU node without a container engine where the model's package is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Mounted as /perf.py in the container: the repository is only known on the host.
REPO = Path(__file__).resolve().parents[2] if len(Path(__file__).resolve().parents) > 2 else None
SAMPLE = REPO / "tests" / "data" / "alexandria-pbe-3d-sample200.json.bz2" if REPO else None
PROTOCOL = {"variant": "paper", "optimizer": "FIRE", "fmax_ev_per_a": 0.04, "max_steps": 15000,
            "divergence_limit_ev_per_a": 10000.0, "cell_filter": "FrechetCellFilter"}


def compare(records: list[dict], family: str, options: dict, device: str, batch_atoms: int) -> dict:
    """Relax `records` with both engines in this process; per-structure pairs and timings."""
    from adapters.batched import relax_batched
    from adapters.calculators import make_calculator, make_evaluator
    from adapters.relax import relax_record

    calculator = make_calculator(family, device, options)
    relax_record(records[0], calculator, PROTOCOL)  # warm-up: lazy initialisation is no one's cost
    start = time.perf_counter()
    sequential = {r["id"]: relax_record(r, calculator, PROTOCOL) for r in records}
    sequential_s = time.perf_counter() - start
    evaluate = make_evaluator(family, device, options)
    relax_batched(records[:1], evaluate, PROTOCOL, lambda sid, result: None, batch_atoms=batch_atoms)
    batched = {}
    start = time.perf_counter()
    relax_batched(records, evaluate, PROTOCOL, lambda sid, result: batched.__setitem__(sid, result),
                  batch_atoms=batch_atoms)
    batched_s = time.perf_counter() - start
    atoms = {r["id"]: len(r["numbers"]) for r in records}
    pairs = [{"id": sid, "atoms": atoms[sid], **{f"{k}_seq": sequential[sid].get(k) for k in ("steps", "converged", "energy_ev")},
              **{f"{k}_bat": batched[sid].get(k) for k in ("steps", "converged", "energy_ev")}} for sid in sequential]
    return {"pairs": pairs, "sequential_s": sequential_s, "batched_s": batched_s}


class Clock:
    """Wall time spent in wrapped functions, by part, each call's own (what the wrapped
    functions it calls spent is theirs)."""

    def __init__(self):
        self.spent: dict[str, float] = {}
        self._inner: list[float] = []

    def wrap(self, part: str, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            self._inner.append(0.0)
            try:
                return function(*args, **kwargs)
            finally:
                elapsed, inner = time.perf_counter() - start, self._inner.pop()
                self.spent[part] = self.spent.get(part, 0.0) + elapsed - inner
                if self._inner:
                    self._inner[-1] += elapsed
        return timed


#: The methods of the filters and the optimizer the breakdown times (the model: its calculate).
FILTER_METHODS = ("get_forces", "get_positions", "set_positions", "get_potential_energy")


def breakdown(records: list[dict], family: str, options: dict, device: str) -> dict:
    """The sequential engine's time per step by part (model, cell filter, optimizer, the rest),
    with ASE's own cell filters (the engine before it kept the filter's forces per state) and
    with the engine's; and whether the two relaxed every structure to the same bits."""
    import ase.filters
    from ase.optimize import FIRE

    import adapters.relax as engine
    from adapters.calculators import make_calculator

    clock = Clock()
    calculator = make_calculator(family, device, options)
    calculator.calculate = clock.wrap("model", calculator.calculate)
    for cls in (ase.filters.FrechetCellFilter, ase.filters.UnitCellFilter, engine.ForcesOncePerState):
        for name in FILTER_METHODS:
            if name in vars(cls):
                setattr(cls, name, clock.wrap("filter", vars(cls)[name]))
    FIRE.step = clock.wrap("optimizer", FIRE.step)
    filters = {"ASE's filter (before)": {"FrechetCellFilter": ase.filters.FrechetCellFilter},
               "the engine's (evaluated once a step)": {"FrechetCellFilter": engine.OnceFrechetCellFilter}}
    outcome = {}
    for name, classes in filters.items():
        engine.CELL_FILTERS.update(classes)
        engine.relax_record(records[0], calculator, PROTOCOL)  # warm-up
        clock.spent.clear()
        start = time.perf_counter()
        results = [engine.relax_record(r, calculator, PROTOCOL) for r in records]
        outcome[name] = {"wall_s": time.perf_counter() - start, "parts_s": dict(clock.spent),
                         "steps": [r["steps"] for r in results], "positions": [r.get("positions") for r in results],
                         "atoms": sum(len(r["numbers"]) for r in records)}
    return outcome


def summarize_breakdown(outcome: dict) -> str:
    """ms per step by part for each filter; steps and positions against the first."""
    lines = ["| cell filter | model | filter | optimizer | the rest | total ms/step | steps identical | positions bitwise |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    first = next(iter(outcome.values()))
    for name, run in outcome.items():
        steps = sum(run["steps"])
        parts = {part: run["parts_s"].get(part, 0.0) * 1000 / steps for part in ("model", "filter", "optimizer")}
        total = run["wall_s"] * 1000 / steps
        same_steps = sum(a == b for a, b in zip(run["steps"], first["steps"]))
        same_positions = sum(a == b for a, b in zip(run["positions"], first["positions"]))
        lines.append(f"| {name} | {parts['model']:.2f} | {parts['filter']:.2f} | {parts['optimizer']:.2f} | "
                     f"{total - sum(parts.values()):.2f} | {total:.2f} | {same_steps}/{len(run['steps'])} | "
                     f"{same_positions}/{len(run['steps'])} |")
    return "\n".join(lines)


def profile_batched(records: list[dict], family: str, options: dict, device: str, batch_atoms: int) -> dict:
    """Where the batched engine's time goes (cProfile, after a warm-up): the functions that
    took the most, cumulative and their own, by name."""
    import cProfile
    import pstats

    from adapters.batched import relax_batched
    from adapters.calculators import make_evaluator

    evaluate = make_evaluator(family, device, options)
    relax_batched(records[:1], evaluate, PROTOCOL, lambda sid, result: None, batch_atoms=batch_atoms)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(relax_batched, records, evaluate, PROTOCOL, lambda sid, result: None, batch_atoms=batch_atoms)
    wall = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, primitive, own, cumulative, callers)}
    rows = sorted(((f"{Path(f).parent.name}/{Path(f).name}:{name}", calls, own, cumulative)
                   for (f, _line, name), (_p, calls, own, cumulative, _c) in stats.items()), key=lambda r: -r[3])
    return {"wall_s": wall, "rows": rows[:30]}


def summarize_profile(outcome: dict) -> str:
    lines = [f"batched engine, {outcome['wall_s']:.1f} s under the profiler", "",
             "| function | calls | own s | cumulative s |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {calls} | {own:.2f} | {cumulative:.2f} |" for name, calls, own, cumulative in outcome["rows"]]
    return "\n".join(lines)


def summarize(outcome: dict) -> str:
    """The agreement table (as `make compare` prints it) and the speed of each engine."""
    import pandas as pd

    from metrics.compare import agreement_markdown

    pairs = outcome["pairs"]
    n = len(pairs)
    energy = [abs(p["energy_ev_seq"] - p["energy_ev_bat"]) / p["atoms"] * 1000
              if p["energy_ev_seq"] is not None and p["energy_ev_bat"] is not None else float("nan") for p in pairs]
    rows = pd.DataFrame({"converged_a": [p["converged_seq"] for p in pairs], "steps_a": [p["steps_seq"] for p in pairs],
                         "converged_b": [p["converged_bat"] for p in pairs], "steps_b": [p["steps_bat"] for p in pairs],
                         "energy_mev": energy})
    lines = [agreement_markdown(rows), ""]
    rows = []
    for engine in ("seq", "bat"):
        seconds = outcome["sequential_s" if engine == "seq" else "batched_s"]
        atom_steps = sum(p["atoms"] * max(1, p[f"steps_{engine}"]) for p in pairs)
        rows.append((("sequential (ASE)" if engine == "seq" else "batched"), seconds, n / seconds, seconds / atom_steps * 1e6))
    lines += ["| engine | wall s | structures/s | µs per atom per step |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {s:.1f} | {rate:.2f} | {us:.0f} |" for name, s, rate, us in rows]
    lines += ["", f"speed-up: {rows[0][1] / rows[1][1]:.1f}x"]
    return "\n".join(lines)


def emt_records(count: int) -> list[dict]:
    """Structures EMT knows, of every dimensionality, 1 to 32 atoms, rattled reproducibly."""
    from ase import Atoms
    from ase.build import bulk, fcc111

    from orchestrator.shards import structure_record

    metals = ["Cu", "Al", "Ni", "Ag", "Au", "Pd", "Pt"]
    records = []
    for k in range(count):
        metal, kind = metals[k % len(metals)], k % 4
        if kind == 0:
            atoms = bulk(metal, cubic=True).repeat((1 + k % 2, 1 + k % 3 // 2, 1))
        elif kind == 1:
            atoms = fcc111(metal, (2, 2, 2 + k % 2), vacuum=7.0)
        elif kind == 2:
            atoms = Atoms(metal * 3, positions=[[2.6 * i, 0, 0] for i in range(3)], cell=[7.8, 15, 15])
            atoms.center(axis=(1, 2))
        else:
            atoms = Atoms(metal * 4, positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.2, 0], [1.25, 0.7, 2.1]],
                          cell=[15, 15, 15])
            atoms.center()
        atoms.pbc = True
        atoms.rattle(0.05, seed=k)
        atoms.info.update(id=f"emt-{k:04d}", dimension=f"{3 - kind}D")
        records.append(structure_record(atoms))
    return records


def sample_records(count: int) -> list[dict]:
    from orchestrator.datasets import load_dataset
    from orchestrator.shards import structure_record

    dataset = load_dataset(str(SAMPLE), {}, Path("/tmp"))
    return [structure_record(atoms) for atoms in dataset.structures[:count]]


def run_in_image(image: str, job: dict, records: list[dict], threads: int, batch_atoms: int,
                 mounts: dict[str, str] | None = None, script: Path = Path(__file__)) -> dict:
    """`script --inside` (this one's: compare() or breakdown()) in the model's image, its network
    off, `mounts` (host: container) read-only; job: calculator, options, device. The outcome, parsed."""
    with tempfile.TemporaryDirectory() as work:
        Path(work, "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        volumes = [arg for host, inside in {work: "/work", **(mounts or {})}.items()
                   for arg in ("-v", f"{host}:{inside}:ro")]
        from orchestrator.workers.spec import worker_threading

        thread_env = [arg for name, value in worker_threading(threads).items() for arg in ("-e", f"{name}={value}")]
        command = ["docker", "run", "--rm", "--network", "none", "-e", f"ENGINE_SPEED_JOB={json.dumps(job)}",
                   "-e", "PYTHONPATH=/opt/umlip-0123d", *thread_env, *volumes,
                   *(["--gpus", "1"] if job["device"] == "cuda" else []),
                   "-v", f"{script.resolve()}:/perf.py:ro", image,
                   "python", "/perf.py", "--inside", "/work/records.jsonl", "--batch-atoms", str(batch_atoms)]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sevennet-0")
    parser.add_argument("--structures", type=int, default=100)
    parser.add_argument("--data", choices=("sample", "emt"), default="sample",
                        help="the shared Alexandria 3D sample, or structures of every dimensionality EMT knows")
    parser.add_argument("--batch-atoms", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the first GPU (--gpus 1 for the container)")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="measure again with N busy processes beside it and print the loaded/quiet ratio")
    parser.add_argument("--here", action="store_true",
                        help="both engines in this Python (the model's package installed here), no container")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead: the sequential engine's time per step by part, before and after it kept "
                             "the filter's forces per state")
    parser.add_argument("--profile", action="store_true",
                        help="instead: where the batched engine's time goes (cProfile's functions by cumulative time)")
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)  # records file, in the container
    args = parser.parse_args()
    if args.inside:
        job = json.loads(os.environ["ENGINE_SPEED_JOB"])
        records = [json.loads(line) for line in args.inside.read_text().splitlines()]
        if job.get("breakdown"):
            outcome = breakdown(records, job["calculator"], job["options"], job["device"])
        elif job.get("profile"):
            outcome = profile_batched(records, job["calculator"], job["options"], job["device"], args.batch_atoms)
        else:
            outcome = compare(records, job["calculator"], job["options"], job["device"], args.batch_atoms)
        print(json.dumps(outcome))
        return

    sys.path.insert(0, str(REPO))  # the orchestrator, and for --here the adapters as the image has them
    if args.here:  # before numpy and torch are imported: the workers' threading, the model's threads as asked
        from orchestrator.workers.spec import worker_threading

        os.environ.update(worker_threading(args.threads))
    from orchestrator.errors import BenchError

    from load import quiet_and_loaded

    try:
        (outcome, where), loaded = quiet_and_loaded(lambda: measure(args), args.load)
    except BenchError as err:  # an unknown model, weights that cannot be had, an image that does not build
        sys.exit(f"engine_speed: {err}")
    data = SAMPLE.name if args.data == "sample" else "EMT metals (0D-3D)"
    print(f"{args.model}, {args.structures} structures of {data}, {args.device}, {args.threads} thread(s), "
          f"batch_atoms {args.batch_atoms}, {where}")
    show = summarize_breakdown if args.breakdown else summarize_profile if args.profile else summarize
    print(show(outcome))
    if loaded:
        print(f"\nwith {args.load} busy process(es) beside it:")
        print(show(loaded[0]))
    if loaded and not (args.breakdown or args.profile):
        print("\n| engine | quiet s | loaded s | loaded / quiet |\n| --- | --- | --- | --- |")
        for key, name in (("sequential_s", "sequential (ASE)"), ("batched_s", "batched")):
            print(f"| {name} | {outcome[key]:.1f} | {loaded[0][key]:.1f} | {loaded[0][key] / outcome[key]:.2f} |")


def measure(args) -> tuple[dict, str]:
    """compare() for the model named on the command line, in its image or (--here) in this Python."""
    from orchestrator.errors import BenchError
    from orchestrator.models import discover_models
    from orchestrator.manifest import load
    from adapters.wire import CACHE_MOUNT
    from orchestrator.weights import checkpoint_option, ensure_weights

    manifest = load(REPO / "benchmark.yaml")
    models = discover_models()
    if args.model not in models:
        raise BenchError(f"unknown model {args.model!r}; choose one of {sorted(models)}")
    model = models[args.model]
    records = (emt_records if args.data == "emt" else sample_records)(args.structures)
    weights = manifest.cache.weights
    ensure_weights(model, weights)  # as `make weights`: fetched, or an error saying where to put it
    options = {**model.options, **checkpoint_option(model, weights if args.here else CACHE_MOUNT)}
    if args.here:
        run = breakdown(records, model.calculator, options, args.device) if args.breakdown else \
            profile_batched(records, model.calculator, options, args.device, args.batch_atoms) if args.profile else \
            compare(records, model.calculator, options, args.device, args.batch_atoms)
        return run, f"this Python ({sys.version.split()[0]})"
    from orchestrator.images import ImageBuilder
    from orchestrator.workers.docker import DockerEngine

    image = ImageBuilder.from_manifest(DockerEngine(), manifest).model(model)
    job = {"calculator": model.calculator, "options": options, "device": args.device, "breakdown": args.breakdown,
           "profile": args.profile}
    mounts = {str(weights / model.name): f"{CACHE_MOUNT}/{model.name}"}  # its own weights, as a worker mounts them
    return run_in_image(image, job, records, args.threads, args.batch_atoms, mounts), f"image {image}"


if __name__ == "__main__":
    main()
