"""Calculator factories, one module per model family. A new family is a new module here:
nothing else lists them.

A family module imports its model package inside its functions, so this package imports with
ase and numpy alone, and declares what it provides (CAPABILITIES), which the engines, the
contract and the host read; `check_family` holds a module to its declaration. The hooks:

- ``make_calculator(device, **options) -> ase Calculator``: every family;
- ``"batched"``: ``make_batched(device, **options) -> evaluate(frames)``, the model's own
  forward on many structures in one call (adapters.batched: evaluate's contract);
- ``"stand_in"``: ``make_test_checkpoint(path, **options) -> None``, a checkpoint made by the
  package's own constructor with random weights, in its own file format, with the model's own
  options, for a model whose real file cannot be had (the tests and the zoo);
- ``"heads"``: ``HEAD_OPTION`` (the option naming a head, fidelity or task of a multi-head
  checkpoint) and ``heads(calculator) -> list[str]``, the checkpoint's heads (adapters.contract
  checks that the chosen one is used and an unknown one refused).
"""

from __future__ import annotations

import importlib
import pkgutil

#: capability -> the names a family module that declares it defines
HOOKS = {"batched": ("make_batched",), "stand_in": ("make_test_checkpoint",), "heads": ("HEAD_OPTION", "heads")}


def families() -> list[str]:
    """The factory modules of this package."""
    return sorted(module.name for module in pkgutil.iter_modules(__path__))


def family_module(family: str):
    if family not in families():
        raise ValueError(f"unknown calculator family {family!r}; choose one of {families()}")
    return importlib.import_module(f"adapters.calculators.{family}")


def capabilities(family: str) -> tuple[str, ...]:
    """What the family declares it provides beyond make_calculator (HOOKS)."""
    return tuple(family_module(family).CAPABILITIES)


def check_family(family: str) -> None:
    """A family module defines make_calculator and exactly the hooks it declares (a misspelt
    hook must not silently turn a capability off)."""
    module = family_module(family)
    declared = set(capabilities(family))
    unknown = declared - set(HOOKS)
    if unknown or not callable(getattr(module, "make_calculator", None)):
        raise TypeError(f"{family}: unknown capabilities {sorted(unknown)} or no make_calculator")
    for capability, names in HOOKS.items():
        present = [hasattr(module, name) for name in names]
        if any(present) != (capability in declared) or (capability in declared and not all(present)):
            raise TypeError(f"{family}: declares {sorted(declared)} but defines "
                            f"{[n for n, here in zip(names, present) if here]} of {capability}'s {list(names)}")


def make_calculator(family: str, device: str, options: dict):
    return family_module(family).make_calculator(device, **options)


def has_batched_forward(family: str) -> bool:
    """Whether the family evaluates many structures in one model call (make_batched)."""
    return "batched" in capabilities(family)


def make_evaluator(family: str, device: str, options: dict):
    """evaluate(frames) for the batched engine: the family's own batched forward where it
    has one (``make_batched(device, **options)``), else its ASE calculator one structure
    after another (the engine still batches the optimizer and cell filter arithmetic)."""
    from adapters.batched import each_with_calculator

    module = family_module(family)
    if has_batched_forward(family):
        return module.make_batched(device, **options)
    return each_with_calculator(module.make_calculator(device, **options))
