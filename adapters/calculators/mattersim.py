"""MatterSim (Yang et al., arXiv:2405.04967; Microsoft's mattersim package, M3GNet architecture)."""


#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("batched", "stand_in")


def make_calculator(device: str, checkpoint: str):
    from mattersim.forcefield import MatterSimCalculator

    # an explicit path: given a bare model name the loader would look in, and download into,
    # ~/.local/mattersim; its calculator converts the model's GPa stress to eV/Å³ itself
    return MatterSimCalculator.from_checkpoint(load_path=checkpoint, device=device)


def make_test_checkpoint(path: str, **options) -> None:
    """A small M3GNet built with mattersim's own constructor (random weights), saved as its
    checkpoints are (model state, model_args, model_name): the stand-in for a checkpoint
    that cannot be had here. Returns the options to use with it (none to change)."""
    import torch
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet

    torch.manual_seed(0)
    model = M3Gnet(num_blocks=2, units=32, device="cpu")
    torch.save({"model": model.state_dict(), "model_args": model.model_args, "model_name": "m3gnet"}, path)


def make_batched(device: str, checkpoint: str):
    """evaluate(frames) for the batched engine: every structure's graph in one batch and one
    forward pass, with the loader, cutoffs and stress conversion of MatterSimCalculator."""
    import numpy as np
    from ase.stress import full_3x3_to_voigt_6_stress
    from mattersim.datasets.utils.build import build_dataloader
    from mattersim.forcefield.potential import batch_to_dict

    from adapters.batched import isolate_failures

    calculator = make_calculator(device, checkpoint)
    potential = calculator.potential
    args = potential.model.model_args

    def forward(frames):
        (batch,) = build_dataloader(frames, model_type=potential.model_name, cutoff=args["cutoff"],
                                    threebody_cutoff=args["threebody_cutoff"], batch_size=len(frames),
                                    only_inference=True)
        result = potential.forward(batch_to_dict(batch, device=device), include_forces=True, include_stresses=True)
        energy = result["total_energy"].detach().cpu().numpy().reshape(-1)
        forces = np.split(result["forces"].detach().cpu().numpy(), np.cumsum([len(a) for a in frames])[:-1])
        stress = result["stresses"].detach().cpu().numpy().reshape(-1, 3, 3)
        return [(float(e), f, calculator.stress_weight * full_3x3_to_voigt_6_stress(s))
                for e, f, s in zip(energy, forces, stress)]

    def evaluate(frames):
        return isolate_failures(forward, frames)

    return evaluate
