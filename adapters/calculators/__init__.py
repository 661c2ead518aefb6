"""Calculator factories, one module per model family.

Each module defines ``make_calculator(device: str, **options) -> ase Calculator``
(and, where the model evaluates many structures in one call, ``make_batched`` for the
batched engine) and imports its model package inside that function, so this package
imports with ase and numpy alone. A new family is a new module here: nothing else lists them.
"""

from __future__ import annotations

import importlib
import pkgutil


def families() -> list[str]:
    """The factory modules of this package."""
    return sorted(module.name for module in pkgutil.iter_modules(__path__))


def family_module(family: str):
    if family not in families():
        raise ValueError(f"unknown calculator family {family!r}; choose one of {families()}")
    return importlib.import_module(f"adapters.calculators.{family}")


def make_calculator(family: str, device: str, options: dict):
    return family_module(family).make_calculator(device, **options)


def has_batched_forward(family: str) -> bool:
    """Whether the family evaluates many structures in one model call (make_batched)."""
    return hasattr(family_module(family), "make_batched")


def make_evaluator(family: str, device: str, options: dict):
    """evaluate(frames) for the batched engine: the family's own batched forward where it
    has one (``make_batched(device, **options)``), else its ASE calculator one structure
    after another (the engine still batches the optimizer and cell filter arithmetic)."""
    from adapters.batched import each_with_calculator

    module = family_module(family)
    if hasattr(module, "make_batched"):
        return module.make_batched(device, **options)
    return each_with_calculator(module.make_calculator(device, **options))
