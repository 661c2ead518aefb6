"""ASE's EMT: no ML package, builds in seconds; exercises the whole pipeline in tests."""


def make_calculator(device: str):
    from ase.calculators.emt import EMT

    return EMT()
