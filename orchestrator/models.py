"""The model catalogue: the folders of images/ with a model.yaml, each read and checked
(its keys, weights, the image it runs in), and the names a user gives them on the command
line (folder, paper tag, alias, or a group: paper, current, all). How their images are built
is orchestrator.images."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from orchestrator.errors import BenchError

REPO = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO / "images"
MODEL_KEYS = {"description": str, "calculator": str, "options": dict, "packages": list, "paper_tag": str,
              "aliases": list, "forces": str, "weights": list, "citation": str, "python": str, "image": str,
              "dtype": str, "group": str}
#: A model's Python when its model.yaml does not say.
DEFAULT_PYTHON = "3.11"
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
    python: str = DEFAULT_PYTHON     # the version its runtime is built for (base_images in the manifest)
    dtype: str | None = None         # the precision it computes in, as its package runs it
    image: str | None = None         # the model folder whose image it runs in, if not its own
    image_of: "Model | None" = None  # that folder's model (set by discover_models)
    group: str | None = None         # "current" (model.yaml); the paper's models are the ones with a paper_tag

    @property
    def groups(self) -> list[str]:
        """The groups MODEL= can name that hold this model (see GROUPS)."""
        own = [PAPER] if self.paper_tag else ([self.group] if self.group else [])
        return [*own, ALL] if own else []

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
        if not re.fullmatch(r"3\.\d+", data.get("python", DEFAULT_PYTHON)):
            raise BenchError(f"{meta}: python must be a quoted version like \"3.11\", not {data['python']!r}")
        if data.get("group", CURRENT) != CURRENT or ("group" in data and "paper_tag" in data):
            raise BenchError(f"{meta}: group may only be {CURRENT!r}, for a model outside the paper (the paper's "
                             "models are those with a paper_tag)")
        if data.get("forces", "conservative") not in ("conservative", "direct"):
            raise BenchError(f"{meta}: forces must be conservative or direct, not {data['forces']!r}")
        _check_weights(meta, data.get("weights", []))
        if "image" not in data and not (meta.parent / "Dockerfile").exists():
            raise BenchError(f"{meta.parent}: a model folder needs a Dockerfile, or `image:` naming the model "
                             "folder whose image it runs in")
        models[meta.parent.name] = Model(name=meta.parent.name, folder=meta.parent, **data)
    for model in models.values():
        if model.image:
            model.image_of = models.get(model.image)
            if model.image_of is None or model.image_of.image:
                raise BenchError(f"{model.folder / 'model.yaml'}: image {model.image!r} is not a model folder "
                                 "with a Dockerfile of its own")
            if (model.folder / "Dockerfile").exists() or model.python != model.image_of.python:
                raise BenchError(f"{model.folder}: a model running in {model.image}'s image has no Dockerfile "
                                 "and asks for no other Python")
    return models


#: The groups MODEL= can name: every model of Benedini et al. (those with a paper_tag), the
#: current generation (model.yaml `group: current`), and both. The tool's own small models
#: (EMT, CHGNet, SevenNet-0) are in none.
PAPER, CURRENT, ALL = "paper", "current", "all"
GROUPS = (PAPER, CURRENT, ALL)


def _paper_models(available: dict[str, Model], paper_tags: list[str]) -> list[Model]:
    by_tag = {m.paper_tag.lower(): m for m in available.values() if m.paper_tag}
    absent = [tag for tag in paper_tags if tag.lower() not in by_tag]
    if absent:
        raise BenchError(f"MODEL=paper runs the paper's {len(paper_tags)} models, but images/ has no "
                         f"folder for {', '.join(absent)} yet")
    return [by_tag[tag.lower()] for tag in paper_tags]


def group_models(group: str, available: dict[str, Model], paper_tags: list[str]) -> list[Model]:
    """The models of a group (GROUPS), the paper's in its Table order, the others by name."""
    current = [m for m in available.values() if m.group == CURRENT]
    if group == CURRENT and not current:
        raise BenchError("MODEL=current: no model folder says `group: current` yet")
    return {PAPER: lambda: _paper_models(available, paper_tags), CURRENT: lambda: current,
            ALL: lambda: _paper_models(available, paper_tags) + current}[group]()


def resolve_models(names: list[str], available: dict[str, Model], paper_tags: list[str]) -> list[Model]:
    """The models meant by `names`: a folder name, a paper tag or an alias (any case), or a
    group (GROUPS: `paper` for every model of the paper, `paper_tags`, all of which must
    have a folder; `current`; `all`). An unknown or ambiguous name is an error listing the
    choices."""
    chosen: list[Model] = []
    for name in names:
        if name.lower() in GROUPS:
            matches = group_models(name.lower(), available, paper_tags)
        else:
            matches = [m for m in available.values() if name.lower() in (n.lower() for n in m.names)]
            exact = [m for m in matches if m.name == name]
            matches = exact or matches
            if len(matches) != 1:
                choices = ", ".join(f"{m.name} ({'/'.join(m.names[1:])})" if m.names[1:] else m.name
                                    for m in (matches or available.values()))
                what = "is ambiguous" if matches else "is not a model"
                raise BenchError(f"MODEL {name!r} {what}; choose from: {choices}, or a group: {', '.join(GROUPS)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen
