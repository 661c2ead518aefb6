"""Calculator factories, one module per model family.

Each module defines ``make_calculator(device: str, **options) -> ase Calculator``
and imports its model package inside that function, so this package imports
with ase and numpy alone. A new family is a new module here: nothing else lists them.
"""

from __future__ import annotations

import importlib
import pkgutil


def families() -> list[str]:
    """The factory modules of this package."""
    return sorted(module.name for module in pkgutil.iter_modules(__path__))


def make_calculator(family: str, device: str, options: dict):
    if family not in families():
        raise ValueError(f"unknown calculator family {family!r}; choose one of {families()}")
    module = importlib.import_module(f"adapters.calculators.{family}")
    return module.make_calculator(device, **options)
