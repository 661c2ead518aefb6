"""One Docker image per model, tagged by a hash of everything that built it.

images/base/Dockerfile is the shared runtime (venv, CA bundle, pinned ase);
every other folder of images/ with a model.yaml is a model. A model image is
rebuilt only when its Dockerfile, model.yaml, the adapters code, or the runtime
changes; the tag says which, so the tag alone decides reuse.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from orchestrator.errors import BenchError

REPO = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO / "images"
ADAPTERS_DIR = REPO / "adapters"
IMAGE_PREFIX = "umlip-0123d"
LABEL = "org.umlip-0123d"
MODEL_KEYS = {"description": str, "calculator": str, "options": dict, "packages": list, "paper_tag": str,
              "aliases": list, "forces": str, "weights": list, "citation": str}
WEIGHT_KEYS = {"file": str, "url": str, "sha256": str, "licence": str, "access": str, "note": str}
#: How a weights file is had: downloaded as is, downloaded with the user's HF_TOKEN, or
#: put in place by the user (no public copy).
WEIGHT_ACCESS = ("public", "token", "manual")


@dataclass
class Model:
    name: str
    folder: Path
    description: str
    calculator: str
    options: dict = field(default_factory=dict)
    packages: list = field(default_factory=list)
    paper_tag: str | None = None      # the model's tag in Benedini et al. (Table I), if it is one of theirs
    aliases: list = field(default_factory=list)
    forces: str | None = None         # conservative | direct
    weights: list = field(default_factory=list)  # WEIGHT_KEYS entries; the first is the checkpoint
    citation: str | None = None

    @property
    def names(self) -> list[str]:
        """Every name the model answers to: its folder, its paper tag, its aliases."""
        return [self.name, *([self.paper_tag] if self.paper_tag else []), *self.aliases]


def _check_keys(where: str, data: dict, schema: dict) -> None:
    """Every key of `data` known to `schema` (key -> type) and of its type."""
    for key, value in data.items():
        if key not in schema:
            raise BenchError(f"{where}: unknown key {key!r}; allowed: {sorted(schema)}")
        if not isinstance(value, schema[key]):
            raise BenchError(f"{where}: {key!r} must be a {schema[key].__name__}")


def _check_weights(meta: Path, weights: list) -> None:
    for k, entry in enumerate(weights):
        where = f"{meta}: weights[{k}]"
        if not isinstance(entry, dict) or "file" not in entry:
            raise BenchError(f"{where} needs a file name")
        _check_keys(where, entry, WEIGHT_KEYS)
        access = entry.get("access", "public")
        if access not in WEIGHT_ACCESS:
            raise BenchError(f"{where}: access must be one of {', '.join(WEIGHT_ACCESS)}, not {access!r}")
        if access != "manual" and "url" not in entry:
            raise BenchError(f"{where}: a downloadable file needs a url (or access: manual)")
        if "/" in entry["file"] or entry["file"].startswith("."):
            raise BenchError(f"{where}: file must be a plain file name, not {entry['file']!r}")


def discover_models(images_dir: Path = IMAGES_DIR) -> dict[str, Model]:
    """Every folder of images/ that holds a model.yaml, validated."""
    models = {}
    for meta in sorted(images_dir.glob("*/model.yaml")):
        try:
            data = yaml.safe_load(meta.read_text()) or {}
        except yaml.YAMLError as err:
            raise BenchError(f"{meta}: not valid YAML ({err})".replace("\n", " ")) from None
        _check_keys(str(meta), data, MODEL_KEYS)
        for key in ("description", "calculator"):
            if key not in data:
                raise BenchError(f"{meta}: missing key {key!r}")
        if data.get("forces", "conservative") not in ("conservative", "direct"):
            raise BenchError(f"{meta}: forces must be conservative or direct, not {data['forces']!r}")
        _check_weights(meta, data.get("weights", []))
        if not (meta.parent / "Dockerfile").exists():
            raise BenchError(f"{meta.parent}: a model folder needs a Dockerfile")
        models[meta.parent.name] = Model(name=meta.parent.name, folder=meta.parent, **data)
    return models


#: MODEL=paper: every model of Benedini et al.
PAPER = "paper"


def resolve_models(names: list[str], available: dict[str, Model], paper_tags: list[str]) -> list[Model]:
    """The models meant by `names`: a folder name, a paper tag or an alias (any case), or
    `paper` for every model of the paper (`paper_tags`, all of which must have a folder).
    An unknown or ambiguous name is an error listing the choices."""
    chosen: list[Model] = []
    for name in names:
        if name.lower() == PAPER:
            by_tag = {m.paper_tag.lower(): m for m in available.values() if m.paper_tag}
            absent = [tag for tag in paper_tags if tag.lower() not in by_tag]
            if absent:
                raise BenchError(f"MODEL=paper runs the paper's {len(paper_tags)} models, but images/ has no "
                                 f"folder for {', '.join(absent)} yet")
            matches = [by_tag[tag.lower()] for tag in paper_tags]
        else:
            matches = [m for m in available.values() if name.lower() in (n.lower() for n in m.names)]
            exact = [m for m in matches if m.name == name]
            matches = exact or matches
            if len(matches) != 1:
                choices = ", ".join(f"{m.name} ({'/'.join(m.names[1:])})" if m.names[1:] else m.name
                                    for m in (matches or available.values()))
                what = "is ambiguous" if matches else "is not a model"
                raise BenchError(f"MODEL {name!r} {what}; choose from: {choices}, or {PAPER}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def _tree_files(root: Path):
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path


def content_hash(context: Path, build_args: dict) -> str:
    """sha256 over the context's files (paths and bytes) and the build args."""
    digest = hashlib.sha256(json.dumps(build_args, sort_keys=True).encode())
    for path in _tree_files(context):
        digest.update(str(path.relative_to(context)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def runtime_context(dest: Path, ca_bundle: Path | None, wheelhouse: Path | None) -> Path:
    shutil.copytree(IMAGES_DIR / "base", dest, dirs_exist_ok=True)
    (dest / "extra-ca.crt").write_bytes(ca_bundle.read_bytes() if ca_bundle else b"")
    (dest / "wheelhouse").mkdir()
    for wheel in sorted(wheelhouse.glob("*.whl")) if wheelhouse else []:
        # hard links: a torch wheel is hundreds of MB
        try:
            (dest / "wheelhouse" / wheel.name).hardlink_to(wheel)
        except OSError:
            shutil.copy(wheel, dest / "wheelhouse" / wheel.name)
    return dest


def model_context(dest: Path, model: Model) -> Path:
    shutil.copytree(model.folder, dest, dirs_exist_ok=True)
    shutil.copytree(ADAPTERS_DIR, dest / "adapters", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


class ImageBuilder:
    """Builds (or reuses) the runtime and model images with a Docker client."""

    def __init__(self, client, base_image: str, ca_bundle: Path | None, wheelhouse: Path | None,
                 log_dir: Path, echo=print):
        self.client = client
        self.base_image = base_image
        self.ca_bundle = ca_bundle
        self.wheelhouse = wheelhouse
        self.log_dir = log_dir
        self.echo = echo
        self._runtime_tag: str | None = None

    @classmethod
    def from_manifest(cls, client, manifest, log_dir: Path | None = None, echo=print) -> "ImageBuilder":
        """The builder the manifest describes; build logs under cache_dir/build-logs unless told."""
        return cls(client, manifest["base_image"], manifest.path_setting("ca_bundle"),
                   manifest.path_setting("wheelhouse"),
                   log_dir or manifest.path_setting("cache_dir") / "build-logs", echo=echo)

    def runtime(self) -> str:
        if self._runtime_tag is None:
            base_id = self._base_image_id()
            with tempfile.TemporaryDirectory() as tmp:
                context = runtime_context(Path(tmp), self.ca_bundle, self.wheelhouse)
                args = {"BASE_IMAGE": self.base_image}
                tag = f"{IMAGE_PREFIX}/runtime:{content_hash(context, {**args, 'base_id': base_id})}"
                self._ensure(tag, context, args, {f"{LABEL}.base-image": self.base_image,
                                                  f"{LABEL}.base-image-id": base_id})
            self._runtime_tag = tag
        return self._runtime_tag

    def model(self, model: Model) -> str:
        runtime = self.runtime()
        with tempfile.TemporaryDirectory() as tmp:
            context = model_context(Path(tmp) / "ctx", model)
            args = {"RUNTIME_IMAGE": runtime}
            tag = f"{IMAGE_PREFIX}/{model.name}:{content_hash(context, args)}"
            self._ensure(tag, context, args, {f"{LABEL}.model": model.name, f"{LABEL}.runtime": runtime})
        return tag

    def _base_image_id(self) -> str:
        """Id of the base image if present locally; else its name (pulled by the build)."""
        import docker.errors

        try:
            return self.client.images.get(self.base_image).id
        except docker.errors.ImageNotFound:
            return self.base_image

    def _ensure(self, tag: str, context: Path, args: dict, labels: dict) -> None:
        import docker.errors

        try:
            self.client.images.get(tag)
            return
        except docker.errors.ImageNotFound:
            pass
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / (tag.replace("/", "_").replace(":", "_") + ".log")
        self.echo(f"building {tag} (log: {log_path})")
        error = None
        with log_path.open("w") as log:
            for chunk in self.client.api.build(path=str(context), tag=tag, buildargs=args, rm=True,
                                               forcerm=True, labels=labels, decode=True):
                if "stream" in chunk:
                    log.write(chunk["stream"])
                    log.flush()
                if "error" in chunk:
                    error = chunk["error"]
                    log.write(error + "\n")
        if error:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
            raise BenchError(f"building {tag} failed: {error.strip()}\n--- last lines of {log_path} ---\n{tail}")
