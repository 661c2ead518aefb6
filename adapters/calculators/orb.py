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
