"""ASE's EMT: no ML package, builds in seconds; exercises the whole pipeline in tests."""


#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("batched",)


def make_calculator(device: str):
    from ase.calculators.emt import EMT

    return EMT()


def make_batched(device: str):
    """evaluate(frames) for the batched engine: EMT has no batched forward, but one EMT per
    structure in flight keeps its neighbour list from step to step, as in the sequential
    engine (one shared EMT would rebuild it for every structure at every step)."""
    from adapters.batched import each_with_calculator

    calculators = {}

    def evaluate(frames):
        ids = [atoms.info["id"] for atoms in frames]
        for gone in set(calculators) - set(ids):  # relaxed: its calculator goes too
            del calculators[gone]
        return [each_with_calculator(calculators.setdefault(sid, make_calculator(device)))([atoms])[0]
                for sid, atoms in zip(ids, frames)]

    return evaluate
