"""The calculator families' surface (adapters.calculators): each declares what it provides
beyond make_calculator, defines exactly that, and the host reads the same declaration."""

import types

import pytest

import adapters.calculators as calculators
from orchestrator.images import has_batched_forward as host_reads_batched


@pytest.mark.parametrize("family", calculators.families())
def test_each_family_defines_what_it_declares_and_the_host_reads_the_same(family):
    calculators.check_family(family)  # imports with ase and numpy alone: the model package is imported lazily
    assert host_reads_batched(family) == calculators.has_batched_forward(family)


def test_a_hook_that_does_not_match_its_declaration_is_refused(monkeypatch):
    def with_module(**names):
        module = types.SimpleNamespace(make_calculator=lambda device: None, **names)
        monkeypatch.setattr(calculators, "family_module", lambda family: module)

    with_module(CAPABILITIES=("batched",), make_batch=lambda device: None)  # misspelt: the engine would not batch
    with pytest.raises(TypeError, match=r"declares \['batched'\] but defines \[\] of batched's"):
        calculators.check_family("x")
    with_module(CAPABILITIES=(), make_batched=lambda device: None)  # defined, not declared
    with pytest.raises(TypeError, match=r"declares \[\] but defines \['make_batched'\]"):
        calculators.check_family("x")
    with_module(CAPABILITIES=("heads",), heads=lambda calculator: [])  # heads needs its option too
    with pytest.raises(TypeError, match=r"defines \['heads'\] of heads's \['HEAD_OPTION', 'heads'\]"):
        calculators.check_family("x")
    with_module(CAPABILITIES=("heads",), heads=lambda calculator: [], HEAD_OPTION="head")
    calculators.check_family("x")
