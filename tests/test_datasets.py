"""Reading datasets from local files: formats by content, reference records, labels, ids, subsets."""

import bz2
import json
import logging
import shutil

import numpy as np
import pytest
from ase.io import write
from ase.units import GPa

from helpers import P000, SAMPLE, compress, entry, structures, write_db, write_entries
from orchestrator.datasets import load_dataset, select, sniff, subset_key, write_extxyz
from orchestrator.errors import BenchError


@pytest.fixture(scope="module")
def sample_entries():
    with bz2.open(SAMPLE, "rt") as handle:
        return json.load(handle)["entries"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return load_dataset(str(SAMPLE), {}, tmp_path_factory.mktemp("cache"), show_progress=False)


def test_sample200_records_match_the_entries(sample, sample_entries):
    assert len(sample.structures) == 200
    by_id = {e["data"]["mat_id"]: e for e in sample_entries}
    assert sorted(a.info["id"] for a in sample.structures) == sorted(by_id)
    for atoms in sample.structures:
        entry = by_id[atoms.info["id"]]
        assert atoms.info["energy_ref_ev"] == entry["energy"]
        assert atoms.arrays["forces_ref"].shape == (len(atoms), 3) == (entry["data"]["nsites"], 3)
        assert atoms.get_chemical_symbols() == [s["species"][0]["element"] for s in entry["structure"]["sites"]]
        assert np.allclose(atoms.positions, [s["xyz"] for s in entry["structure"]["sites"]])
        assert atoms.pbc.all()
        assert atoms.info["dimension"] == "3D" and atoms.info["periodic_axes"] == "abc"
        assert atoms.info["source"] == SAMPLE.name
    assert sample.sha256 == {SAMPLE.name: sample.sha256[SAMPLE.name]} and len(sample.identity) == 16
    assert [(a.info["dimension"], a.info["id"]) for a in sample.structures] == \
        sorted((a.info["dimension"], a.info["id"]) for a in sample.structures)


def test_sample200_units_forces_small_and_stress_in_ev_per_a3(sample, sample_entries):
    # relaxed PBE minima: forces of a few meV/Å, residual stress of a few kbar
    assert max(np.abs(a.arrays["forces_ref"]).max() for a in sample.structures) < 0.1
    by_id = {e["data"]["mat_id"]: e for e in sample_entries}
    for atoms in sample.structures[:20]:
        kbar = np.array(by_id[atoms.info["id"]]["data"]["stress"])
        voigt = atoms.info["stress_ref"]
        assert voigt.shape == (6,)
        # VASP kbar, positive = compressive  ->  ASE eV/Å^3, positive = tensile
        assert np.allclose(voigt[:3], -np.diag(kbar) * 0.1 * GPa)
        assert np.allclose(voigt[3:], -kbar[[1, 0, 0], [2, 2, 1]] * 0.1 * GPa)
    assert max(np.abs(a.info["stress_ref"]).max() for a in sample.structures) < 0.05  # < 8 GPa


def test_load_is_logged_with_format_and_counts(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="orchestrator.datasets"):
        load_dataset(str(SAMPLE), {}, tmp_path)
    text = caplog.text
    assert "json (bz2), 200 structures (0D 0, 1D 0, 2D 0, 3D 200)" in text


def test_all_formats_plain_and_bz2_give_the_same_records(tmp_path):
    made = structures()
    plain_db = write_db(tmp_path / "set.db", made)
    files = {
        "db": plain_db,
        "db.bz2": compress(plain_db, tmp_path / "set.db.bz2"),
        "json": write_entries(tmp_path / "set.json", made, compress=False, label=True),
        "json.bz2": write_entries(tmp_path / "set.json.bz2", made, label=True),
    }
    import ase.db
    from ase.calculators.singlepoint import SinglePointCalculator

    with ase.db.connect(str(tmp_path / "ase.json"), type="json") as db:  # ASE's JSON backend
        for atoms in made:
            copy = atoms.copy()
            copy.calc = SinglePointCalculator(copy, forces=atoms.arrays["forces"])
            db.write(copy, key_value_pairs={k: atoms.info[k] for k in ("mat_id", "id_dimension", "uncorrected_energy")})
    files["ase-json.bz2"] = compress(tmp_path / "ase.json", tmp_path / "ase-json.bin")
    xyz = tmp_path / "set.extxyz"
    frames = []
    for atoms in made:
        frame = atoms.copy()
        frame.info = {"mat_id": atoms.info["mat_id"], "id_dimension": atoms.info["id_dimension"],
                      "uncorrected_energy": atoms.info["uncorrected_energy"]}
        frame.arrays["forces_ref"] = atoms.arrays["forces"]
        del frame.arrays["forces"]
        frames.append(frame)
    write(xyz, frames, format="extxyz")
    files["extxyz"] = xyz
    files["extxyz.bz2"] = compress(xyz, tmp_path / "set.extxyz.bz2")
    loaded = {}
    for kind, path in files.items():
        dataset = load_dataset(str(path), {}, tmp_path / "cache")
        loaded[kind] = {a.info["id"]: a for a in dataset.structures}
    expected = {a.info["mat_id"]: a for a in made}
    for kind, records in loaded.items():
        assert sorted(records) == sorted(expected), kind
        for sid, atoms in records.items():
            src = expected[sid]
            assert atoms.info["dimension"] == src.info["id_dimension"], (kind, sid)
            assert atoms.info["energy_ref_ev"] == pytest.approx(src.info["uncorrected_energy"], abs=1e-9)
            assert np.allclose(atoms.positions, src.positions, atol=1e-6)
            assert np.allclose(atoms.cell[:], src.cell[:], atol=1e-6)
            assert np.allclose(atoms.arrays["forces_ref"], src.arrays["forces"], atol=1e-7), kind
    assert sniff(files["db.bz2"]) == ("db", True)
    # the compressed database was decompressed once into the cache, named by its content
    assert len(list((tmp_path / "cache" / ".decompressed").iterdir())) == 1


def test_format_is_recognised_by_content_not_name(tmp_path):
    made = structures()
    db = write_db(tmp_path / "x.db", made)
    renamed = tmp_path / "benchmark.dat"
    shutil.move(db, renamed)
    dataset = load_dataset(str(renamed), {}, tmp_path / "cache")
    assert len(dataset.structures) == len(made)
    assert sniff(renamed) == ("db", False)
    json_as_txt = write_entries(tmp_path / "entries.txt", made)
    assert sniff(json_as_txt) == ("json", True)
    assert len(load_dataset(str(json_as_txt), {}, tmp_path / "cache").structures) == len(made)
    junk = tmp_path / "notes.json"
    junk.write_text("hello")
    with pytest.raises(BenchError, match="not a recognised dataset format"):
        load_dataset(str(junk), {}, tmp_path / "cache")


@pytest.mark.slow
def test_records_survive_an_extxyz_round_trip(sample, tmp_path):
    path = tmp_path / "reference.extxyz.bz2"
    with bz2.open(path, "wt") as handle:
        write(handle, sample.structures, format="extxyz")
    again = load_dataset(str(path), {}, tmp_path / "cache")
    assert len(again.structures) == 200
    for a, b in zip(sample.structures, again.structures):
        assert a.info["id"] == b.info["id"] and a.info["dimension"] == b.info["dimension"]
        assert b.info["energy_ref_ev"] == pytest.approx(a.info["energy_ref_ev"], abs=1e-8)
        assert np.allclose(a.positions, b.positions, atol=1e-7)
        assert np.allclose(a.arrays["forces_ref"], b.arrays["forces_ref"], atol=1e-7)
        assert np.allclose(a.info["stress_ref"], b.info["stress_ref"], atol=1e-10)
        assert b.info["periodic_axes"] == a.info["periodic_axes"]


def test_write_extxyz_round_trips_every_dimensionality(tmp_path):
    made = structures()
    made[0].info["id_dimension"] = "2D"  # a label that disagrees with the geometry survives too
    original = load_dataset(str(write_db(tmp_path / "x.db", made)), {}, tmp_path / "c").structures
    assert original[0].info["periodic_axes"] == ""  # the 0D value that plain extxyz writing mangles
    assert original[0].info["dimension_label"] == "2D"
    for name in ("ref.extxyz", "ref.extxyz.bz2"):
        write_extxyz(tmp_path / name, original)
        again = load_dataset(str(tmp_path / name), {}, tmp_path / "c").structures
        assert [a.info["id"] for a in again] == [a.info["id"] for a in original]
        for a, b in zip(original, again):
            assert b.info["dimension"] == a.info["dimension"] and b.info["periodic_axes"] == a.info["periodic_axes"]
            assert b.info["dimension_label"] == a.info["dimension_label"]
            assert b.info["energy_ref_ev"] == pytest.approx(a.info["energy_ref_ev"], abs=1e-8)
            assert np.allclose(b.arrays["forces_ref"], a.arrays["forces_ref"], atol=1e-7)
    assert sniff(tmp_path / "ref.extxyz.bz2") == ("extxyz", True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


ODD_IDS = ["0042", "T", "1e5", "with space", "tab\there", "new\nline", "back\\slash", 'quo"te', "id:x", "x~2"]


def test_ids_survive_every_extxyz_the_tool_writes_whatever_they_hold(tmp_path):
    from ase.io import read

    from orchestrator.datasets import id_from_extxyz

    made = (structures() + structures("u"))[:len(ODD_IDS)]
    for atoms, sid in zip(made, ODD_IDS, strict=True):
        atoms.info["mat_id"] = sid
    original = load_dataset(str(write_entries(tmp_path / "x.json.bz2", made)), {}, tmp_path / "c").structures
    assert sorted(a.info["id"] for a in original) == sorted(ODD_IDS)
    write_extxyz(tmp_path / "ref.extxyz", original)
    again = load_dataset(str(tmp_path / "ref.extxyz"), {}, tmp_path / "c").structures
    assert [a.info["id"] for a in again] == [a.info["id"] for a in original]  # "0042" is no 42, "T" no True
    plain = read(tmp_path / "ref.extxyz", index=":")  # as a user reads it with ASE
    assert [id_from_extxyz(a.info["id"]) for a in plain] == [a.info["id"] for a in original]


def test_unrecognised_file_in_a_folder_is_skipped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    write_entries(folder / "a.json.bz2", structures())
    (folder / "notes.bz2").write_bytes(bz2.compress(b"release notes"))
    (folder / "other.json").write_text('{"something": 1}')
    with caplog.at_level(logging.WARNING, logger="orchestrator.datasets"):
        dataset = load_dataset(str(folder), {}, tmp_path / "c")
    assert len(dataset.structures) == 8
    assert [p.name for p in dataset.files] == ["a.json.bz2"]
    (folder / "other.json").write_text('{"something": 2}')  # editing a stray file changes nothing
    assert load_dataset(str(folder), {}, tmp_path / "c").identity == dataset.identity
    assert "skipped" in caplog.text and "notes.bz2" in caplog.text and "other.json" in caplog.text


def test_dimension_from_geometry_when_the_data_has_no_label(tmp_path):
    made = structures()
    dataset = load_dataset(str(write_db(tmp_path / "nolabel.db", made, labels=False)), {}, tmp_path / "c")
    got = {a.info["id"]: (a.info["dimension"], a.info["periodic_axes"]) for a in dataset.structures}
    assert got["t0D0"] == ("0D", "") and got["t1D0"] == ("1D", "c")
    assert got["t2D0"] == ("2D", "ab") and got["t3D0"] == ("3D", "abc")
    assert dataset.counts() == {"0D": 2, "1D": 2, "2D": 2, "3D": 2}


def test_file_name_label_is_used_and_disagreement_is_reported(tmp_path, caplog):
    made = structures()
    # every structure claimed to be 2D by the file name, whatever its geometry
    path = write_entries(tmp_path / "alexandria_2D.json.bz2", made)
    with caplog.at_level(logging.WARNING, logger="orchestrator.datasets"):
        dataset = load_dataset(str(path), {}, tmp_path / "c")
    assert {a.info["dimension_label"] for a in dataset.structures} == {"2D"}  # the data's label is kept
    assert dataset.counts() == {"0D": 2, "1D": 2, "2D": 2, "3D": 2}  # the geometry decides
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "6 structure(s)" in warning[0]
    for sid in ("t0D0", "t1D1", "t3D1"):
        assert sid in warning[0]
    assert "t2D0" not in warning[0]
    # and geometry-only files raise no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="orchestrator.datasets"):
        load_dataset(str(write_entries(tmp_path / "plain.json.bz2", made)), {}, tmp_path / "c")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_per_structure_label_disagreeing_with_geometry_is_reported(tmp_path, caplog):
    made = structures()
    made[0].info["id_dimension"] = "3D"  # a molecule in a box labelled bulk
    with caplog.at_level(logging.WARNING, logger="orchestrator.datasets"):
        dataset = load_dataset(str(write_db(tmp_path / "x.db", made)), {}, tmp_path / "c")
    record = next(a for a in dataset.structures if a.info["id"] == "t0D0")
    assert record.info["dimension"] == "0D" and record.info["periodic_axes"] == ""
    assert record.info["dimension_label"] == "3D"
    assert "t0D0 (3D, geometry 0D" in caplog.text and "1 structure(s)" in caplog.text


def test_colliding_mat_ids(tmp_path, caplog):
    made = structures()
    folder = tmp_path / "data"
    folder.mkdir()
    write_db(folder / "a.db", made)
    write_entries(folder / "b.json.bz2", made)  # the same structures again: kept once
    other = [a.copy() for a in made[:2]]
    for atoms in other:
        atoms.positions += 0.1
    write_entries(folder / "c.json.bz2", other)  # same ids, different structures: renamed
    with caplog.at_level(logging.INFO, logger="orchestrator.datasets"):
        dataset = load_dataset(str(folder), {}, tmp_path / "c")
    ids = [a.info["id"] for a in dataset.structures]
    assert len(ids) == len(set(ids)) == len(made) + 2
    assert {"t0D0~2", "t0D1~2"} <= set(ids)
    renamed = next(a for a in dataset.structures if a.info["id"] == "t0D0~2")
    assert renamed.info["source"] == "c.json.bz2"
    assert "8 structure(s) appear more than once" in caplog.text
    assert "t0D0 -> t0D0~2 (c.json.bz2)" in caplog.text
    assert sorted(dataset.sha256) == ["a.db", "b.json.bz2", "c.json.bz2"]


def test_a_renamed_duplicate_never_takes_the_id_of_a_real_structure(tmp_path):
    made = structures()
    twin = made[0].copy()
    twin.positions += 0.1
    real = made[1].copy()
    real.info["mat_id"] = f"{made[0].info['mat_id']}~2"  # a structure whose own id is what the rename would make
    folder = tmp_path / "data"
    folder.mkdir()
    write_entries(folder / "a.json.bz2", made)
    write_entries(folder / "b.json.bz2", [twin, real])
    dataset = load_dataset(str(folder), {}, tmp_path / "c")
    ids = [a.info["id"] for a in dataset.structures]
    assert len(ids) == len(set(ids)) == len(made) + 2
    kept = next(a for a in dataset.structures if a.info["id"] == "t0D0~2")
    assert kept.info["source"] == "b.json.bz2" and np.allclose(kept.positions, real.positions)
    assert "t0D0~2~" in ids


def test_unknown_name_lists_the_registry(tmp_path):
    with pytest.raises(BenchError) as err:
        load_dataset("no-such-set", {"0123d": {"url": "http://127.0.0.1:9/"}, "p000": {"url": "x"}}, tmp_path)
    assert "0123d" in str(err.value) and "p000" in str(err.value) and "no-such-set" in str(err.value)


def test_identity_follows_content_not_name(tmp_path):
    a = load_dataset(str(SAMPLE), {}, tmp_path)
    copy = tmp_path / "renamed.bin"
    shutil.copy(SAMPLE, copy)
    b = load_dataset(str(copy), {}, tmp_path)
    assert a.identity == b.identity
    changed = write_entries(tmp_path / "changed.json.bz2", structures())
    assert load_dataset(str(changed), {}, tmp_path).identity != a.identity


# ----------------------------------------------------------------------------- select / subset_key

@pytest.fixture(scope="module")
def many():
    """40 structures per dimensionality, ids shuffled against dimension."""
    made = structures()
    out = []
    for k in range(40):
        for atoms in made:
            copy = atoms.copy()
            copy.info = {"id": f"{atoms.info['mat_id']}-{k:02d}", "dimension": atoms.info["id_dimension"]}
            out.append(copy)
    out.sort(key=lambda a: (a.info["dimension"], a.info["id"]))
    return out


def test_select_stratified_and_reproducible(many):
    picked = select(many, limit_per_dimension=5, seed=3)
    counts = {}
    for atoms in picked:
        counts[atoms.info["dimension"]] = counts.get(atoms.info["dimension"], 0) + 1
    assert counts == {"0D": 5, "1D": 5, "2D": 5, "3D": 5}
    ids = [a.info["id"] for a in picked]
    assert ids == [a.info["id"] for a in select(many, limit_per_dimension=5, seed=3)]
    assert ids != [a.info["id"] for a in select(many, limit_per_dimension=5, seed=4)]
    # a dimensionality's draw does not depend on which others are selected
    only_2d = [a.info["id"] for a in select(many, dimensions=["2d"], limit_per_dimension=5, seed=3)]
    assert only_2d == [i for i, a in zip(ids, picked) if a.info["dimension"] == "2D"]
    # more than there are: all of them
    assert len(select(many, dimensions="0D", limit_per_dimension=1000)) == 80


def test_select_by_dimension_element_and_ids(many):
    assert {a.info["dimension"] for a in select(many, dimensions=["0D", "2D"])} == {"0D", "2D"}
    with_s = select(many, elements=["S", "Se"])  # any of them: MoS2 and WSe2
    assert with_s and all({"S", "Se"} & set(a.get_chemical_symbols()) for a in with_s)
    assert {a.info["id"][:4] for a in with_s} == {"t2D0", "t2D1"}
    assert {a.info["id"][:4] for a in select(many, elements="Cu")} == {"t1D1"}
    chosen = ["t3D1-07", "t0D0-00"]
    assert [a.info["id"] for a in select(many, ids=chosen)] == ["t0D0-00", "t3D1-07"]
    assert select(many, ids=chosen, dimensions=["3D"])[0].info["id"] == "t3D1-07"
    with pytest.raises(BenchError, match="t9D9"):
        select(many, ids=["t9D9"])
    with pytest.raises(BenchError, match="Xx"):
        select(many, elements=["Xx"])
    with pytest.raises(BenchError, match="5D"):
        select(many, dimensions=["5D"])
    with pytest.raises(BenchError, match="positive"):
        select(many, limit_per_dimension=0)
    assert len(select(many)) == len(many)


def test_subset_key():
    assert subset_key() == "all"
    assert subset_key(seed=5) == "all"  # a seed alone selects nothing
    assert subset_key(dimensions=["2D", "0D"]) == subset_key(dimensions=["0d", "2D", "0D"]) == "0D+2D"
    assert subset_key(limit_per_dimension=100, seed=0) == "n100s0"
    assert subset_key(limit_per_dimension=100, seed=1) != subset_key(limit_per_dimension=100, seed=0)
    assert subset_key(elements=["O", "Fe"]) == "el-Fe+O"
    key = subset_key(ids=["b", "a"])
    assert key == subset_key(ids=["a", "b", "a"]) and key.startswith("ids-") and key != subset_key(ids=["a"])
    full = subset_key(dimensions=["1D"], limit_per_dimension=10, seed=2, elements=["C"], ids=["x"])
    assert full.startswith("1D_n10s2_el-C_ids-") and len(full) < 40
    assert len(subset_key(elements=[s for s in "H He Li Be B C N O F Ne".split()])) < 16


@pytest.mark.slow
def test_p000_loads_in_seconds(tmp_path):
    import time

    start = time.perf_counter()
    dataset = load_dataset(str(P000), {}, tmp_path)
    seconds = time.perf_counter() - start
    assert len(dataset.structures) == 9155
    assert dataset.counts() == {"0D": 0, "1D": 0, "2D": 0, "3D": 9155}
    assert seconds < 30, seconds


def test_the_shipped_sample_is_a_registry_dataset_pinned_by_sha256(tmp_path):
    from helpers import REPO
    from orchestrator.manifest import load

    manifest = load(REPO / "benchmark.yaml", {"dataset": "sample"}, environ={})
    dataset = load_dataset("sample", manifest["datasets"], tmp_path / "cache")
    assert dataset.name == "sample" and len(dataset.structures) == dataset.counts()["3D"] == 50
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {"parsed"}  # nothing downloaded, nothing copied
    entry = {**manifest["datasets"]["sample"], "sha256": "0" * 64}
    with pytest.raises(BenchError, match=r"dataset sample: .*sample50.json.bz2 has sha256 bcdb04b9.*pins 0000"):
        load_dataset("sample", {"sample": entry}, tmp_path / "cache")


def test_a_parsed_dataset_is_kept_and_read_back_alike_until_a_file_changes(tmp_path, monkeypatch):
    import orchestrator.datasets.formats as formats

    path = write_entries(tmp_path / "data.json.bz2", structures())
    first = load_dataset(str(path), {}, tmp_path / "cache")
    parsed = list((tmp_path / "cache" / "parsed").iterdir())
    assert len(parsed) == 1
    monkeypatch.setattr(formats, "read_files", lambda *a: pytest.fail("parsed again"))
    again = load_dataset(str(path), {}, tmp_path / "cache")
    assert [a.info["id"] for a in again.structures] == [a.info["id"] for a in first.structures]
    assert [a.info["energy_ref_ev"] for a in again.structures] == [a.info["energy_ref_ev"] for a in first.structures]
    assert [a.info["periodic_axes"] for a in again.structures] == [a.info["periodic_axes"] for a in first.structures]
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(again.structures, first.structures))
    assert again.identity == first.identity and again.skipped == first.skipped
    monkeypatch.undo()
    parsed[0].write_bytes(b"damaged")  # a damaged cache is parsed again and replaced
    assert len(load_dataset(str(path), {}, tmp_path / "cache").structures) == len(first.structures)
    write_entries(path, structures()[:3])  # another file content: another key
    assert len(load_dataset(str(path), {}, tmp_path / "cache").structures) == 3


def test_a_registry_entry_needs_a_url_or_a_path(tmp_path):
    from orchestrator.manifest import load

    path = tmp_path / "benchmark.yaml"
    path.write_text("datasets:\n  mine: {sha256: abc}\n")
    with pytest.raises(BenchError, match="datasets.mine needs a url .* or a path"):
        load(path, environ={})
    path.write_text("datasets:\n  mine: {path: data/x.json.bz2}\n")
    assert load(path, environ={})["datasets"]["mine"]["path"] == str(tmp_path / "data" / "x.json.bz2")


def test_invalid_structures_are_skipped_with_one_warning_naming_each(tmp_path, caplog):
    good = structures()
    bad = {}
    for sid, change in (("nan-positions", lambda e: e["structure"]["sites"][0].update(xyz=[float("nan")] * 3)),
                        ("flat-cell", lambda e: e["structure"]["lattice"].update(matrix=[[3, 0, 0], [0, 3, 0],
                                                                                         [0, 0, 0]])),
                        ("no-atoms", lambda e: e["structure"].update(sites=[])),
                        ("unknown-element", lambda e: e["structure"]["sites"][0]["species"][0].update(element="Xx")),
                        ("on-top", lambda e: e["structure"]["sites"][1].update(
                            xyz=e["structure"]["sites"][0]["xyz"]))):
        made = entry(good[7])  # a 3D crystal of several atoms
        made["data"]["mat_id"] = sid
        change(made)
        bad[sid] = made
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps({"entries": [entry(a) for a in good] + list(bad.values())}))
    with caplog.at_level(logging.WARNING, logger="orchestrator.datasets"):
        dataset = load_dataset(str(path), {}, tmp_path / "c")
    assert len(dataset.structures) == len(good)
    assert dataset.skipped == {"nan-positions": "non-finite positions", "flat-cell": "singular (zero-volume) cell",
                               "no-atoms": "no atoms", "unknown-element": "unknown element",
                               "on-top": "atoms closer than 0.5 Å"}
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and all(sid in warnings[0] for sid in bad)


