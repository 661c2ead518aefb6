"""The batched engine reproduces the sequential ASE engine step for step (float64, EMT),
whatever shares a structure's batch; faults stay with their structure."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT

from adapters.batched import each_with_calculator, relax_batched
from adapters.relax import main as entrypoint
from adapters.relax import relax_record
from metrics.geometry import periodic_axes
from orchestrator.shards import structure_record
from helpers import last_line, protocol, worker_job

pytestmark = pytest.mark.slow  # relaxations step by step against ASE: the unit tier, not the fast one

PROTOCOL = protocol()


def record(sid: str, atoms: Atoms) -> dict:
    atoms.info["id"], atoms.info["dimension"] = sid, f"{len(periodic_axes(atoms))}D"
    return json.loads(json.dumps(structure_record(atoms)))


def structures() -> list[dict]:
    """Every dimensionality EMT knows, with vacuum along each axis, sizes 2 to 108 atoms."""
    crystal = bulk("Cu", cubic=True)
    strained = bulk("Al", "fcc", a=4.3).repeat((2, 1, 1))  # the cell has to shrink
    big = bulk("Cu", cubic=True).repeat(3)
    slab = fcc111("Al", (2, 2, 3), vacuum=8.0)
    standing = fcc111("Cu", (2, 1, 3), vacuum=7.0)
    standing.positions = standing.positions[:, [2, 0, 1]]  # vacuum along a: the layer is rotated into place
    standing.set_cell(standing.cell[:][[2, 0, 1]][:, [2, 0, 1]], scale_atoms=False)
    wire = Atoms("Cu4", positions=[[2.4 * i, 0, 0] for i in range(4)], cell=[9.6, 16, 16])
    wire.center(axis=(1, 2))
    dimer = Atoms("Ni2", positions=[[0, 0, 0], [0, 0, 2.9]], cell=[14, 14, 14])
    dimer.center()
    co = molecule("CO")
    co.center(vacuum=8.0)
    frames = []
    for seed, (sid, atoms) in enumerate((("cu-3d", crystal), ("al-3d-strained", strained), ("cu108-3d", big),
                                         ("al-2d", slab), ("cu-2d-along-a", standing), ("cu-1d", wire),
                                         ("ni2-0d", dimer), ("co-0d", co))):
        atoms.rattle(0.05, seed=seed)
        atoms.pbc = True
        frames.append(record(sid, atoms))
    return frames


def sequential(records: list[dict], protocol: dict = PROTOCOL) -> dict:
    return {r["id"]: relax_record(r, EMT(), protocol) for r in records}


def batched(records: list[dict], protocol: dict = PROTOCOL, evaluate=None, **kwargs) -> dict:
    results = {}
    relax_batched(records, evaluate or each_with_calculator(EMT()), protocol,
                  lambda sid, result: results.__setitem__(sid, result),
                  **{"batch_atoms": worker_job().batch_atoms, **kwargs})
    return results


@pytest.fixture(scope="module")
def reference():
    records = structures()
    return records, sequential(records)


@pytest.mark.parametrize("batch_atoms", [10_000, 30, 1])  # all at once; refills mid-flight; one at a time
def test_batched_fire_equals_ase_fire(reference, batch_atoms):
    records, expected = reference
    assert {r["id"]: r["periodic_axes"] for r in records}["cu-2d-along-a"] == "bc"
    seen = []
    got = batched(records, batch_atoms=batch_atoms, on_batch=lambda ids: seen.append(list(ids)))
    assert set(got) == set(expected)
    for sid, want in expected.items():
        result, atoms = got[sid], len(next(r for r in records if r["id"] == sid)["numbers"])
        assert want["failure_reason"] is None and want["steps"] > 5, sid
        assert (result["steps"], result["converged"], result["failure_reason"]) == \
            (want["steps"], want["converged"], want["failure_reason"]), sid
        assert abs(result["energy_ev"] - want["energy_ev"]) / atoms * 1000 < 1e-6, sid
        assert np.abs(np.subtract(result["positions"], want["positions"])).max() < 1e-8, sid
        assert np.abs(np.subtract(result["cell"], want["cell"])).max() < 1e-8, sid
        assert result["max_force_ev_per_a"] == pytest.approx(want["max_force_ev_per_a"], abs=1e-9)
        assert result["max_atom_force_ev_per_a"] == pytest.approx(want["max_atom_force_ev_per_a"], abs=1e-9)
    sizes = {len(ids) for ids in seen}
    if batch_atoms == 30:
        assert len(seen) > 3 and max(sizes) > 1  # structures joined a batch already running
    if batch_atoms == 1:
        assert max(sizes) == 1


def test_the_step_cap_and_divergence_limit_are_the_sequential_engines(reference):
    records, _ = reference
    capped = {**PROTOCOL, "max_steps": 7}
    want, got = sequential(records, capped), batched(records, capped, batch_atoms=40)
    assert {s: (r["steps"], r["failure_reason"]) for s, r in got.items()} == \
        {s: (r["steps"], r["failure_reason"]) for s, r in want.items()}
    assert {r["failure_reason"] for r in got.values()} == {"not_converged"}
    touchy = {**PROTOCOL, "divergence_limit_ev_per_a": 0.5}
    want, got = sequential(records, touchy), batched(records, touchy, batch_atoms=40)
    assert {s: (r["steps"], r["failure_reason"]) for s, r in got.items()} == \
        {s: (r["steps"], r["failure_reason"]) for s, r in want.items()}
    assert "diverged" in {r["failure_reason"] for r in got.values()}


def test_divergence_is_the_force_magnitude_as_in_the_sequential_engine(reference):
    records, _ = reference

    def pushing(value):  # one model whose every force is (value, value, value) eV/Å
        def evaluate(frames):
            return [(-1.0, np.full((len(a), 3), value), np.zeros(6) if a.info["needs_stress"] else None)
                    for a in frames]
        return evaluate

    got = batched(records, evaluate=pushing(7000.0))  # |F| = 12,124 > 10,000 > every component
    assert {(r["failure_reason"], r["steps"]) for r in got.values()} == {("diverged", 0)}
    got = batched(records, {**PROTOCOL, "max_steps": 2}, evaluate=pushing(5000.0))  # |F| = 8,660
    assert {r["failure_reason"] for r in got.values()} == {"not_converged"}


def test_a_failing_structure_leaves_its_batch_unharmed(reference):
    records, expected = reference
    silicon = record("si-3d", bulk("Si"))  # EMT has no silicon
    plain = each_with_calculator(EMT())

    def flaky(frames):  # the CO molecule's forces come back NaN
        return [(o[0], o[1] * np.nan, o[2]) if not isinstance(o, Exception) and _poisoned(frame) else o
                for frame, o in zip(frames, plain(frames))]

    got = batched([silicon, *records], evaluate=flaky, batch_atoms=10_000)
    assert got["si-3d"]["failure_reason"] == "model_error" and "Si" in got["si-3d"]["error"]
    assert got["co-0d"]["failure_reason"] == "model_error" and "non-finite" in got["co-0d"]["error"]
    for sid in expected:
        if sid != "co-0d":
            assert got[sid]["steps"] == expected[sid]["steps"], sid


def _poisoned(atoms: Atoms) -> bool:
    return atoms.get_chemical_formula() == "CO"


def test_a_structure_over_its_time_limit_is_a_timeout(reference):
    records, _ = reference
    got = batched(records[:2], timeout_s=1e-9)
    assert {r["failure_reason"] for r in got.values()} == {"timeout"}


def write_shard(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_entrypoint_writes_the_same_lines_with_either_engine(tmp_path, reference):
    records, _ = reference
    shard = tmp_path / "shard-0000.jsonl"
    write_shard(shard, records[:5])
    lines = {}
    for engine in ("ase", "batched"):
        job = worker_job(protocol=PROTOCOL, engine=engine, batch_atoms=25)
        out = tmp_path / f"{engine}.jsonl"
        assert entrypoint(["--job", job.to_json(), "--shard", str(shard), "--out", str(out)]) == 0
        lines[engine] = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert lines["ase"].keys() == lines["batched"].keys()
    for sid, want in lines["ase"].items():
        got = lines["batched"][sid]
        assert set(got) == set(want)
        assert got["steps"] == want["steps"] and np.allclose(got["positions"], want["positions"], atol=1e-8)


def test_one_worker_refills_its_batch_across_shards_and_writes_each_result_to_its_shard(tmp_path, reference,
                                                                                         monkeypatch):
    import adapters.relax

    records, expected = reference
    parts = {"shard-0000": records[:3], "shard-0001": records[3:5], "shard-0002": records[5:]}
    for name, part in parts.items():
        write_shard(tmp_path / f"{name}.jsonl", part)
    done = {"id": records[3]["id"], "converged": True, "failure_reason": None, "steps": 99999}
    (tmp_path / "shard-0001.out.jsonl").write_text(json.dumps(done) + "\n")  # finished before
    in_flight = []  # (shard, ids) as the worker names them
    mark = adapters.relax.ShardFiles.mark
    monkeypatch.setattr(adapters.relax.ShardFiles, "mark",
                        lambda self, ids: (in_flight.append((self.in_flight.name, tuple(ids))), mark(self, ids))[1])
    argv = ["--job", worker_job(protocol=PROTOCOL, engine="batched", batch_atoms=40).to_json()]
    for name in parts:
        argv += ["--shard", str(tmp_path / f"{name}.jsonl"), "--out", str(tmp_path / f"{name}.out.jsonl")]
    assert entrypoint(argv) == 0
    for name, part in parts.items():
        lines = [json.loads(line) for line in (tmp_path / f"{name}.out.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in lines) == sorted(r["id"] for r in part)  # each exactly once, in its shard
        for line in lines:
            if line["steps"] != 99999:
                assert line["steps"] == expected[line["id"]]["steps"], line["id"]
        assert (tmp_path / f"{name}.out.inflight").read_text() == ""
    busy = {}
    for shard, ids in in_flight:
        busy[shard] = bool(ids)
        if sum(busy.values()) > 1:
            break
    assert sum(busy.values()) > 1  # structures of two shards shared a batch
    assert records[3]["id"] not in {sid for _, ids in in_flight for sid in ids}  # finished before: not redone


def test_a_shard_and_an_output_go_in_pairs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        entrypoint(["--job", worker_job(protocol=PROTOCOL).to_json(), "--shard", "a.jsonl", "--shard",
                    "b.jsonl", "--out", "a.out"])
    assert "2 --shard but 1 --out" in capsys.readouterr().err


def test_crashed_structures_relax_alone_first_and_a_second_crash_is_a_model_error(tmp_path, reference):
    records, _ = reference
    shard = tmp_path / "shard-0000.jsonl"
    write_shard(shard, records[:4])
    out = tmp_path / "out.jsonl"
    # the last worker died with two structures in flight; one of them had killed one before
    (tmp_path / "out.crashed").write_text(f"{records[0]['id']}\n{records[1]['id']}\n{records[1]['id']}\n")
    job = worker_job(protocol=PROTOCOL, engine="batched", batch_atoms=10_000)
    assert entrypoint(["--job", job.to_json(), "--shard", str(shard), "--out", str(out)]) == 0
    results = [json.loads(line) for line in out.read_text().splitlines()]
    order = [r["id"] for r in results]
    assert order[0] == records[1]["id"] and results[0]["failure_reason"] == "model_error"
    assert order[1] == records[0]["id"] and results[1]["failure_reason"] is None  # alone, first
    assert sorted(order[2:]) == sorted(r["id"] for r in records[2:4])
    assert (tmp_path / "out.inflight").read_text() == ""


def test_the_engine_is_part_of_the_run_identity_and_batched_runs_the_paper_protocol_only():
    from orchestrator.errors import BenchError
    from orchestrator.manifest import load

    manifest = Path(__file__).resolve().parent.parent / "benchmark.yaml"
    from orchestrator.datasets import Dataset
    from orchestrator.run.plan import run_identity

    protocol = load(manifest).relaxation_protocol()
    assert load(manifest, {"engine": "batched"}).relaxation_protocol() == protocol  # the engine rides apart
    data = Dataset("sample", [], {"a.json": "0" * 64}, [], {})
    names = {engine: run_identity(data, "all", protocol, engine) for engine in ("ase", "batched")}
    assert names["ase"] != names["batched"]
    # run folders of the reference engine keep the names they had when the engine rode in the protocol
    import hashlib

    assert names["ase"].endswith(hashlib.sha256(json.dumps([data.identity, "all", protocol], sort_keys=True)
                                                .encode()).hexdigest()[:8])
    with pytest.raises(BenchError, match="engine batched relaxes protocol.variant paper only"):
        load(manifest, {"engine": "batched", "protocol.variant": "authors"})
    with pytest.raises(BenchError, match="engine must be one of ase, batched"):
        load(manifest, {"engine": "torchsim"})


@pytest.mark.docker
def test_sevennet_relaxes_the_sample_alike_with_both_engines(model_image):
    """SevenNet-0 in float32 on 40 structures of the shared 3D sample, in its image: the
    engines agree as the issue asks (flags 99 %, steps within max(2, 2 %) 95 %, energies
    within 1 meV/atom 99 %). `make perf-engine` checks the same on 100 and prints figures."""
    from perf.engine_speed import run_in_image, sample_records

    n = 40
    outcome = run_in_image(model_image("sevennet-0"), {"calculator": "sevennet", "options": {}, "device": "cpu"},
                           sample_records(n), threads=os.cpu_count(), batch_atoms=2000)
    pairs = outcome["pairs"]
    assert len(pairs) == n
    assert sum(p["converged_seq"] == p["converged_bat"] for p in pairs) >= math.ceil(0.99 * n)
    assert sum(abs(p["steps_seq"] - p["steps_bat"]) <= max(2, 0.02 * p["steps_seq"]) for p in pairs) \
        >= math.ceil(0.95 * n)
    energies = [p for p in pairs if p["energy_ev_seq"] is not None and p["energy_ev_bat"] is not None]
    assert len(energies) >= math.ceil(0.99 * n)
    assert sum(abs(p["energy_ev_seq"] - p["energy_ev_bat"]) / p["atoms"] * 1000 <= 1.0 for p in energies) \
        >= math.ceil(0.99 * n)


@pytest.mark.docker
def test_make_bench_with_the_batched_engine_gives_the_reference_table(tmp_path, engine):
    import pandas as pd

    from helpers import bench, emt_dataset

    dataset = tmp_path / "emt-set.extxyz"
    emt_dataset(dataset)
    runs, logs = {}, {}
    for engine in ("ase", "batched"):
        done = bench("--models", "emt", "--dataset", str(dataset), "--engine", engine, "--set", "batch_atoms=8",
                     "--set", "shard_size=2", results=tmp_path / "r")
        runs[engine] = Path(last_line(done))
        logs[engine] = sorted(path.name for path in (runs[engine] / "raw" / "emt").glob("*.log"))
    assert runs["ase"] != runs["batched"]
    # three shards: a container each for the reference engine, one for all three when batched
    assert logs == {"ase": ["shard-0000.log", "shard-0001.log", "shard-0002.log"], "batched": ["shard-0000.log"]}
    assert "3 shard(s) in 1 worker(s)" in " ".join(done.stderr.split())  # progress goes to stderr, wrapped
    columns = ["id", "steps", "converged", "failure_reason", "energy_ev", "position_mae_a"]
    tables = {engine: pd.read_csv(run / "results.csv", keep_default_na=False)[columns].sort_values("id")
              .reset_index(drop=True) for engine, run in runs.items()}
    for column in columns:
        if column in ("energy_ev", "position_mae_a"):
            ase, batched_ = (pd.to_numeric(t[column], errors="coerce") for t in (tables["ase"], tables["batched"]))
            assert np.allclose(ase, batched_, atol=1e-7, equal_nan=True), column
        else:
            assert tables["ase"][column].tolist() == tables["batched"][column].tolist(), column
    provenance = json.loads((runs["batched"] / "provenance.json").read_text())
    assert provenance["engine"] == "batched" and provenance["batch_atoms"] == 8
