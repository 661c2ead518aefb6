"""MACE (Batatia et al., NeurIPS 2022; MACE-MP foundation models, arXiv:2401.00096)."""


def make_calculator(device: str, checkpoint: str, dtype: str = ""):
    from mace.calculators import MACECalculator

    # dtype "" keeps the precision the checkpoint was saved in (MACECalculator's own default,
    # and what the authors' code used); "float64" is what MACE advises for optimisation
    return MACECalculator(model_paths=checkpoint, device=device, default_dtype=dtype)
