"""Reference records written as extended XYZ, and ids that survive the round trip."""

from __future__ import annotations

import bz2
import io
from pathlib import Path
from urllib.parse import quote, unquote

from orchestrator import runfolder

#: Marks an id written percent-encoded into an extxyz file (see extxyz_id).
ENCODED_ID = "id:"


def extxyz_id(sid: str) -> str:
    """An id as an extxyz file can hold it. ASE's extxyz reader turns "0042" into 42, "T"
    into True, drops tabs and backslashes, and a newline breaks the file: an id it would
    not read back as itself is written percent-encoded behind ENCODED_ID (id_from_extxyz
    decodes it; `urllib.parse.unquote` does too)."""
    from ase.io.extxyz import key_val_dict_to_str, key_val_str_to_dict

    if not sid.startswith(ENCODED_ID) and "\n" not in sid:
        if key_val_str_to_dict(key_val_dict_to_str({"id": sid})).get("id") == sid:
            return sid
    return ENCODED_ID + quote(sid, safe="")


def id_from_extxyz(value) -> str:
    """The id an extxyz file holds (see extxyz_id)."""
    text = str(value)
    return unquote(text[len(ENCODED_ID):]) if text.startswith(ENCODED_ID) else text


def write_extxyz(path: Path, structures) -> None:
    """Reference records as extxyz (bz2-compressed when the name ends in .bz2), written
    atomically, that load_dataset reads back to the same records. periodic_axes and
    dimension are left out: ASE writes the 0D value "" as a bare `periodic_axes=`, which
    swallows the next key on reading, and the loader derives both from the geometry
    again; the label is written as `id_dimension`, as the authors' database has it."""
    from ase.io import write

    path = Path(path)
    records = []
    for atoms in structures:
        copy = atoms.copy()
        copy.info = {k: v for k, v in atoms.info.items() if k not in ("periodic_axes", "dimension", "dimension_label")}
        copy.info["id"] = extxyz_id(atoms.info["id"])
        if "dimension_label" in atoms.info:
            copy.info["id_dimension"] = atoms.info["dimension_label"]
        records.append(copy)
    with runfolder.replacing(path) as tmp, tmp.open("wb") as raw:
        with (bz2.open(raw, "wt") if path.name.endswith(".bz2") else io.TextIOWrapper(raw)) as out:
            write(out, records, format="extxyz")
