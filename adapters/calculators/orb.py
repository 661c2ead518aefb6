"""Orb (Orbital Materials; orb-models): ORB-v2 and the ORB-v3 conservative and direct models."""


def make_calculator(device: str, model: str, checkpoint: str, precision: str = "float32-high"):
    from orb_models.forcefield import pretrained
    from orb_models.forcefield.calculator import ORBCalculator

    # `model` names orb-models' loader (orb_v2, orb_v3_conservative_inf_mpa, ...), which builds the
    # architecture and loads the mounted checkpoint. No compile: torch.compile needs a compiler
    # and a writable cache in the worker, and the authors' code did not compile.
    loader = getattr(pretrained, model)
    return ORBCalculator(loader(weights_path=checkpoint, device=device, precision=precision, compile=False),
                         device=device)


def make_test_checkpoint(path: str, model: str, **options) -> dict:
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
    return {}
