"""Every command shown in the README and docs/ still works as written: make targets and
variables through `make -n` and the orchestrator's own argument parser, the orchestrator's
command lines through that parser, scripts by their paths. The README stays short."""

import re
import shlex
from pathlib import Path

import pytest

from helpers import REPO, make

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAKEFILE = (REPO / "Makefile").read_text()
SHOWN = re.compile(r"`((?:make|python -m orchestrator) [^`]+)`")


def commands(page: Path) -> list[str]:
    """The commands of a page: the lines of its bash blocks and its inline `make ...` and
    `python -m orchestrator ...` spans (comments and continuation lines dropped)."""
    found, in_bash = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
            continue
        if in_bash:
            command = line.split("  #")[0].strip()
            if command and not command.startswith("#"):
                found.append(command)
        else:
            found += [span.replace("…", "x") for span in SHOWN.findall(line)
                      if "KEY" not in span and "<" not in span]
    return found


def parse_orchestrator(words: list[str], where: str) -> None:
    from orchestrator.cli import build_parser

    try:
        build_parser().parse_args(words)
    except SystemExit as exc:
        raise AssertionError(f"{where}: `python -m orchestrator {shlex.join(words)}` does not parse") from exc


def check(command: str, where: str) -> None:
    words = shlex.split(command)
    words = [w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w)] if words[0] != "make" else words
    if words[0] == "make":
        unread = [w.split("=")[0] for w in words[1:] if "=" in w and f"$({w.split('=')[0]})" not in MAKEFILE]
        assert not unread, f"{where}: `{command}`: the Makefile reads no {', '.join(unread)}"
        dry = make("-n", *words[1:])
        assert dry.returncode == 0, f"{where}: `{command}`: {dry.stderr.strip()}"
        for line in dry.stdout.splitlines():
            run = shlex.split(line)
            if "orchestrator" in run and run[run.index("orchestrator") - 1] == "-m":
                parse_orchestrator(run[run.index("orchestrator") + 1:], where)
            for word in run:
                if word.startswith("tests/perf/"):
                    assert (REPO / word).is_file(), f"{where}: `{command}` runs {word}, which is not there"
    elif words[:3] == ["python", "-m", "orchestrator"]:
        parse_orchestrator(words[3:], where)
    elif "/" in words[0]:
        assert (REPO / words[0]).exists(), f"{where}: `{command}`: no {words[0]}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_command_shown_parses(page):
    shown = commands(page)
    for command in shown:
        check(command, page.name)
    if page.name == "README.md":
        assert len(shown) >= 10


def test_the_readme_is_short_starts_with_the_two_commands_and_links_every_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    first = text.split("```bash\n", 1)[1].split("```")[0].splitlines()
    assert [line.split()[:2] for line in first] == [["make", "bench"], ["make", "test"]]
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in text, f"README does not link docs/{page.name}"
    from orchestrator.models import discover_models

    assert f"{len(discover_models())} folders in all" in " ".join(text.split())  # the model table's count
    for page in PAGES:  # links between pages point at files that exist
        for target in re.findall(r"\]\(((?!https?:)[^)#]+)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links {target}, which is not there"


def test_a_command_that_drifted_is_caught():
    with pytest.raises(AssertionError, match="does not parse"):
        check("python -m orchestrator bench --modles chgnet", "here")
    with pytest.raises(AssertionError, match="No rule to make target"):
        check("make benchmark MODEL=chgnet", "here")


def test_every_make_target_is_documented_in_the_makefile_and_every_variable_read():
    targets = MAKEFILE.split(".PHONY:", 1)[1].splitlines()[0].split()
    header = [line for line in MAKEFILE.splitlines() if line.startswith("# make ")]
    assert sorted(t for t in targets if not any(line.split()[2] == t for line in header)) == []
    for line in header:  # the header's own examples use variables the Makefile reads
        shown = re.sub(r"<[^>]*>|[][]", lambda m: "x" if m.group().startswith("<") else "", line[2:].split("  ")[0])
        check(re.sub(r"=([^\s|]*)\|\S*", r"=\1", shown), "Makefile")  # FORMAT=csv|json: the first
