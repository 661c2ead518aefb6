"""CHGNet (Deng et al., Nat. Mach. Intell. 2023); weights ship inside the wheel."""


def make_calculator(device: str, model: str = "0.3.0"):
    from chgnet.model import CHGNet, CHGNetCalculator

    return CHGNetCalculator(CHGNet.load(model_name=model), use_device=device)


def make_batched(device: str, model: str = "0.3.0"):
    """evaluate(frames) for the batched engine: each structure's crystal graph made by
    CHGNet's own converter, all of them through one predict_graph call (CHGNet's graph
    batching), scaled as CHGNetCalculator scales them (eV/atom to eV, GPa to eV/Å³)."""
    from ase.stress import full_3x3_to_voigt_6_stress
    from pymatgen.io.ase import AseAtomsAdaptor

    from adapters.batched import isolate_failures

    calculator = make_calculator(device, model)
    network = calculator.model

    def forward(frames):
        graphs = [network.graph_converter(AseAtomsAdaptor.get_structure(atoms)).to(calculator.device)
                  for atoms in frames]
        predictions = network.predict_graph(graphs, task="efs", batch_size=len(graphs))
        predictions = [predictions] if len(graphs) == 1 else predictions
        scale = [len(atoms) if network.is_intensive else 1 for atoms in frames]
        return [(float(p["e"]) * n, p["f"], full_3x3_to_voigt_6_stress(p["s"] * calculator.stress_weight))
                for n, p in zip(scale, predictions)]

    return lambda frames: isolate_failures(forward, frames)
