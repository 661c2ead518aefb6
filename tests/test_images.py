import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import REPO
from orchestrator.errors import BenchError
from orchestrator.images import (LABEL, LOCK, ImageBuilder, content_hash, families_in_image, freeze, model_context,
                                 runtime_lock, torch_pin, wheels_for, write_lock)
from orchestrator.models import discover_models


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
    first = model_context(tmp_path / "a", model, ["emt"])
    again = model_context(tmp_path / "b", model, ["emt"])
    assert content_hash(first, {"RUNTIME_IMAGE": "r:1"}) == content_hash(again, {"RUNTIME_IMAGE": "r:1"})
    assert content_hash(first, {"RUNTIME_IMAGE": "r:2"}) != content_hash(again, {"RUNTIME_IMAGE": "r:1"})
    (again / "adapters" / "relax.py").write_text("# changed\n")
    assert content_hash(first, {}) != content_hash(again, {})


def test_an_image_holds_and_is_tagged_by_its_own_familys_factory_only(tmp_path):
    models = discover_models()
    adapters = tmp_path / "adapters"
    shutil.copytree(REPO / "adapters", adapters, ignore=shutil.ignore_patterns("__pycache__"))

    def tags() -> dict[str, str]:
        out = {}
        for name, model in models.items():
            if model.image_of is None:
                context = model_context(tmp_path / "ctx" / name, model, families_in_image(model, models),
                                        adapters_dir=adapters)
                out[name] = content_hash(context, {})
                shutil.rmtree(tmp_path / "ctx" / name)
        return out

    before = tags()
    context = model_context(tmp_path / "orb", models["orb-v2"], families_in_image(models["orb-v2"], models),
                            adapters_dir=adapters)
    held = sorted(p.stem for p in (context / "adapters" / "calculators").glob("*.py"))
    assert held == ["__init__", "orb"]  # ORB-v3 runs in ORB-v2's image: the same family
    with (adapters / "calculators" / "mace.py").open("a") as handle:
        handle.write("# a fix in MACE's factory\n")
    after = tags()
    assert {name for name in before if before[name] != after[name]} == {"mace-mpa-0"}
    with (adapters / "relax.py").open("a") as handle:
        handle.write("# a fix in the shared engine\n")
    assert all(tag != after[name] for name, tag in tags().items())  # the shared engine is in every image


@pytest.mark.docker
def test_image_is_built_once_labelled_and_reused(engine, builder, model_image):
    tag = model_image("emt")
    image = engine.client.images.get(tag)
    assert image.labels[f"{LABEL}.model"] == "emt"
    assert image.labels[f"{LABEL}.runtime"] == builder.runtime()
    assert builder.model(discover_models()["emt"]) == tag  # second call: same tag, no build
    assert engine.client.images.get(tag).id == image.id


