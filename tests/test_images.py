import io
import shutil

import pytest

from orchestrator.errors import BenchError
from orchestrator.images import LABEL, content_hash, discover_models, model_context


def test_repository_models_are_valid():
    models = discover_models()
    assert {"emt", "chgnet", "sevennet-0"} <= set(models)
    assert models["chgnet"].options == {"model": "0.3.0"}


def test_bad_model_folder_is_named(tmp_path):
    (tmp_path / "mace").mkdir()
    (tmp_path / "mace" / "model.yaml").write_text("description: x\ncalculator: mace\nweightz: y\n")
    (tmp_path / "mace" / "Dockerfile").write_text("FROM x\n")
    with pytest.raises(BenchError, match=r"mace/model.yaml: unknown key 'weightz'"):
        discover_models(tmp_path)
    (tmp_path / "mace" / "model.yaml").write_text("description: x\ncalculator: mace\nweights: [{file: a.model}]\n")
    with pytest.raises(BenchError, match=r"weights\[0\]: a downloadable file needs a url"):
        discover_models(tmp_path)
    (tmp_path / "mace" / "model.yaml").write_text(
        "description: x\ncalculator: mace\nweights: [{file: a.model, access: secret}]\n")
    with pytest.raises(BenchError, match=r"access must be one of public, token, manual"):
        discover_models(tmp_path)
    (tmp_path / "mace" / "model.yaml").write_text("description: x\ncitation: Orb: fast\n")
    with pytest.raises(BenchError, match=r"mace/model.yaml: not valid YAML"):
        discover_models(tmp_path)
    (tmp_path / "mace" / "model.yaml").write_text("description: x\n")
    with pytest.raises(BenchError, match="missing key 'calculator'"):
        discover_models(tmp_path)


def test_tag_follows_the_build_inputs(tmp_path):
    model = discover_models()["emt"]
    first = model_context(tmp_path / "a", model)
    again = model_context(tmp_path / "b", model)
    assert content_hash(first, {"RUNTIME_IMAGE": "r:1"}) == content_hash(again, {"RUNTIME_IMAGE": "r:1"})
    assert content_hash(first, {"RUNTIME_IMAGE": "r:2"}) != content_hash(again, {"RUNTIME_IMAGE": "r:1"})
    (again / "adapters" / "relax.py").write_text("# changed\n")
    assert content_hash(first, {}) != content_hash(again, {})


@pytest.mark.docker
def test_image_is_built_once_labelled_and_reused(docker_client, builder, model_image):
    tag = model_image("emt")
    image = docker_client.images.get(tag)
    assert image.labels[f"{LABEL}.model"] == "emt"
    assert image.labels[f"{LABEL}.runtime"] == builder.runtime()
    assert builder.model(discover_models()["emt"]) == tag  # second call: same tag, no build
    assert docker_client.images.get(tag).id == image.id


