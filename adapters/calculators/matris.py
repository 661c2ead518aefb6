"""MatRIS (HPC-AI-Team; matris), through its own ASE calculator."""

import os
import tempfile
from pathlib import Path


#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("batched", "stand_in")


def make_calculator(device: str, checkpoint: str, model: str = "matris_10m_oam"):
    """model: the name matris' loader knows (MatRIS.load); checkpoint: that model's file,
    mounted read-only. MatRIS.load reads ~/.cache/matris/<its file name> (and downloads it
    when absent): the factory points ~ at a scratch folder holding a link to the mounted
    file while the calculator is built, so the package's own loader reads it, offline."""
    from matris.applications.base import MatRISCalculator

    home = Path(tempfile.mkdtemp(prefix="matris-home-"))
    (home / ".cache" / "matris").mkdir(parents=True)
    (home / ".cache" / "matris" / Path(checkpoint).name).symlink_to(checkpoint)
    before = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        return MatRISCalculator(model=model, device=device)
    finally:
        if before is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = before


def make_test_checkpoint(path: str, **options) -> None:
    """A small MatRIS built by matris' own constructor (random weights), saved as its
    checkpoints are (the constructor's config and the state dict, which MatRIS.from_dict
    reads): the stand-in for a file that cannot be had here. The options to use: none."""
    import torch
    from matris.model.model import MatRIS

    torch.manual_seed(0)
    # with per-element reference energies (matris' own fit to MPtrj and sAlex), as the released
    # models have them: its calculator cannot run without
    network = MatRIS(num_layers=2, node_feat_dim=16, edge_feat_dim=16, three_body_feat_dim=16,
                     mlp_hidden_dims=(16, 16), num_radial=5, num_angular=5, max_l=2, max_n=2, reference_energy="mpa")
    torch.save({"config": network.config, "state_dict": network.state_dict()}, path)


def make_batched(device: str, checkpoint: str, model: str = "matris_10m_oam"):
    """evaluate(frames) for the batched engine: each structure's graph made as
    MatRISCalculator makes it (pymatgen's structure, the model's own graph converter), all of
    them in one call of the model, which takes a list of graphs; read as the calculator
    reads them (energy per atom times atoms, stress in GPa converted to eV/Å³)."""
    from ase import units
    from ase.stress import full_3x3_to_voigt_6_stress
    from pymatgen.io.ase import AseAtomsAdaptor

    from adapters.batched import isolate_failures

    network = make_calculator(device, checkpoint, model).model

    def forward(frames):
        graphs = [network.graph_converter(AseAtomsAdaptor.get_structure(atoms)).to(device) for atoms in frames]
        out = network(graphs, task="efs", is_training=False)
        results = []
        for k, atoms in enumerate(frames):
            per_atom = len(atoms) if network.is_intensive else 1
            stress = out["s"][k].detach().cpu().numpy() * units.GPa
            results.append((float(out["e"][k].detach().cpu()) * per_atom, out["f"][k].detach().cpu().numpy(),
                            full_3x3_to_voigt_6_stress(stress)))
        return results

    return lambda frames: isolate_failures(forward, frames)