@pytest.mark.docker
def test_a_failing_build_shows_the_log(builder, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(discover_models()["emt"].folder, folder)
    (folder / "Dockerfile").write_text(f"ARG RUNTIME_IMAGE\nFROM ${{RUNTIME_IMAGE}}\nCOPY {LOCK} /opt/{LOCK}\nRUN exit 3\n")
    with pytest.raises(BenchError, match="building umlip-0123d/broken.*failed"):
        builder.model(discover_models(tmp_path)["broken"])


def test_every_image_folder_has_a_lock_its_dockerfile_installs_under(tmp_path):
    for model in discover_models().values():
        if model.image:  # runs in another folder's image: that folder's lock
            assert not (model.folder / LOCK).exists() and (model.image_of.folder / LOCK).exists()
            continue
        lock = (model.folder / LOCK).read_text()
        pins = [line for line in lock.splitlines() if line and not line.startswith("#")]
        assert pins and all(re.fullmatch(r"[\w.-]+==[\w.!]+", pin) for pin in pins), model.name
        assert "ase==3.29.0" in pins, model.name  # the benchmark's one optimizer
        model_context(tmp_path / model.name, model, [model.calculator])  # no error: the Dockerfile copies it into place
    folder = tmp_path / "new"
    shutil.copytree(discover_models()["emt"].folder, folder)
    (folder / LOCK).unlink()
    with pytest.raises(BenchError, match=rf"new: no {LOCK}; `make lock MODEL=new` resolves and writes it"):
        model_context(tmp_path / "a", discover_models(tmp_path)["new"], ["emt"])
    (folder / LOCK).write_text("six==1.17.0\n")
    (folder / "Dockerfile").write_text("ARG RUNTIME_IMAGE\nFROM ${RUNTIME_IMAGE}\nRUN pip install six\n")
    with pytest.raises(BenchError, match=rf"new/Dockerfile: must COPY {LOCK} to /opt/umlip-0123d/{LOCK}"):
        model_context(tmp_path / "b", discover_models(tmp_path)["new"], ["emt"])


@pytest.mark.docker
def test_a_lock_decides_the_versions_and_make_lock_resolves_them_afresh(engine, builder, tmp_path):
    folder = tmp_path / "pinned"
    shutil.copytree(discover_models()["emt"].folder, folder)
    (folder / "Dockerfile").write_text("ARG RUNTIME_IMAGE\nFROM ${RUNTIME_IMAGE}\n"
                                       f"COPY {LOCK} /opt/umlip-0123d/{LOCK}\nRUN pip install six\n")
    (folder / LOCK).write_text("six==1.15.0\n")  # an old release: the unpinned request gets it anyway
    assert "six==1.15.0" in freeze(engine, builder.model(discover_models(tmp_path)["pinned"]))

    write_lock(builder, discover_models(tmp_path)["pinned"])
    pins = [line for line in (folder / LOCK).read_text().splitlines() if not line.startswith("#")]
    six = next(pin for pin in pins if pin.startswith("six=="))
    assert six != "six==1.15.0" and "ase==3.29.0" in pins
    assert not any("+" in pin for pin in pins)  # a wheelhouse's torch 2.13.0+cpu is locked as 2.13.0
    # the image built from the new lock has exactly the locked packages
    assert freeze(engine, builder.model(discover_models(tmp_path)["pinned"])) == pins


def torch_model_folder(tmp_path, name: str, six: str):
    """A copy of EMT's folder whose packages include torch and whose image installs six and
    torch (as a model package asking for torch does)."""
    folder = tmp_path / name
    shutil.copytree(discover_models()["emt"].folder, folder)
    meta = folder / "model.yaml"
    meta.write_text(meta.read_text().replace("packages: [ase, numpy]", "packages: [torch, ase, numpy]"))
    (folder / "Dockerfile").write_text("ARG RUNTIME_IMAGE\nFROM ${RUNTIME_IMAGE}\n"
                                       f"COPY {LOCK} /opt/umlip-0123d/{LOCK}\nRUN pip install six torch\n")
    (folder / LOCK).write_text((folder / LOCK).read_text() + f"six=={six}\n")
    return folder


def test_the_torch_pin_is_the_locks_for_a_model_with_torch_among_its_packages(tmp_path):
    torch_model_folder(tmp_path, "with-torch", "1.15.0")
    shutil.copytree(discover_models()["emt"].folder, tmp_path / "without")
    models = discover_models(tmp_path)
    pinned = [line for line in (tmp_path / "without" / LOCK).read_text().splitlines() if line.startswith("torch==")]
    assert torch_pin(models["with-torch"]) == (pinned[0] if pinned else None)
    assert torch_pin(models["without"]) is None  # torch in its lock (a wheelhouse's), not among its packages
    assert torch_pin(discover_models()["mace-mpa-0"]) == "torch==2.13.0"
    assert torch_pin(discover_models()["dpa3-v1-openlam"]) == "torch==2.8.0"
    assert torch_pin(discover_models()["grace-2l-oam"]) is None  # TensorFlow


@pytest.mark.docker
def test_images_that_lock_the_same_torch_share_one_torch_layer_and_keep_their_locks(engine, builder, tmp_path):
    """Two model images pinning the same torch are built on one torch layer (its layers are
    the first of both), and each image still holds exactly the packages of its own lock."""
    torch_model_folder(tmp_path, "first", "1.15.0")
    torch_model_folder(tmp_path, "second", "1.16.0")
    models = discover_models(tmp_path)
    images = {name: engine.client.images.get(builder.model(models[name])) for name in ("first", "second")}
    layer = images["first"].labels[f"{LABEL}.torch-layer"]
    assert layer == images["second"].labels[f"{LABEL}.torch-layer"]
    assert layer.startswith("umlip-0123d/torch:2.13.0-")
    assert engine.client.images.get(layer).labels[f"{LABEL}.runtime"] == builder.runtime()
    shared = engine.client.images.get(layer).attrs["RootFS"]["Layers"]
    for image in images.values():
        assert image.attrs["RootFS"]["Layers"][:len(shared)] == shared
        assert image.labels[f"{LABEL}.runtime"] == builder.runtime()
    for name, image in images.items():
        pins = [line for line in (tmp_path / name / LOCK).read_text().splitlines() if "==" in line]
        assert sorted(freeze(engine, image.tags[0])) == sorted(pins), name  # what runs: its lock, exactly
    assert f"{LABEL}.torch-layer" not in engine.client.images.get(builder.model(discover_models()["emt"])).labels


def test_a_model_folder_may_run_in_another_folders_image(tmp_path):
    models = discover_models()
    assert models["orb-v3-direct-inf-mpa"].image_of is models["orb-v2"]
    assert models["esen-30m-oam"].image_of is models["eqv2-m-omat-salex-mp"]
    for name in ("base", "shared"):
        (tmp_path / name).mkdir()
    (tmp_path / "base" / "model.yaml").write_text("description: x\ncalculator: orb\n")
    (tmp_path / "base" / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "shared" / "model.yaml").write_text("description: y\ncalculator: orb\nimage: bass\n")
    with pytest.raises(BenchError, match=r"shared/model.yaml: image 'bass' is not a model folder with a Dockerfile"):
        discover_models(tmp_path)
    (tmp_path / "shared" / "model.yaml").write_text('description: y\ncalculator: orb\nimage: base\npython: "3.13"\n')
    with pytest.raises(BenchError, match=r"shared: a model running in base's image has no Dockerfile and asks for no"):
        discover_models(tmp_path)


@pytest.mark.docker
def test_a_model_without_a_dockerfile_gets_the_image_it_names(model_image):
    assert model_image("orb-v3-direct-inf-mpa") == model_image("orb-v2")


def test_a_runtime_gets_the_wheels_made_for_its_python(tmp_path):
    names = ["torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "numpy-2.4.6-cp313-cp313-manylinux_2_28_x86_64.whl",
             "ase-3.29.0-py3-none-any.whl", "six-1.17.0-py2.py3-none-any.whl"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [w.name for w in wheels_for(tmp_path, "3.11")] == [names[2], names[3], names[0]]
    assert [w.name for w in wheels_for(tmp_path, "3.13")] == [names[2], names[1], names[3]]
    assert wheels_for(None, "3.11") == []


def test_a_python_without_a_base_image_is_named_with_the_key_to_set(tmp_path):
    folder = tmp_path / "new"
    shutil.copytree(discover_models()["emt"].folder, folder)
    meta = folder / "model.yaml"
    meta.write_text(meta.read_text().replace('python: "3.11"', 'python: "3.14"'))
    builder = ImageBuilder(None, {"3.11": "python:3.11-slim-bookworm"}, None, None, tmp_path)
    with pytest.raises(BenchError, match=r'asks for Python 3.14, but base_images in benchmark.yaml has no "3.14"'):
        builder.model(discover_models(tmp_path)["new"])
    meta.write_text(meta.read_text().replace('python: "3.14"', "python: 3.14"))
    with pytest.raises(BenchError, match=r'new/model.yaml: \'python\' must be a str'):
        discover_models(tmp_path)


@pytest.mark.docker
def test_a_model_asking_for_python_3_13_runs_on_a_runtime_built_for_it(engine, builder, tmp_path):
    folder = tmp_path / "emt-313"
    shutil.copytree(discover_models()["emt"].folder, folder)
    meta = folder / "model.yaml"
    meta.write_text(meta.read_text().replace('python: "3.11"', 'python: "3.13"'))
    assert runtime_lock("3.13").exists()  # committed, made by `make lock PYTHON=3.13`
    image = builder.model(discover_models(tmp_path)["emt-313"])
    runtime = engine.client.images.get(image).labels[f"{LABEL}.runtime"]
    assert runtime == builder.runtime("3.13") != builder.runtime("3.11")
    assert engine.client.images.get(runtime).labels[f"{LABEL}.python"] == "3.13"
    run = engine.client.containers.run
    assert run(image, ["python", "-c", "import sys; print(sys.version_info[:2])"], remove=True).decode().strip() == "(3, 13)"
    # the adapters work there: the contract of its family passes (finite differences included)
    report = run(image, ["python", "-m", "adapters.contract", "--job", '{"calculator": "emt"}'], remove=True,
                 network_disabled=True)
    assert '"passed": true' in report.decode().splitlines()[-1]
    # a cp311 wheel of the wheelhouse (CI's CPU torch) is not offered to the 3.13 runtime
    assert "torch" not in " ".join(freeze(engine, runtime))


def zoo(tmp_path):
    for name, extra in (("mace-mpa-0", "paper_tag: MACE\naliases: [mace]\n"),
                        ("orb-v3-conservative-inf-mpa", "paper_tag: ORB-3c\naliases: [orb]\n"),
                        ("orb-v3-direct-inf-mpa", "paper_tag: ORB-3d\naliases: [orb]\n"), ("emt", ""),
                        ("mace-mh-1", "group: current\n"), ("mace-omat-0", "group: current\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.yaml").write_text(f"description: {name}\ncalculator: x\n{extra}")
        (tmp_path / name / "Dockerfile").write_text("FROM x\n")
    return discover_models(tmp_path)


def test_a_model_answers_to_its_folder_its_paper_tag_and_its_aliases(tmp_path):
    from orchestrator.models import resolve_models

    models = zoo(tmp_path)
    for name in ("mace", "MACE", "mace-mpa-0", "Mace"):
        assert [m.name for m in resolve_models([name], models, [])] == ["mace-mpa-0"]
    assert [m.name for m in resolve_models(["ORB-3d", "emt", "orb-3D"], models, [])] == \
        ["orb-v3-direct-inf-mpa", "emt"]
    with pytest.raises(BenchError, match=r"MODEL 'orb' is ambiguous; choose from: orb-v3-conservative-inf-mpa "
                                         r"\(ORB-3c/orb\), orb-v3-direct-inf-mpa \(ORB-3d/orb\), or a group: "
                                         r"paper, current, all"):
        resolve_models(["orb"], models, [])
    with pytest.raises(BenchError, match=r"MODEL 'macey' is not a model; choose from: emt, mace-mh-1, mace-mpa-0 \(MACE/mace\)"):
        resolve_models(["macey"], models, [])


def test_paper_means_every_model_of_the_paper(tmp_path):
    from orchestrator.models import resolve_models

    models = zoo(tmp_path)
    assert [m.name for m in resolve_models(["paper"], models, ["MACE", "ORB-3c", "ORB-3d"])] == \
        ["mace-mpa-0", "orb-v3-conservative-inf-mpa", "orb-v3-direct-inf-mpa"]
    with pytest.raises(BenchError, match="no folder for DPA3, eqV2 yet"):
        resolve_models(["paper"], models, ["MACE", "DPA3", "eqV2"])


def test_groups_current_and_all_come_from_the_model_folders(tmp_path):
    from orchestrator.models import resolve_models

    models = zoo(tmp_path)
    tags = ["MACE", "ORB-3c", "ORB-3d"]
    assert [m.name for m in resolve_models(["current"], models, tags)] == ["mace-mh-1", "mace-omat-0"]
    assert [m.name for m in resolve_models(["ALL"], models, tags)] == \
        ["mace-mpa-0", "orb-v3-conservative-inf-mpa", "orb-v3-direct-inf-mpa", "mace-mh-1", "mace-omat-0"]
    assert models["emt"].groups == [] and models["mace-mh-1"].groups == ["current", "all"]
    assert resolve_models(["current", "mace-mh-1", "emt"], models, tags)[-1].name == "emt"  # no model twice
    (tmp_path / "mace-mh-1" / "model.yaml").write_text("description: x\ncalculator: x\ngroup: newest\n")
    with pytest.raises(BenchError, match=r"mace-mh-1/model.yaml: group may only be 'current'"):
        discover_models(tmp_path)
    (tmp_path / "mace-mh-1" / "model.yaml").write_text("description: x\ncalculator: x\n")
    (tmp_path / "mace-omat-0" / "model.yaml").write_text("description: x\ncalculator: x\n")
    with pytest.raises(BenchError, match="no model folder says `group: current` yet"):
        resolve_models(["current"], discover_models(tmp_path), tags)


def test_the_shipped_groups(tmp_path, capsys):
    from orchestrator.cli import main
    from orchestrator.models import GROUPS, discover_models, group_models
    from metrics.paper import table_ii

    models = discover_models()
    tags = list(dict.fromkeys(table_ii()["tag"]))
    paper, current, every = (group_models(group, models, tags) for group in GROUPS)
    assert len(paper) == 11 and every == paper + current
    assert {"mace-mh-1", "mace-omat-0"} <= {m.name for m in current}
    assert not {"emt", "chgnet", "sevennet-0"} & {m.name for m in every}
    manifest = tmp_path / "benchmark.yaml"
    manifest.write_text(f"cache_dir: {tmp_path / 'cache'}\n")
    assert main(["models", "--manifest", str(manifest)]) == 0
    assert f"groups (MODEL=<group>): paper (11), current ({len(current)}), all ({11 + len(current)})" \
        in capsys.readouterr().out


def test_make_models_says_what_is_present_and_what_the_user_supplies(tmp_path, capsys):
    from orchestrator.cli import main

    manifest = tmp_path / "benchmark.yaml"
    manifest.write_text(f"cache_dir: {tmp_path / 'cache'}\n")
    assert main(["models", "--manifest", str(manifest), "--format", "json"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["mace-mpa-0"]["paper tag"] == "MACE" and rows["mace-mpa-0"]["weights"] == "missing"
    assert rows["sevennet-mf-ompa"]["paper tag"] == "SevenNet" and rows["chgnet"]["weights"] == "none needed"
    assert rows["orb-v2"]["batched forward"] == "yes" and rows["m3gnet"]["batched forward"] == "no (one by one)"
    (tmp_path / "cache" / "weights" / "mace-mpa-0").mkdir(parents=True)
    (tmp_path / "cache" / "weights" / "mace-mpa-0" / "mace-mpa-0-medium.model").write_bytes(b"x")
    main(["models", "--manifest", str(manifest), "--format", "csv"])
    assert "present" in next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mace-mpa-0,"))


def test_make_models_piped_keeps_every_name_whole(tmp_path):
    from orchestrator.models import discover_models

    manifest = tmp_path / "benchmark.yaml"
    manifest.write_text(f"cache_dir: {tmp_path / 'cache'}\n")
    piped = subprocess.run([sys.executable, "-m", "orchestrator", "models", "--manifest", str(manifest)],
                           cwd=REPO, capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "80"})
    lines = piped.stdout.splitlines()
    for name, model in discover_models().items():  # what `make models | grep NAME` must find
        line = next((line for line in lines if line.split()[:1] == [name]), None)
        assert line is not None, name
        assert model.paper_tag is None or model.paper_tag in line.split()
    assert "…" not in piped.stdout


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


def test_doctor_checks_the_base_image_of_each_python_the_models_ask_for(tmp_path, monkeypatch):
    from rich.console import Console

    import orchestrator.doctor
    from orchestrator.manifest import load

    class Engine:  # an engine that holds no image
        where = "the default socket"

        def name(self):
            return "Docker"

        def version(self):
            return "test"

        def image_id(self, tag):
            return None

    out = io.StringIO()
    monkeypatch.setattr(orchestrator.doctor, "console", Console(file=out, width=300))
    monkeypatch.setattr(orchestrator.doctor, "DockerEngine", Engine)
    manifest = tmp_path / "benchmark.yaml"
    manifest.write_text(f"cache_dir: {tmp_path / 'cache'}\nmodels: [emt]\nbase_images: {{\"3.11\": my/base}}\n")
    orchestrator.doctor.doctor(load(manifest, environ={}))
    text = out.getvalue()
    assert "base image for Python 3.11: my/base not present locally" in text and "make-local-base.sh" in text
    assert "Python 3.13" not in text  # no model to run asks for it


def test_make_bench_model_paper_runs_a_folder_for_each_of_the_papers_eleven_models(manifest):
    from metrics.paper import table_ii
    from orchestrator.run.plan import pick_models

    models = pick_models(manifest, ["paper"])
    assert len(models) == 11
    assert sorted(m.paper_tag for m in models) == sorted(set(table_ii()["tag"]))
