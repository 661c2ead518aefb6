from pathlib import Path

import pytest

from orchestrator.cli import overrides_from, build_parser
from orchestrator.errors import BenchError
from orchestrator.manifest import load

REPO_MANIFEST = Path(__file__).resolve().parent.parent / "benchmark.yaml"


def write(tmp_path, text):
    path = tmp_path / "benchmark.yaml"
    path.write_text(text)
    return path


def test_repository_manifest_holds_the_paper_protocol():
    m = load(REPO_MANIFEST, environ={})
    assert m["protocol"] == {"variant": "paper", "optimizer": "FIRE", "fmax_ev_per_a": 0.04, "max_steps": 15000,
                             "divergence_limit_ev_per_a": 10000.0, "cell_filter": "FrechetCellFilter"}
    assert m["fragmentation_limits_a"] == {"2D": 7.5, "1D": 12.5, "0D": 20.0}


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "protocol:\n  fmaxx: 0.05\n")
    with pytest.raises(BenchError, match=r"benchmark.yaml: unknown key 'protocol.fmaxx'"):
        load(path, environ={})


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(BenchError, match="shard_size must be int"):
        load(write(tmp_path, "shard_size: many\n"), environ={})
    with pytest.raises(BenchError, match="protocol.max_steps must be int"):
        load(write(tmp_path, "protocol: {max_steps: true}\n"), environ={})


def test_bad_devices_and_dimensions_are_rejected(tmp_path):
    with pytest.raises(BenchError, match="devices"):
        load(write(tmp_path, "devices: gpu\n"), environ={})
    with pytest.raises(BenchError, match="subset.dimensions has '4D'"):
        load(write(tmp_path, "subset: {dimensions: [4D]}\n"), environ={})


def test_precedence_and_sources(tmp_path):
    path = write(tmp_path, "shard_size: 10\nbase_images: {\"3.11\": from-file}\ncache_dir: cache\n")
    m = load(path, {"shard_size": 5}, environ={"UMLIP_BASE_IMAGES": '{"3.13": from-env}', "UMLIP_SHARD_SIZE": "7"})
    assert (m["shard_size"], m.sources["shard_size"]) == (5, "command line")
    # a mapping is added to entry by entry: the file's 3.11, the environment's 3.13, the default 3.12
    assert m["base_images"] == {"3.11": "from-file", "3.12": "python:3.12-slim-bookworm", "3.13": "from-env"}
    assert m.sources["base_images"] == "environment"
    with pytest.raises(BenchError, match=r'base_images maps quoted Python versions to images, like "3.11"'):
        load(write(tmp_path, "base_images: {3.10: python:3.10-slim}\n"), environ={})
    assert m.sources["workers_per_device"] == "default"
    assert m.path_setting("cache_dir") == tmp_path / "cache"


def test_make_variables_become_overrides():
    args = build_parser().parse_args(["bench", "--models", "chgnet", "sevennet-0", "--limit", "20",
                                      "--dim", "0d,2D", "--gpus", "0,1", "--set", "protocol.fmax_ev_per_a=0.02",
                                      "--protocol", "authors"])
    overrides = overrides_from(args)
    assert overrides == {"models": ["chgnet", "sevennet-0"], "subset.limit_per_dimension": 20,
                         "subset.dimensions": ["0D", "2D"], "devices": [0, 1], "protocol.fmax_ev_per_a": 0.02,
                         "protocol.variant": "authors"}
    m = load(REPO_MANIFEST, overrides, environ={})
    assert m["protocol"]["fmax_ev_per_a"] == 0.02 and m["devices"] == [0, 1]
    # the variant and the limits decide the relaxation, so both go to the containers
    assert m.relaxation_protocol()["variant"] == "authors"
    assert m.relaxation_protocol()["fragmentation_limits_a"] == {"2D": 7.5, "1D": 12.5, "0D": 20.0}


def test_an_unknown_protocol_variant_is_named(tmp_path):
    with pytest.raises(BenchError, match="protocol.variant must be one of paper, authors, not 'mine'"):
        load(write(tmp_path, "protocol: {variant: mine}\n"), environ={})


def test_max_steps_under_the_authors_variant_is_refused_not_ignored(tmp_path):
    with pytest.raises(BenchError, match=r"command line \(--set or a make variable\): protocol.max_steps is 60, but the "
                                         r"authors' variant runs its own cycles"):
        load(REPO_MANIFEST, {"protocol.variant": "authors", "protocol.max_steps": 60}, environ={})
    assert load(REPO_MANIFEST, {"protocol.variant": "authors"}, environ={})["protocol"]["max_steps"] == 15000


def test_bad_make_variables_are_named():
    with pytest.raises(BenchError, match="DIM"):
        overrides_from(build_parser().parse_args(["bench", "--dim", "5D"]))
    with pytest.raises(BenchError, match="GPUS"):
        overrides_from(build_parser().parse_args(["bench", "--gpus", "first"]))


@pytest.mark.parametrize("text, message", [
    ("threads_per_worker: -1\n", "threads_per_worker must be positive"),
    ("max_worker_retries: -1\n", "max_worker_retries must be 0 or more"),
    ("protocol: {optimizer: Adam}\n", "protocol.optimizer must be one of FIRE, BFGS, LBFGS, not 'Adam'"),
    ("protocol: {cell_filter: Strain}\n", "protocol.cell_filter must be one of FrechetCellFilter"),
    ("protocol: {fmax_ev_per_a: .nan}\n", "protocol.fmax_ev_per_a must be a finite number"),
    ("fragmentation_limits_a: {2D: .inf}\n", "fragmentation_limits_a.2D must be a finite number"),
    ("worker_memory_gb: 0\n", "worker_memory_gb must be positive"),
    ("devices: [true]\n", "devices must hold GPU indices"),
])
def test_values_that_cannot_work_name_the_key_and_the_file(tmp_path, text, message):
    with pytest.raises(BenchError, match=f"benchmark.yaml: {message}"):
        load(write(tmp_path, text), environ={})


def test_a_bad_value_from_the_command_line_is_not_blamed_on_the_file(tmp_path):
    with pytest.raises(BenchError, match=r"^command line \(--set or a make variable\): max_worker_retries"):
        load(write(tmp_path, "shard_size: 10\n"), {"max_worker_retries": -2}, environ={})
    with pytest.raises(BenchError, match=r"^environment \(UMLIP_\*\): shard_size must be at least 1"):
        load(write(tmp_path, "shard_size: 10\n"), environ={"UMLIP_SHARD_SIZE": "0"})
