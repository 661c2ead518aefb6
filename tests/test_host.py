"""The host's scoring stack (orchestrator.host): locked with hashes for every supported
Python, installed as locked, recorded, and two stacks told apart."""

import re

from orchestrator import host


def test_the_lock_pins_every_requirement_with_hashes():
    wanted = {host.canonical(re.split(r"[<>=\[; ]", line.strip())[0])
              for line in host.REQUIREMENTS.read_text().splitlines() if line.strip() and not line.startswith("#")}
    pins = host.locked_versions()
    assert wanted <= set(pins), wanted - set(pins)
    text = host.LOCK.read_text()
    entries = re.findall(r"^([A-Za-z0-9_.-]+)==\S+(.*?)(?=^\S|\Z)", text, re.M | re.S)
    assert entries and all("--hash=sha256:" in body for _, body in entries)
    assert host.LOCK_COMMAND in text  # says how to make it again


def test_this_environment_is_the_locked_one_and_is_recorded():
    stack = host.scoring_stack()
    assert stack["not_as_locked"] == [], "the host environment differs from requirements.lock: run make again"
    assert {"numpy", "scipy", "ase", "pandas", "moyopy"} <= set(stack["packages"])
    assert len(stack["lock_sha256"]) == 64 and stack["python"].count(".") == 2


def test_two_stacks_are_told_apart(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==1.0.0 ; python_full_version < '3.12' \\\n    --hash=sha256:00\n"
                    "numpy==2.0.0 ; python_full_version >= '3.12' \\\n    --hash=sha256:11\nPyYAML==6.0.3 \\\n")
    assert host.locked_versions(lock) == {"numpy": ["1.0.0", "2.0.0"], "pyyaml": ["6.0.3"]}
    stack = host.scoring_stack(lock)
    assert "numpy" in stack["not_as_locked"] and "pyyaml" in stack["packages"]
    a = {"python": "3.11.7", "packages": {"numpy": "2.4.6", "ase": "3.29.0"}}
    b = {"python": "3.12.1", "packages": {"numpy": "2.5.5", "ase": "3.29.0", "new": "1"}}
    assert host.stack_differences(a, b) == ["Python 3.11.7 -> 3.12.1", "new None -> 1", "numpy 2.4.6 -> 2.5.5"]
    assert host.stack_differences(a, None) == [] and host.stack_differences(a, a) == []
