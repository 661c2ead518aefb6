"""Orb (Orbital Materials; orb-models): ORB-v2 and the ORB-v3 conservative and direct models."""


#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("batched", "stand_in")


def make_calculator(device: str, model: str, checkpoint: str, precision: str = "float32-high"):
    from orb_models.forcefield import pretrained
    from orb_models.forcefield.calculator import ORBCalculator

    # `model` names orb-models' loader (orb_v2, orb_v3_conservative_inf_mpa, ...), which builds the
    # architecture and loads the mounted checkpoint. No compile: torch.compile needs a compiler
    # and a writable cache in the worker, and the authors' code did not compile.
    loader = getattr(pretrained, model)
    return ORBCalculator(loader(weights_path=checkpoint, device=device, precision=precision, compile=False),
                         device=device)


def make_test_checkpoint(path: str, model: str, **options) -> None:
    """The `model` architecture built by orb-models' own functions with random weights, saved
    as its checkpoints are (a state dict): the stand-in for a checkpoint that cannot be had
    here. Returns the options to use with it (none to change)."""
    import torch
    from orb_models.forcefield import pretrained
    from orb_models.forcefield.atomic_system import SystemConfig

    torch.manual_seed(0)
    if model == "orb_v2":
        network = pretrained.orb_v2_architecture(device="cpu", system_config=SystemConfig(radius=6.0,
                                                                                          max_num_neighbors=20))
    else:
        build = pretrained.orb_v3_conservative_architecture if "conservative" in model \
            else pretrained.orb_v3_direct_architecture
        network = build(device="cpu", system_config=SystemConfig(radius=6.0, max_num_neighbors=120))
    torch.save(network.state_dict(), path)


def make_batched(device: str, model: str, checkpoint: str, precision: str = "float32-high"):
    """evaluate(frames) for the batched engine: each structure's graph made as ORBCalculator
    makes it, all of them batched by orb-models' own batch_graphs into one model call, the
    results read as ORBCalculator reads them (conservative models: the gradient heads)."""
    import numpy as np
    from orb_models.forcefield.atomic_system import ase_atoms_to_atom_graphs
    from orb_models.forcefield.base import batch_graphs

    from adapters.batched import isolate_failures

    calculator = make_calculator(device, model, checkpoint, precision)
    network = calculator.model
    forces_key = network.grad_forces_name if calculator.conservative else "forces"
    stress_key = network.grad_stress_name if calculator.conservative else "stress"

    def forward(frames):
        graphs = [ase_atoms_to_atom_graphs(atoms, system_config=calculator.system_config,
                                           max_num_neighbors=calculator.max_num_neighbors,
                                           edge_method=calculator.edge_method,
                                           half_supercell=calculator.half_supercell, device=calculator.device)
                  for atoms in frames]
        out = network.predict(batch_graphs(graphs).to(calculator.device))
        energy = out["energy"].detach().cpu().numpy().reshape(-1)
        forces = np.split(out[forces_key].detach().cpu().numpy(), np.cumsum([len(a) for a in frames])[:-1])
        stress = out[stress_key].detach().cpu().numpy().reshape(len(frames), 6)
        return [(float(e), f, s) for e, f, s in zip(energy, forces, stress)]

    return lambda frames: isolate_failures(forward, frames)
