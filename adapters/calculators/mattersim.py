"""MatterSim (Yang et al., arXiv:2405.04967; Microsoft's mattersim package, M3GNet architecture)."""


def make_calculator(device: str, checkpoint: str):
    from mattersim.forcefield import MatterSimCalculator

    # an explicit path: given a bare model name the loader would look in, and download into,
    # ~/.local/mattersim; its calculator converts the model's GPa stress to eV/Å³ itself
    return MatterSimCalculator.from_checkpoint(load_path=checkpoint, device=device)


def make_test_checkpoint(path: str, **options) -> dict:
    """A small M3GNet built with mattersim's own constructor (random weights), saved as its
    checkpoints are (model state, model_args, model_name): the stand-in for a checkpoint
    that cannot be had here. Returns the options to use with it (none to change)."""
    import torch
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet

    torch.manual_seed(0)
    model = M3Gnet(num_blocks=2, units=32, device="cpu")
    torch.save({"model": model.state_dict(), "model_args": model.model_args, "model_name": "m3gnet"}, path)
    return {}
