"""adapters.wire, result files: which result lines hold, and damaged ones set aside (never deleted)."""

import json

import pytest

from adapters import wire

IDS = {"a", "b", "c"}


def line(sid, **fields) -> bytes:
    return json.dumps({"id": sid, "converged": True, "failure_reason": None, "steps": 3, "energy_ev": -1.0,
                       **fields}).encode()


def write(path, *lines: bytes, torn: bytes = b"") -> None:
    path.write_bytes(b"".join(text + b"\n" for text in lines) + torn)


def test_good_lines_are_kept_and_a_torn_last_line_is_no_result(tmp_path):
    out = tmp_path / "shard-0000.jsonl"
    write(out, line("a"), line("b"), torn=line("c")[:17])
    found = wire.read(out, IDS)
    assert list(found.kept) == ["a", "b"] and found.rejected == []
    assert not wire.complete(out, IDS) and wire.complete(out, {"a", "b"})
    assert wire.read(tmp_path / "absent.jsonl", IDS).kept == {}


@pytest.mark.parametrize("bad, why", [
    (b"\x00\x00\x00\x00", "not a JSON line"),                             # NUL bytes, as after a crash
    (b'{"id": "b", "converged": tru', "not a JSON line"),                # garbage in the middle
    (b"[1, 2]", "not a JSON object"),
    (line("x"), "structure 'x' is not in this shard"),                   # another shard's structure
    (line("a", steps=7777, energy_ev=12345.0), "a second line for structure 'a'"),
    (json.dumps({"id": 42, "converged": True, "steps": 1}).encode(), "no structure id"),
    (line("b", steps="many"), "`steps` is not a whole number"),
    (line("b", converged="yes"), "`converged` is not true or false"),
    (line("b", energy_ev="-1.0"), "`energy_ev` is not a number"),
])
def test_a_damaged_line_in_the_middle_is_set_aside_and_its_structure_relaxed_again(tmp_path, bad, why):
    out = tmp_path / "shard-0000.jsonl"
    write(out, line("a"), bad, line("c"))
    found = wire.read(out, IDS)
    assert list(found.kept) == ["a", "c"]  # the first result of "a" wins: 12345 eV never shows up
    assert found.kept["a"]["energy_ev"] == -1.0
    [(number, reason, text)] = found.rejected
    assert number == 2 and why in reason and text == bad
    messages = wire.set_aside(out, IDS).set_aside
    assert len(messages) == 1 and f"{out} line 2: " in messages[0] and "relaxed again" in messages[0]
    assert out.read_bytes() == line("a") + b"\n" + line("c") + b"\n"
    assert wire.rejected_path(out).read_bytes() == bad + b"\n"  # kept verbatim
    assert wire.set_aside(out, IDS).set_aside == []  # nothing more to do
    write(out, line("a"), bad)
    wire.set_aside(out, IDS)
    assert wire.rejected_path(out).read_bytes() == (bad + b"\n") * 2  # appended, never overwritten


def test_ids_are_opaque_text(tmp_path):
    odd = {"0042", "T", "with space", "tab\there", "new\nline", "back\\slash", "x~2"}
    out = tmp_path / "shard-0000.jsonl"
    write(out, *[line(sid) for sid in sorted(odd)])
    assert set(wire.read(out, odd).kept) == odd  # "0042" stays text, "T" is no boolean


def test_a_timeout_is_redone_when_the_limit_changes(tmp_path):
    out = tmp_path / "shard-0000.jsonl"
    stopped = line("b", converged=False, failure_reason="timeout", steps=0, timeout_s=60)
    write(out, line("a"), stopped)
    assert set(wire.read(out, IDS, timeout_s=60).kept) == {"a", "b"}  # same limit: a result
    for limit in (120, None):  # a larger limit, or none: relaxed again
        found = wire.read(out, IDS, timeout_s=limit)
        assert set(found.kept) == {"a"} and "timed out under a limit of 60" in found.rejected[0][1]
    wire.set_aside(out, IDS, timeout_s=None)
    write(out, line("a"), stopped, line("b", steps=900))  # the worker's new line after the old one
    assert wire.read(out, IDS, timeout_s=None).kept["b"]["steps"] == 900


def test_a_symbolic_link_is_refused_not_followed(tmp_path):
    target = tmp_path / "host-file"
    target.write_bytes(b"precious\n")
    out = tmp_path / "shard-0000.jsonl"
    out.symlink_to(target)
    with pytest.raises(OSError, match="symbolic link"):
        wire.set_aside(out, IDS)
    assert target.read_bytes() == b"precious\n"
