"""CHGNet (Deng et al., Nat. Mach. Intell. 2023); weights ship inside the wheel."""

#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("batched",)

#: CHGNet's stress unit: GPa per eV/Å³ (chgnet.model.model, CHGNet._compute).
GPA_PER_EV_A3 = 160.21766208


def make_calculator(device: str, model: str = "0.3.0"):
    from chgnet.model import CHGNet, CHGNetCalculator

    return CHGNetCalculator(CHGNet.load(model_name=model), use_device=device)


def make_batched(device: str, model: str = "0.3.0"):
    """evaluate(frames) for the batched engine: each structure's crystal graph made by
    CHGNet's own converter, all of them in one of CHGNet's batched graphs, one forward
    pass for the energies and one backward pass for forces and stress together.

    CHGNet's own forward (its calculator's and predict_graph's) takes forces and stress as
    two gradients, each with create_graph=True, which training needs and inference does
    not: two backward passes that also record their own graph. One plain backward pass
    gives the same derivatives (rounding aside) at about a third of the cost. The numbers
    are scaled as CHGNetCalculator scales them (eV/atom to eV, GPa to eV/Å³); the contract
    checks them against the calculator."""
    import numpy as np
    import torch
    from ase.stress import full_3x3_to_voigt_6_stress
    from chgnet.model.model import BatchedGraph
    from pymatgen.io.ase import AseAtomsAdaptor

    from adapters.batched import isolate_failures

    calculator = make_calculator(device, model)
    network = calculator.model.eval()

    def forward(frames):
        graphs = [network.graph_converter(AseAtomsAdaptor.get_structure(atoms)).to(calculator.device)
                  for atoms in frames]
        batch = BatchedGraph.from_graphs(graphs, bond_basis_expansion=network.bond_basis_expansion,
                                         angle_basis_expansion=network.angle_basis_expansion, compute_stress=True)
        prediction = network._compute(batch)  # energies only: per atom when the model is intensive
        atoms = prediction["atoms_per_graph"]
        extensive = prediction["e"] * atoms if network.is_intensive else prediction["e"]
        gradients = torch.autograd.grad(extensive.sum(), [*batch.atom_positions, *batch.strains])
        composition = 0 if network.composition_model is None else network.composition_model(graphs)
        energies = (prediction["e"] + composition).detach().cpu().numpy()
        scale = atoms.cpu().numpy() if network.is_intensive else np.ones(len(graphs))
        results = []
        for k in range(len(graphs)):
            forces = -gradients[k].detach().cpu().numpy()
            stress = (gradients[len(graphs) + k] / batch.volumes[k] * GPA_PER_EV_A3).detach().cpu().numpy()
            results.append((float(energies[k] * scale[k]), forces,
                            full_3x3_to_voigt_6_stress(stress * calculator.stress_weight)))
        return results

    return lambda frames: isolate_failures(forward, frames)
