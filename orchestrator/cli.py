"""Command line: bench, build, bundle, reproduce, compare, report, doctor, models. One error
boundary, in main()."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from adapters.wire import DIMENSIONS
from orchestrator.errors import BenchError, IncompleteRun
from orchestrator.manifest import load

DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "benchmark.yaml"
#: The reference bundles `selftest` reruns.
REFERENCE = Path(__file__).resolve().parent.parent / "reference"


def parse_gpus(value: str):
    """GPUS=cpu | all | 0,1"""
    if value in ("cpu", "all"):
        return value
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"GPUS must be cpu, all, or GPU indices like 0,1; not {value!r}") from None


def parse_set(items: list[str]) -> dict:
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise BenchError(f"--set {item!r}: expected KEY=VALUE (dotted keys for sections, e.g. protocol.max_steps=500)")
        overrides[key] = yaml.safe_load(value)
    return overrides


def overrides_from(args) -> dict:
    """The manifest overrides of the selection flags a command accepts (SELECTION)."""
    overrides = parse_set(args.set)
    given = lambda name: getattr(args, name, None)  # noqa: E731 - a command has only its own flags
    if given("models"):
        overrides["models"] = args.models
    if given("dataset"):
        overrides["dataset"] = args.dataset
    if given("limit") is not None:
        overrides["subset.limit_per_dimension"] = args.limit
    if given("dim"):
        dims = [d.strip().upper() for d in args.dim.split(",") if d.strip()]
        bad = [d for d in dims if d not in DIMENSIONS]
        if bad:
            raise BenchError(f"DIM has {', '.join(bad)}; choose from {', '.join(DIMENSIONS)}")
        overrides["subset.dimensions"] = dims
    if given("gpus"):
        overrides["devices"] = parse_gpus(args.gpus)
    if given("protocol"):
        overrides["protocol.variant"] = args.protocol
    if given("backend"):
        overrides["backend"] = args.backend
    if given("engine"):
        overrides["engine"] = args.engine
    return overrides


def cmd_bench(args) -> None:
    from orchestrator.run.stages import bench

    manifest = load(args.manifest, overrides_from(args))
    run_dir = bench(manifest, manifest["models"])
    print(run_dir)  # the last line: scripts read the run folder from here


def cmd_build(args) -> None:
    from orchestrator.console import console
    from orchestrator.images import ImageBuilder
    from orchestrator.run.plan import pick_models
    from orchestrator.workers.docker import DockerEngine

    manifest = load(args.manifest, overrides_from(args))
    builder = ImageBuilder.from_manifest(DockerEngine(), manifest, echo=console.print)
    for model in pick_models(manifest, manifest["models"]):
        print(builder.model(model))


def lock_plan(manifest, model_names: list[str], pythons: list[str]) -> tuple[list[str], list]:
    """What `make lock` re-resolves: MODEL=...: those models' images on today's runtimes;
    PYTHON=...: those runtimes; neither: the runtime of every Python the models ask for
    first, then every model image. A model running in another folder's image locks that
    folder (one lock per image)."""
    from orchestrator.models import discover_models
    from orchestrator.run.plan import pick_models

    models = pick_models(manifest, model_names) if model_names else [] if pythons else list(discover_models().values())
    images = {}
    for model in models:
        images.setdefault((model.image_of or model).name, model.image_of or model)
    runtimes = pythons or ([] if model_names else sorted({model.python for model in models}))
    return runtimes, list(images.values())


def cmd_lock(args) -> None:
    from orchestrator.console import console
    from orchestrator.images import ImageBuilder, write_lock
    from orchestrator.workers.docker import DockerEngine

    if args.host:  # the host's lock needs no engine
        from orchestrator import host

        print(host.write_lock())
        return
    manifest = load(args.manifest, overrides_from(args))
    builder = ImageBuilder.from_manifest(DockerEngine(), manifest, echo=console.print)
    runtimes, models = lock_plan(manifest, args.models, args.python)
    for python in runtimes:
        print(write_lock(builder, None, python))
    for model in models:
        print(write_lock(builder, model))


def cmd_report(args) -> None:
    from orchestrator.report import write_leaderboard, write_run_report
    from orchestrator.runfolder import scored_folders

    manifest = load(args.manifest, parse_set(args.set))
    results_dir = manifest.path_setting("results_dir")
    # a results folder on a read-only disk (an archive, a colleague's share) is reported elsewhere
    spare = manifest.cache.reports
    for run in scored_folders(results_dir):
        print(write_run_report(run.root, None if os.access(run.root, os.W_OK) else spare / run.name))
    print(write_leaderboard(results_dir, None if os.access(results_dir, os.W_OK) else spare))


def cmd_weights(args) -> None:
    from orchestrator.run.plan import pick_models
    from orchestrator.weights import ensure_weights, weights_folder

    manifest = load(args.manifest, overrides_from(args))
    weights_dir = manifest.cache.weights
    for model in pick_models(manifest, manifest["models"]):
        for name, record in ensure_weights(model, weights_dir).items():
            print(f"{model.name}: {weights_folder(weights_dir, model) / name} (sha256 {record['sha256']})")


def cmd_models(args) -> None:
    import csv
    import json
    import sys

    from orchestrator.console import show_table
    from orchestrator.images import has_batched_forward
    from orchestrator.models import GROUPS, discover_models
    from orchestrator.weights import missing_weights

    manifest = load(args.manifest, parse_set(args.set))
    available = discover_models()
    weights_dir = manifest.cache.weights
    built = _built_models()
    rows = []
    for name, model in available.items():
        missing = missing_weights(model, weights_dir)
        needs = sorted({{"token": "HF_TOKEN", "manual": "the file"}.get(w.get("access", "public"), "")
                        for w in model.weights if w["file"] in missing} - {""})
        rows.append({"model": name, "group": ", ".join(g for g in model.groups if g != "all") or "-",
                     "paper tag": model.paper_tag or "-", "aliases": ", ".join(model.aliases) or "-",
                     "forces": model.forces or "-",
                     "batched forward": "yes" if has_batched_forward(model.calculator) else "no (one by one)",
                     "image": "built" if (model.image or name) in built else "not built",
                     "weights": "none needed" if not model.weights else "missing" if missing else "present",
                     "you supply": ", ".join(needs) or "-"})
    columns = list(rows[0]) if rows else ["model"]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    else:
        show_table("models (folders of images/); MODEL= takes the folder, the paper tag or an alias; every model "
                   "runs both engines, those with a batched forward one model call per batch",
                   columns, [[row[c] for c in columns] for row in rows], file=sys.stdout)
        counts = {group: sum(group in m.groups for m in available.values()) for group in GROUPS}
        print("groups (MODEL=<group>): " + ", ".join(f"{group} ({n})" for group, n in counts.items()))


def _built_models() -> set[str]:
    """Models with an image on the engine (of any version); empty without an engine."""
    from orchestrator.workers.docker import DockerEngine
    from orchestrator.workers.spec import LABEL

    try:
        engine = DockerEngine()
    except BenchError:
        return set()
    return {labels.get(f"{LABEL}.model") for labels in engine.labelled_images(f"{LABEL}.model").values()}


def cmd_zoo(args) -> None:
    from orchestrator.models import discover_models
    from orchestrator.run.plan import pick_models
    from orchestrator.zoo import zoo

    manifest = load(args.manifest, overrides_from(args))
    models = pick_models(manifest, args.models) if args.models else list(discover_models().values())
    print(zoo(manifest, models, keep=args.keep))


def cmd_bundle(args) -> None:
    from orchestrator.bundle import make_bundle
    from orchestrator.console import console
    from orchestrator.workers.docker import DockerEngine

    archive = make_bundle(args.run, args.out, with_data=args.with_data, with_images=args.with_images,
                          engine=DockerEngine() if args.with_images else None, echo=console.print, label=args.name)
    console.print(f"{archive.stat().st_size / 1e6:.2f} MB, sha256 {Path(f'{archive}.sha256').read_text().split()[0]}")
    print(archive)


def _show_comparison(comparison, where: Path) -> None:
    from metrics.compare import agreement_markdown, side_by_side
    from metrics.report import markdown_table
    from orchestrator.console import console

    console.print(markdown_table(side_by_side(comparison.rows, list(DIMENSIONS))), markup=False)
    console.print(agreement_markdown(comparison.rows), markup=False)
    for line in comparison.verdict.outside[:10]:
        console.print(f"  {line}", markup=False)
    console.print(f"written: {where}")
    print(comparison.verdict.line)  # the last line: the verdict (the exit code says it too)


def cmd_compare(args) -> None:
    from orchestrator.compare import compare_runs, comparison_folder, read_side, write_comparison

    manifest = load(args.manifest, parse_set(args.set))
    unpack = manifest.cache.root / "bundles"
    comparison = compare_runs(read_side(args.a, unpack), read_side(args.b, unpack))
    out = args.out or comparison_folder(manifest.path_setting("results_dir"), args.a, args.b)
    _show_comparison(comparison, write_comparison(comparison, out))
    raise SystemExit(comparison.verdict.code)


def _reproduce_overrides(args) -> dict:
    overrides = parse_set(args.set)
    if args.gpus:
        overrides["devices"] = parse_gpus(args.gpus)
    if args.engine:
        overrides["engine"] = args.engine
    return overrides


def cmd_reproduce(args) -> None:
    from orchestrator.reproduce import reproduce

    run_dir, comparison = reproduce(args.manifest, args.bundle, _reproduce_overrides(args), args.dataset)
    _show_comparison(comparison, run_dir / "reproduction" / "compare.md")
    raise SystemExit(comparison.verdict.code)


def cmd_selftest(args) -> None:
    import time

    from orchestrator.bundle import label_of
    from orchestrator.console import console, show_table
    from orchestrator.reproduce import reproduce

    bundles = sorted(REFERENCE.glob("*.bundle.tar.gz"))
    if args.only:
        bundles = [b for b in bundles if any(word in b.name for word in args.only)]
    if not bundles:
        raise BenchError(f"no reference bundle in {REFERENCE}" + (f" matching {' '.join(args.only)}" if args.only else ""))
    rows, worst = [], 0
    for bundle in bundles:
        console.print(f"[bold]selftest[/bold]: {bundle.name}")
        start = time.perf_counter()
        run_dir, comparison = reproduce(args.manifest, bundle, _reproduce_overrides(args))
        worst = max(worst, comparison.verdict.code)
        rows.append([label_of(bundle), comparison.verdict.line.split(". Tolerances")[0],
                     f"{time.perf_counter() - start:.0f}", str(run_dir / "reproduction" / "compare.md")])
    show_table("selftest: the reference bundles rerun on this machine", ["bundle", "verdict", "seconds", "details"],
               rows)
    print("selftest: " + ("every reference bundle reproduced" if worst == 0 else "a reference bundle DIFFERS"))
    raise SystemExit(worst)


def cmd_doctor(args) -> None:
    from orchestrator.doctor import doctor

    if not doctor(load(args.manifest, overrides_from(args))):
        raise SystemExit(1)


#: The flags that choose what a command works on (the make variable of each in capitals);
#: each command takes only those it reads.
SELECTION = {
    "models": {"nargs": "+", "help": "models: folders of images/, paper tags, aliases, or a group (MODEL)"},
    "dataset": {"help": "registry name or path (DATASET)"},
    "limit": {"type": int, "help": "structures per dimensionality (LIMIT)"},
    "dim": {"help": "dimensionalities, e.g. 0D,2D (DIM)"},
    "gpus": {"help": "cpu, all, or indices like 0,1 (GPUS)"},
    "protocol": {"help": "paper (default) or authors (PROTOCOL)"},
    "backend": {"help": "docker (default) or slurm (BACKEND)"},
    "engine": {"help": "ase (default) or batched (ENGINE)"},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator", description="0123D uMLIP benchmark")
    parser.add_argument("--verbose", "-v", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, selection=()):
        """--manifest, --set, and the selection flags (SELECTION) this command reads."""
        p.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any manifest key, e.g. --set protocol.max_steps=500")
        for flag in selection:
            p.add_argument(f"--{flag}", **SELECTION[flag])

    for name, func, help_text, flags in (
            ("bench", cmd_bench, "relax, merge, score and report", tuple(SELECTION)),
            ("build", cmd_build, "build (or reuse) the model images", ("models",)),
            ("doctor", cmd_doctor, "check the engine, GPUs, manifest and caches", ("models", "gpus", "backend")),
            ("weights", cmd_weights, "download the models' weights into the cache", ("models",))):
        p = sub.add_parser(name, help=help_text)
        common(p, flags)
        p.set_defaults(func=func)
    p = sub.add_parser("lock", help="resolve the images' packages afresh and write their locks")
    common(p, ("models",))
    p.add_argument("--python", nargs="+", help="lock the runtimes of these Python versions (PYTHON)")
    p.add_argument("--host", action="store_true", help="lock the host's packages instead: requirements.lock (HOST)")
    p.set_defaults(func=cmd_lock)
    p = sub.add_parser("zoo", help="build every model image from a clean cache, check each, print a table")
    common(p, ("models",))
    p.add_argument("--keep", action="store_true", help="keep the images (default: removed after their check)")
    p.set_defaults(func=cmd_zoo)
    p = sub.add_parser("bundle", help="one archive of a finished run: build inputs, settings, results, report")
    p.add_argument("run", type=Path, help="the run folder (RUN)")
    p.add_argument("--out", type=Path, help="the folder to write it into (default: beside the run folder)")
    p.add_argument("--name", help="the archive's name, before .bundle.tar.gz (default: the run folder's)")
    p.add_argument("--with-data", action="store_true", help="the dataset's files too")
    p.add_argument("--with-images", action="store_true", help="`docker save` archives of the images too")
    p.set_defaults(func=cmd_bundle)
    p = sub.add_parser("compare", help="two runs (folders or bundles) side by side; exit 0 reproduced, "
                                       "1 differs, 2 cannot compare")
    common(p)
    p.add_argument("a", type=Path, help="run folder or bundle (A)")
    p.add_argument("b", type=Path, help="run folder or bundle (B)")
    p.add_argument("--out", type=Path, help="folder for compare.md/.html/.csv (default: results_dir/comparisons/)")
    p.set_defaults(func=cmd_compare)
    for name, func, help_text in (("reproduce", cmd_reproduce, "rerun a bundle here from its own inputs, then compare"),
                                  ("selftest", cmd_selftest, "rerun the reference bundles here and compare")):
        p = sub.add_parser(name, help=help_text)
        common(p)
        if name == "reproduce":
            p.add_argument("bundle", type=Path, help="a .bundle.tar.gz or its unpacked folder (BUNDLE)")
            p.add_argument("--dataset", help="the run's data here, when the bundle holds none (DATASET)")
        else:
            p.add_argument("--only", nargs="+", help="reference bundles whose name holds one of these words")
        p.add_argument("--gpus", help="cpu, all, or indices like 0,1 (GPUS)")
        p.add_argument("--engine", help="ase or batched (ENGINE); default: the bundle's")
        p.set_defaults(func=func)
    p = sub.add_parser("report", help="reports of every finished run and the leaderboard")
    common(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("models", help="the models: paper tag, image built, weights present, what you supply")
    common(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="table (for people; plain text when not a terminal), csv or json (FORMAT=)")
    p.set_defaults(func=cmd_models)
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.logging import RichHandler

    from orchestrator.console import console
    from orchestrator.workers.docker import engine_lost

    # what the dataset loader found (formats, counts per dimensionality, warnings) is shown
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])
    # a batch scheduler's SIGTERM stops the containers like Ctrl-C does
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        args.func(args)
    except IncompleteRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except BenchError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only folder, a file in the way: the user's to fix
        if args.verbose:
            raise
        if engine_lost(exc):
            print(f"error: lost the connection to the Docker engine ({exc}); start it again (`dockerd &` or "
                  "`systemctl start docker`) and rerun the same command: finished structures are kept",
                  file=sys.stderr)
            return 2
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; check that folder's free space and permissions "
              "(finished structures are kept: rerun the same command afterwards)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished structures are kept; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
