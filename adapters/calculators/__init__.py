"""Calculator factories, one module per model family.

Each module defines ``make_calculator(device: str, **options) -> ase Calculator``
and imports its model package inside that function, so this package imports
with ase and numpy alone.
"""

from __future__ import annotations

import importlib

FAMILIES = ("emt", "chgnet", "sevennet")


def make_calculator(family: str, device: str, options: dict):
    if family not in FAMILIES:
        raise ValueError(f"unknown calculator family {family!r}; choose one of {list(FAMILIES)}")
    module = importlib.import_module(f"adapters.calculators.{family}")
    return module.make_calculator(device, **options)