def test_a_damaged_file_is_one_clear_error(tmp_path):
    from helpers import REPO

    data = (REPO / "orchestrator" / "data" / "alexandria-pbe-3d-sample50.json.bz2").read_bytes()
    (tmp_path / "cut.json.bz2").write_bytes(data[: len(data) // 2])  # a download that stopped half-way
    with pytest.raises(BenchError, match=r"cut.json.bz2: damaged or not a dataset \(EOFError.*download it again"):
        load_dataset(str(tmp_path / "cut.json.bz2"), {}, tmp_path / "c")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "binary.json").write_bytes(b'{"entries": [' + bytes(range(128, 256)))
    with pytest.raises(BenchError, match=r"binary.json: damaged or not a dataset \(UnicodeDecodeError"):
        load_dataset(str(folder), {}, tmp_path / "c")


def test_extxyz_ids_stay_text(tmp_path):
    from ase.build import bulk

    frames = []
    for sid in ("0042", "T", "1e5", "agm 7"):
        atoms = bulk("Cu")
        atoms.info.update(mat_id=sid, energy=-3.5)
        frames.append(atoms)
    write(tmp_path / "ids.extxyz", frames, format="extxyz")
    dataset = load_dataset(str(tmp_path / "ids.extxyz"), {}, tmp_path / "c")
    assert sorted(a.info["id"] for a in dataset.structures) == ["0042", "1e5", "T", "agm 7"]
