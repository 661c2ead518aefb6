"""MatGL (Materials Virtual Lab): M3GNet, the universal potential of Chen & Ong."""

from pathlib import Path


#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("stand_in",)


def make_calculator(device: str, checkpoint: str):
    import ase.constraints
    import ase.filters
    import matgl
    import torch

    # matgl 1.2.7's ase module imports ExpCellFilter from where ase < 3.23 kept it (only its
    # Relaxer uses it); every image has the benchmark's ase, so name it there too
    if not hasattr(ase.constraints, "ExpCellFilter"):
        ase.constraints.ExpCellFilter = ase.filters.ExpCellFilter
    from matgl.ext.ase import PESCalculator

    # matgl has no device argument: the graphs its calculator builds and the model it loads
    # (a folder of model.json, model.pt, state.pt, given by path) follow torch's default device
    torch.set_default_device(device)
    potential = matgl.load_model(Path(checkpoint).parent)
    # PESCalculator's stress is in GPa unless told otherwise; ASE's optimizers want eV/Å³
    return PESCalculator(potential, stress_unit="eV/A3")


def make_test_checkpoint(path: str, **options) -> None:
    """A small extensive M3GNet built with matgl's own constructor (random weights), wrapped in
    its Potential and written by its own save() into the folder of `path`: the stand-in for
    the pretrained folder that cannot be had here. Returns the options to use with it (none)."""
    import torch
    from matgl.apps.pes import Potential
    from matgl.models import M3GNet

    torch.manual_seed(0)
    model = M3GNet(is_intensive=False, nblocks=2, units=32, dim_node_embedding=32, dim_edge_embedding=32)
    # a wide output scale: a fresh model is nearly flat, and its stress must be large enough
    # for the contract's finite differences to tell eV/Å³ from GPa
    Potential(model=model, data_std=20.0).save(Path(path).parent)
