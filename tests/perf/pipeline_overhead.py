"""Overhead of the containerised pipeline against a plain ASE loop (make perf).

Relaxes the same N sample structures with CHGNet twice: through `bench` (dataset,
shards, container, merge, scoring, report) and as a plain in-process ASE loop
inside the same image (one `docker run`). Prints wall times, structures per
second and the ratio pipeline/plain. Images are built first and not timed.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SAMPLE = REPO / "tests" / "data" / "alexandria-pbe-3d-sample200.json.bz2"


from orchestrator.workers.spec import Mount, WorkerSpec, worker_threading  # noqa: E402


def run_plain_loop(engine, image: str, calculator: str, options: dict, shard: Path, threads: int) -> list[dict]:
    """plain_ase_loop.py in the model's image on one shard, as least privileged as a worker;
    its JSON lines, parsed."""
    out = engine.output(WorkerSpec(
        image, ["python", "/perf/plain_ase_loop.py", calculator, json.dumps(options), f"/shards/{shard.name}"],
        mounts=[Mount(str(Path(__file__).parent), "/perf"), Mount(str(shard.parent), "/shards")],
        environment={**worker_threading(threads), "PYTHONPATH": "/opt/umlip-0123d"}, threads=threads))
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=50)
    parser.add_argument("--dataset", default=str(SAMPLE))
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="measure again with N busy processes beside it and print the loaded/quiet ratio")
    args = parser.parse_args()

    from load import quiet_and_loaded  # beside this script
    from orchestrator.images import ImageBuilder
    from orchestrator.models import discover_models
    from orchestrator.manifest import load
    from orchestrator.workers.docker import DockerEngine

    manifest = load(REPO / "benchmark.yaml")
    engine = DockerEngine()
    builder = ImageBuilder.from_manifest(engine, manifest)
    model = discover_models()["chgnet"]
    image = builder.model(model)
    threads = os.cpu_count()
    # warm the page cache with the image's libraries, so neither side pays for the first read
    engine.output(WorkerSpec(image, ["python", "-c", "import chgnet.model, torch"]))

    def measure() -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "results"
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "orchestrator", "bench", "--models", "chgnet",
                                  "--dataset", args.dataset, "--limit", str(args.structures),
                                  "--set", f"results_dir={results}", "--set", f"shard_size={args.structures}",
                                  "--set", f"threads_per_worker={threads}", "--gpus", "cpu"],
                                 cwd=REPO, capture_output=True, text=True)
            pipeline_s = time.perf_counter() - start
            if out.returncode:
                raise SystemExit(f"bench failed:\n{out.stderr[-3000:]}")
            run_dir = Path(out.stdout.strip().splitlines()[-1])
            shard = run_dir / "shards" / "shard-0000.jsonl"
            n = sum(1 for _ in shard.open())
            start = time.perf_counter()  # the host's share alone: a no-op rerun relaxes nothing
            again = subprocess.run(out.args, cwd=REPO, capture_output=True, text=True)
            host_s = time.perf_counter() - start
            if again.returncode:
                raise SystemExit(f"the no-op rerun failed:\n{again.stderr[-3000:]}")

            start = time.perf_counter()
            plain = run_plain_loop(engine, image, model.calculator, model.options, shard, threads)
            plain_s = time.perf_counter() - start
            if len(plain) != n:
                raise SystemExit(f"the plain loop relaxed {len(plain)} of {n} structures")
        return {"n": n, "pipeline_s": pipeline_s, "plain_s": plain_s, "host_s": host_s}

    quiet, loaded = quiet_and_loaded(measure, args.load)
    for label, m in (("quiet", quiet), (f"{args.load} busy process(es) beside it", loaded)):
        if m is None:
            continue
        n = m["n"]
        print(f"{label}:")
        print(f"  structures            {n}")
        print(f"  pipeline (bench)      {m['pipeline_s']:8.1f} s   {n / m['pipeline_s']:6.2f} structures/s")
        print(f"  plain ASE loop        {m['plain_s']:8.1f} s   {n / m['plain_s']:6.2f} structures/s")
        print(f"  overhead ratio        {m['pipeline_s'] / m['plain_s']:8.3f}   (pipeline / plain)")
        print(f"  host's share          {m['host_s'] / n * 1000:8.1f} s per 1,000 structures (a no-op rerun: "
              "dataset, shards, merge, scoring, report)")
    if loaded:
        print(f"loaded / quiet          {loaded['pipeline_s'] / quiet['pipeline_s']:8.2f} (pipeline), "
              f"{loaded['plain_s'] / quiet['plain_s']:.2f} (plain)")


if __name__ == "__main__":
    main()
