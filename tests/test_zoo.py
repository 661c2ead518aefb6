"""The zoo's verdicts per model (orchestrator.zoo): when bench is skipped and why, what counts
as ok; the building and running itself is `make test-zoo`."""

from orchestrator.models import discover_models
from orchestrator.zoo import bench_skipped, result_of


def test_bench_is_skipped_only_where_it_would_refuse_the_stand_in():
    models = discover_models()
    # DPA-3.1-3M pins its file's sha256: bench refuses a stand-in, but runs the real file
    assert bench_skipped(models["dpa-3.1-3m"], "stand-in") == "skipped: the checkpoint's sha256 is pinned"
    assert bench_skipped(models["dpa-3.1-3m"], "in the cache") is None
    # an unpinned stand-in, or no checkpoint at all: bench runs
    assert bench_skipped(models["mace-mpa-0"], "stand-in") is None
    assert bench_skipped(models["chgnet"], "none needed") is None


def test_a_model_is_ok_when_its_contract_passed_and_bench_did_not_fail():
    assert result_of({"contract": "passed", "bench": "relaxed"}) == "ok"
    assert result_of({"contract": "passed", "bench": "skipped: the checkpoint's sha256 is pinned"}) == "ok"
    assert result_of({"contract": "passed", "bench": "FAILED (exit 2): no image"}) == "FAILED"
    assert result_of({"contract": "passed", "bench": "FAILED: diverged"}) == "FAILED"
    assert result_of({"contract": "FAILED {\"passed\": false}", "bench": "relaxed"}) == "FAILED"
