"""One Docker image per model, tagged by a hash of everything that built it.

images/base/Dockerfile is the shared runtime (venv, CA bundle, pinned ase), built
once per Python version the models ask for (model.yaml `python`) on the manifest's
base image for that version; every other folder of images/ with a model.yaml is a
model, with a Dockerfile of its own or running in another model folder's image
(model.yaml `image`: the same packages, e.g. ORB-v3 in ORB-v2's). A model image is
rebuilt only when its Dockerfile, model.yaml, lock, the code it runs, or its runtime
changes; the tag says which, so the tag alone decides reuse. The code it runs is the
shared engine (adapters/*.py) and its own family's factory (adapters/calculators/<family>.py,
model.yaml `calculator`), not the other families': editing one family's factory rebuilds
and re-tags only the images of that family's models.

Each model folder has a requirements.lock, and images/base one per Python version
(requirements-<version>.lock): every package of the image at its exact version,
written by `make lock` from what pip resolved then. The image keeps it at LOCK_PATH,
which PIP_CONSTRAINT names, so its installs resolve to those versions: an image
rebuilt next year has the packages this one has.

Between the runtime and a model image whose packages include torch sits a torch layer
(images/base/Dockerfile.torch): the torch release its lock pins, installed once and shared
by every model image that pins the same one, instead of a copy of torch and its CUDA
libraries in each image.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

from orchestrator.errors import BenchError
from orchestrator.models import DEFAULT_PYTHON, IMAGES_DIR, REPO, Model, discover_models
from orchestrator.workers.spec import LABEL, WorkerSpec

ADAPTERS_DIR = REPO / "adapters"
IMAGE_PREFIX = "umlip-0123d"
#: The lock file of a folder, and where its image keeps it (PIP_CONSTRAINT names it there:
#: the runtime's at first, each model's copied over it).
LOCK = "requirements.lock"
LOCK_PATH = "/opt/umlip-0123d/requirements.lock"
#: The lock of an image being locked: no constraint beyond the runtime's ase pin.
UNLOCKED = "# unlocked: `make lock` is resolving this image's packages afresh\n"


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


def runtime_lock(python: str, images_dir: Path = IMAGES_DIR) -> Path:
    return images_dir / "base" / f"requirements-{python}.lock"


#: What the runtime image of a Python version is built from, in images/base/.
RUNTIME_FILES = ("Dockerfile", "constraints.txt")
#: The torch layer's Dockerfile, in images/base/.
TORCH_DOCKERFILE = "Dockerfile.torch"


def torch_pin(model: Model) -> str | None:
    """`torch==<version>` as the model image's lock pins it, for a model whose packages
    include torch; None for the others (TensorFlow, JAX, ase alone) and an unpinned lock."""
    lock = model.folder / LOCK
    if "torch" not in model.packages or not lock.exists():
        return None
    return next((line.strip() for line in lock.read_text().splitlines() if line.startswith("torch==")), None)


def _place_lock(dockerfile: Path, lock: Path, dest: Path, unlocked: bool, command: str) -> None:
    """The context's requirements.lock: `lock`, or an empty one to resolve afresh (make lock)."""
    if LOCK not in dockerfile.read_text():
        raise BenchError(f"{dockerfile}: must COPY {LOCK} to {LOCK_PATH} before its pip installs "
                         "(README: Adding a model)")
    if unlocked:
        (dest / LOCK).write_text(UNLOCKED)
    elif not lock.exists():
        raise BenchError(f"{lock.parent}: no {lock.name}; `{command}` resolves and writes it")
    else:
        shutil.copyfile(lock, dest / LOCK)


def wheels_for(wheelhouse: Path | None, python: str) -> list[Path]:
    """The wheelhouse's wheels a runtime of `python` can install: pure-Python ones and those
    built for its CPython (a wheel's name ends in python-abi-platform tags)."""
    own = {"cp" + python.replace(".", ""), "py3", "py2"}
    wheels = sorted(wheelhouse.glob("*.whl")) if wheelhouse else []
    return [wheel for wheel in wheels if own & set(wheel.name.split("-")[-3].split("."))]


