"""make perf-peer's plumbing (tests/perf/peer_speed.py), not its timings: in SevenNet-0's own
image, on three crystals of the shipped sample, the engines this image holds (TorchSim needs its
peer image, several GB on Python 3.13: `make perf-peer` builds it, CI does not)."""

from pathlib import Path

import pytest


@pytest.mark.docker
def test_the_peer_script_runs_the_engines_in_rounds_and_compares_them_with_ase(model_image):
    import perf.peer_speed as peer_speed
    from perf.engine_speed import run_in_image, sample_records
    from perf.peer_speed import ratios, table

    records = sample_records(3)
    job = {"calculator": "sevennet", "options": {"model": "7net-0"}, "device": "cpu",
           "engines": ["ase", "sequential", "batched"], "repeats": 2, "max_steps": 15000}
    # one thread: torch's float32 sums over two threads are not the same bits from one process to the next
    outcome = run_in_image(model_image("sevennet-0"), job, records, threads=1, batch_atoms=2000,
                           script=Path(peer_speed.__file__))
    engines = outcome["engines"]
    assert list(engines) == ["ase", "sequential", "batched"]
    for engine, run in engines.items():
        assert len(run["wall_s"]) == 2 and all(s > 0 for s in run["wall_s"])  # two interleaved rounds
        assert [r["id"] for r in run["results"]] == [r["id"] for r in records]
    # the sequential engine is ASE's arithmetic, evaluated once a step: the same bits
    for mine, ase in zip(engines["sequential"]["results"], engines["ase"]["results"]):
        assert (mine["steps"], mine["energy_ev"], mine["positions"], mine["cell"]) == \
               (ase["steps"], ase["energy_ev"], ase["positions"], ase["cell"])
    assert outcome["versions"]["sevenn"] and "torch-sim-atomistic" not in outcome["versions"]
    printed = table(outcome).splitlines()
    assert printed[2].startswith("| plain ASE") and "reference" in printed[2]
    sequential = printed[3].split("|")
    assert sequential[5].strip() == "3/3" and float(sequential[7]) == 0.0  # steps identical, |Δr| 0
    batched = printed[4].split("|")
    assert batched[5].strip() == "3/3" and float(batched[7]) < 1e-4
    assert "batched / ase" in ratios(outcome) and "torchsim" not in ratios(outcome)
