"""MACE (Batatia et al., NeurIPS 2022; MACE-MP foundation models, arXiv:2401.00096)."""


def make_calculator(device: str, checkpoint: str, dtype: str = ""):
    from mace.calculators import MACECalculator

    # dtype "" keeps the precision the checkpoint was saved in (MACECalculator's own default,
    # and what the authors' code used); "float64" is what MACE advises for optimisation
    return MACECalculator(model_paths=checkpoint, device=device, default_dtype=dtype)


def make_test_checkpoint(path: str, **options) -> dict:
    """A small MACE built with mace's own constructor (random weights, float64), saved the
    way its .model files are (a pickled module): the stand-in for a checkpoint that cannot
    be had here. Returns the options to use with it (none to change)."""
    import numpy as np
    import torch
    from mace import modules, tools  # first: it lets torch.load read e3nn's own constants
    from e3nn import o3

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    table = tools.AtomicNumberTable(list(range(1, 90)))
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=2, interaction_cls=block,
        interaction_cls_first=block, num_interactions=2, num_elements=len(table),
        hidden_irreps=o3.Irreps("8x0e + 8x1o"), MLP_irreps=o3.Irreps("8x0e"), gate=torch.nn.functional.silu,
        atomic_energies=np.full(len(table), -1.0), avg_num_neighbors=10.0, atomic_numbers=table.zs, correlation=2,
        radial_type="bessel", atomic_inter_scale=0.1, atomic_inter_shift=0.0)
    torch.save(model, path)
    return {}