def runtime_context(dest: Path, python: str, ca_bundle: Path | None, wheelhouse: Path | None,
                    unlocked: bool = False, images_dir: Path = IMAGES_DIR) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_FILES:
        shutil.copyfile(images_dir / "base" / name, dest / name)
    _place_lock(images_dir / "base" / "Dockerfile", runtime_lock(python, images_dir), dest, unlocked,
                f"make lock PYTHON={python}")
    (dest / "extra-ca.crt").write_bytes(ca_bundle.read_bytes() if ca_bundle else b"")
    (dest / "wheelhouse").mkdir()
    for wheel in wheels_for(wheelhouse, python):
        # hard links: a torch wheel is hundreds of MB
        try:
            (dest / "wheelhouse" / wheel.name).hardlink_to(wheel)
        except OSError:
            shutil.copy(wheel, dest / "wheelhouse" / wheel.name)
    return dest


def has_batched_forward(family: str, adapters_dir: Path = ADAPTERS_DIR) -> bool:
    """Whether the family declares a batched forward (its CAPABILITIES, read as data from its
    source: the host never imports a factory, whose model package lives only in its image)."""
    import ast

    source = adapters_dir / "calculators" / f"{family}.py"
    for node in ast.parse(source.read_text(), str(source)).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CAPABILITIES" for t in node.targets):
            return "batched" in ast.literal_eval(node.value)
    raise BenchError(f"{source}: declares no CAPABILITIES (adapters/calculators/__init__.py lists the hooks)")


def families_in_image(model: Model, models: dict[str, Model]) -> list[str]:
    """The factory families an image holds: those of every model that runs in it."""
    return sorted({m.calculator for m in models.values() if m is model or m.image_of is model} | {model.calculator})


def copy_worker_code(dest: Path, families: list[str], adapters_dir: Path = ADAPTERS_DIR) -> None:
    """What a worker runs into dest/adapters: the shared engine and the given families' factories."""
    calculators = dest / "adapters" / "calculators"
    calculators.mkdir(parents=True, exist_ok=True)
    for path in sorted(adapters_dir.glob("*.py")):
        shutil.copyfile(path, dest / "adapters" / path.name)
    for name in ["__init__", *families]:
        source = adapters_dir / "calculators" / f"{name}.py"
        if not source.exists():
            raise BenchError(f"calculator {name!r}: no factory {source}")
        shutil.copyfile(source, calculators / source.name)


def model_context(dest: Path, model: Model, families: list[str], unlocked: bool = False,
                  adapters_dir: Path = ADAPTERS_DIR) -> Path:
    shutil.copytree(model.folder, dest, dirs_exist_ok=True)
    _place_lock(model.folder / "Dockerfile", model.folder / LOCK, dest, unlocked, f"make lock MODEL={model.name}")
    copy_worker_code(dest, families, adapters_dir)
    return dest


