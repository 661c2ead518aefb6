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
    (tmp_path / "mace" / "model.yaml").write_text("description: x\ncalculator: mace\nweights: y\n")
    (tmp_path / "mace" / "Dockerfile").write_text("FROM x\n")
    with pytest.raises(BenchError, match=r"mace/model.yaml: unknown key 'weights'"):
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