@pytest.mark.docker
def test_a_failing_build_shows_the_log(builder, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(discover_models()["emt"].folder, folder)
    (folder / "Dockerfile").write_text("ARG RUNTIME_IMAGE\nFROM ${RUNTIME_IMAGE}\nRUN exit 3\n")
    with pytest.raises(BenchError, match="building umlip-0123d/broken.*failed"):
        builder.model(discover_models(tmp_path)["broken"])


def zoo(tmp_path):
    for name, extra in (("mace-mpa-0", "paper_tag: MACE\naliases: [mace]\n"),
                        ("orb-v3-conservative-inf-mpa", "paper_tag: ORB-3c\naliases: [orb]\n"),
                        ("orb-v3-direct-inf-mpa", "paper_tag: ORB-3d\naliases: [orb]\n"), ("emt", "")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.yaml").write_text(f"description: {name}\ncalculator: x\n{extra}")
        (tmp_path / name / "Dockerfile").write_text("FROM x\n")
    return discover_models(tmp_path)


def test_a_model_answers_to_its_folder_its_paper_tag_and_its_aliases(tmp_path):
    from orchestrator.images import resolve_models

    models = zoo(tmp_path)
    for name in ("mace", "MACE", "mace-mpa-0", "Mace"):
        assert [m.name for m in resolve_models([name], models, [])] == ["mace-mpa-0"]
    assert [m.name for m in resolve_models(["ORB-3d", "emt", "orb-3D"], models, [])] == \
        ["orb-v3-direct-inf-mpa", "emt"]
    with pytest.raises(BenchError, match=r"MODEL 'orb' is ambiguous; choose from: orb-v3-conservative-inf-mpa "
                                         r"\(ORB-3c/orb\), orb-v3-direct-inf-mpa \(ORB-3d/orb\), or paper"):
        resolve_models(["orb"], models, [])
    with pytest.raises(BenchError, match=r"MODEL 'macey' is not a model; choose from: emt, mace-mpa-0 \(MACE/mace\)"):
        resolve_models(["macey"], models, [])


def test_paper_means_every_model_of_the_paper(tmp_path):
    from orchestrator.images import resolve_models

    models = zoo(tmp_path)
    assert [m.name for m in resolve_models(["paper"], models, ["MACE", "ORB-3c", "ORB-3d"])] == \
        ["mace-mpa-0", "orb-v3-conservative-inf-mpa", "orb-v3-direct-inf-mpa"]
    with pytest.raises(BenchError, match="no folder for DPA3, eqV2 yet"):
        resolve_models(["paper"], models, ["MACE", "DPA3", "eqV2"])


def test_make_models_says_what_is_present_and_what_the_user_supplies(tmp_path, monkeypatch):
    from rich.console import Console

    import orchestrator.engine
    from orchestrator.cli import main

    manifest = tmp_path / "benchmark.yaml"
    manifest.write_text(f"cache_dir: {tmp_path / 'cache'}\n")
    out = io.StringIO()
    monkeypatch.setattr(orchestrator.engine, "console", Console(file=out, width=200))
    assert main(["models", "--manifest", str(manifest)]) == 0
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in out.getvalue().splitlines() if line.startswith("│")}
    weights, batched = 5, 3  # columns after the model's
    assert rows["mace-mpa-0"][0] == "MACE" and rows["mace-mpa-0"][weights] == "missing"
    assert rows["sevennet-mf-ompa"][0] == "SevenNet" and rows["chgnet"][weights] == "none needed"
    assert rows["sevennet-0"][batched] == "yes" and rows["chgnet"][batched] == "no (one by one)"
    (tmp_path / "cache" / "weights" / "mace-mpa-0").mkdir(parents=True)
    (tmp_path / "cache" / "weights" / "mace-mpa-0" / "mace-mpa-0-medium.model").write_bytes(b"x")
    out.seek(0)
    out.truncate()
    main(["models", "--manifest", str(manifest)])
    assert "present" in next(line for line in out.getvalue().splitlines() if "mace-mpa-0" in line)


def test_doctor_names_missing_weights_and_the_command_that_fetches_them(tmp_path, monkeypatch):
    from rich.console import Console

    import orchestrator.doctor
    from orchestrator.manifest import load

    out = io.StringIO()
    monkeypatch.setattr(orchestrator.doctor, "console", Console(file=out, width=300))
    manifest = tmp_path / "benchmark.yaml"
    manifest.write_text(f"cache_dir: {tmp_path / 'cache'}\nmodels: [MACE, chgnet]\n")
    orchestrator.doctor.doctor(load(manifest, environ={}))
    text = out.getvalue()
    assert "models to run: mace-mpa-0, chgnet" in text
    assert "mace-mpa-0: weights missing: mace-mpa-0-medium.model" in text and "make weights MODEL=mace-mpa-0" in text
    assert "chgnet: weights" not in text  # nothing to fetch