def copy_build_inputs(dest: Path, model: Model, models: dict[str, Model], source: Path = REPO) -> None:
    """Everything the image `model` runs in is built from, laid out under dest as in `source`
    (images/base's runtime files and lock, the model folders, the worker code it holds): a
    run folder keeps them, so a bundle rebuilds the image that ran, whatever the checkout
    has become."""
    image = model.image_of or model
    base = dest / "images" / "base"
    base.mkdir(parents=True, exist_ok=True)
    for path in [*(source / "images" / "base" / name for name in RUNTIME_FILES),
                 runtime_lock(image.python, source / "images")]:
        shutil.copyfile(path, base / path.name)
    torch_layer = source / "images" / "base" / TORCH_DOCKERFILE
    if torch_layer.exists():  # (a bundle from before the torch layer has none: its images had none)
        shutil.copyfile(torch_layer, base / TORCH_DOCKERFILE)
    for folder in {image.folder, model.folder}:
        shutil.copytree(folder, dest / "images" / folder.name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    copy_worker_code(dest, families_in_image(image, models), source / "adapters")


class ImageBuilder:
    """Builds (or reuses) the runtime and model images with the Docker engine (workers.docker.DockerEngine)."""

    def __init__(self, engine, base_images: dict[str, str], ca_bundle: Path | None, wheelhouse: Path | None,
                 log_dir: Path, echo=print, models: dict[str, Model] | None = None, source: Path = REPO):
        self.engine = engine
        self.source = source             # the tree holding images/ and adapters/: the checkout, or a bundle's
        self.models = models if models is not None else discover_models(source / "images")
        self.base_images = base_images   # Python version -> the image its runtime is built FROM
        self.ca_bundle = ca_bundle
        self.wheelhouse = wheelhouse
        self.log_dir = log_dir
        self.echo = echo
        self._runtime_tags: dict[str, str] = {}
        self._wheel_sums: dict[Path, str] = {}  # a torch wheel is hundreds of MB: hashed once per run

    @classmethod
    def from_manifest(cls, engine, manifest, log_dir: Path | None = None, echo=print,
                      source: Path = REPO) -> "ImageBuilder":
        """The builder the manifest describes; build logs under cache_dir/build-logs unless told."""
        return cls(engine, manifest["base_images"], manifest.path_setting("ca_bundle"),
                   manifest.path_setting("wheelhouse"),
                   log_dir or manifest.cache.build_logs, echo=echo, source=source)

    def base_image(self, python: str) -> str:
        if python not in self.base_images:
            raise BenchError(f"a model asks for Python {python}, but base_images in benchmark.yaml has no "
                             f"\"{python}\" entry (e.g. \"{python}\": python:{python}-slim-bookworm)")
        return self.base_images[python]

    def runtime(self, python: str = DEFAULT_PYTHON, unlocked: bool = False) -> str:
        """The runtime image for `python` (built if absent); `unlocked`: with an empty lock."""
        if python not in self._runtime_tags or unlocked:
            base = self.base_image(python)
            base_id = self._base_image_id(base)
            with tempfile.TemporaryDirectory() as tmp:
                context = runtime_context(Path(tmp), python, self.ca_bundle, self.wheelhouse, unlocked,
                                          self.source / "images")
                args = {"BASE_IMAGE": base}
                tag = f"{IMAGE_PREFIX}/runtime:{content_hash(context, {**args, 'base_id': base_id})}"
                self._ensure(tag, context, args, {f"{LABEL}.base-image": base, f"{LABEL}.base-image-id": base_id,
                                                  f"{LABEL}.python": python})
            if unlocked:
                return tag
            self._runtime_tags[python] = tag
        return self._runtime_tags[python]

    def model(self, model: Model, unlocked: bool = False) -> str:
        """The model's image (built if absent); `unlocked`: with an empty lock, to resolve afresh."""
        if model.image_of:
            return self.model(model.image_of, unlocked)
        runtime = self.runtime(model.python)
        labels = {f"{LABEL}.model": model.name, f"{LABEL}.runtime": runtime}
        pin = None if unlocked else torch_pin(model)
        if pin and (self.source / "images" / "base" / TORCH_DOCKERFILE).exists():  # (a bundle from before it: none)
            labels[f"{LABEL}.torch-layer"] = self.torch_layer(runtime, pin)
        with tempfile.TemporaryDirectory() as tmp:
            context = model_context(Path(tmp) / "ctx", model, families_in_image(model, self.models), unlocked,
                                    self.source / "adapters")
            args = {"RUNTIME_IMAGE": labels.get(f"{LABEL}.torch-layer", runtime)}
            tag = f"{IMAGE_PREFIX}/{model.name}:{content_hash(context, args)}"
            self._ensure(tag, context, args, labels)
        return tag

    def torch_layer(self, runtime: str, pin: str) -> str:
        """The runtime with torch at `pin` (built if absent): the base of every model image
        whose lock pins that torch."""
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(self.source / "images" / "base" / TORCH_DOCKERFILE, Path(tmp) / "Dockerfile")
            args = {"RUNTIME_IMAGE": runtime, "TORCH": pin}
            tag = f"{IMAGE_PREFIX}/torch:{pin.split('==')[1]}-{content_hash(Path(tmp), args)}"
            self._ensure(tag, Path(tmp), args, {f"{LABEL}.runtime": runtime, f"{LABEL}.torch": pin})
        return tag

    def runtime_record(self, python: str) -> dict:
        """What the runtime of `python` was built from, for provenance: the runtime image (if
        this builder built or reused it: a model image loaded from a bundle needs none), the
        base image (its id and registry digests), every wheel of the wheelhouse (sha256)."""
        base = self.base_image(python)
        base_id = self.engine.image_id(base)
        return {"runtime_image": self._runtime_tags.get(python), "base_image": base, "base_image_id": base_id,
                "base_image_digests": self.engine.image_digests(base) if base_id else [],
                "wheelhouse": {wheel.name: self._wheel_sha256(wheel) for wheel in wheels_for(self.wheelhouse, python)}}

    def _wheel_sha256(self, wheel: Path) -> str:
        from orchestrator.fetch import sha256_of

        if wheel not in self._wheel_sums:
            self._wheel_sums[wheel] = sha256_of(wheel)
        return self._wheel_sums[wheel]

    def _base_image_id(self, base: str) -> str:
        """Id of the base image if present locally; else its name (pulled by the build)."""
        return self.engine.image_id(base) or base

    def _ensure(self, tag: str, context: Path, args: dict, labels: dict) -> None:
        if self.engine.image_id(tag):
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / (tag.replace("/", "_").replace(":", "_") + ".log")
        self.echo(f"building {tag} (log: {log_path})")
        error = None
        with log_path.open("w") as log:
            for chunk in self.engine.build(context, tag, args, labels):
                if "stream" in chunk:
                    log.write(chunk["stream"])
                    log.flush()
                if "error" in chunk:
                    error = chunk["error"]
                    log.write(error + "\n")
        if error:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
            raise BenchError(f"building {tag} failed: {error.strip()}\n--- last lines of {log_path} ---\n{tail}")


def freeze(engine, image: str) -> list[str]:
    """`name==version` of every package of the image's venv (pip, setuptools and wheel come
    with the venv), without local version labels: a lock's `torch==2.13.0` then also admits
    a site wheel `2.13.0+cpu` or `+cu126` in the wheelhouse."""
    out = engine.output(WorkerSpec(image, ["pip", "list", "--format=freeze", "--disable-pip-version-check"]))
    lines = [re.sub(r"\+[\w.]+$", "", line.strip()) for line in out.splitlines() if "==" in line]
    return sorted((line for line in lines if line.split("==")[0].lower() not in ("pip", "setuptools", "wheel")),
                  key=str.lower)


def write_lock(builder: ImageBuilder, model: Model | None, python: str = DEFAULT_PYTHON,
               command: str | None = None) -> Path:
    """Resolve the image of `model` (the runtime for `python` when None) afresh and write its
    lock: built with an empty lock, frozen, that image removed. Returns the lock's path.
    `command`: the one its header names for writing it again (make lock's by default)."""
    image = builder.runtime(python, unlocked=True) if model is None else builder.model(model, unlocked=True)
    packages = freeze(builder.engine, image)
    version = builder.engine.output(
        WorkerSpec(image, ["python", "-c", "import platform; print(platform.python_version())"])).strip()
    builder.engine.remove_image(image)
    name = f"Python {python} runtime" if model is None else model.name
    command = command or (f"make lock PYTHON={python}" if model is None else f"make lock MODEL={model.name}")
    header = (f"# Every package of the {name} image, as pip resolved them on {time.strftime('%Y-%m-%d')} "
              f"(Python {version}),\n# written by `{command}`. The image installs under these pins "
              f"(PIP_CONSTRAINT), so a rebuild\n# gets the same versions; to move to newer ones, run "
              f"`{command}` again.\n")
    path = runtime_lock(python) if model is None else model.folder / LOCK
    path.write_text(header + "\n".join(packages) + "\n")
    return path
