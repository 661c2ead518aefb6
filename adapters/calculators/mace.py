"""MACE (Batatia et al., NeurIPS 2022; MACE-MP foundation models, arXiv:2401.00096)."""


#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("batched", "stand_in", "heads")

#: The option naming the head of a multi-head checkpoint (checked by adapters.contract).
HEAD_OPTION = "head"


def make_calculator(device: str, checkpoint: str, dtype: str = "", head: str = ""):
    """head: the head of a multi-head checkpoint (MACE-MH-1's "omat_pbe"); without one,
    MACECalculator's own choice, as the paper's models ran. A name the checkpoint does not
    have is an error: MACECalculator itself would fall back to its last head."""
    from mace.calculators import MACECalculator

    # dtype "" keeps the precision the checkpoint was saved in (MACECalculator's own default,
    # and what the authors' code used); "float64" is what MACE advises for optimisation
    calculator = MACECalculator(model_paths=checkpoint, device=device, default_dtype=dtype,
                                **({"head": head} if head else {}))
    if head and head not in calculator.available_heads:
        raise ValueError(f"head {head!r} is not in {checkpoint}; its heads: {', '.join(calculator.available_heads)}")
    return calculator


def heads(calculator) -> list[str]:
    """The heads of the calculator's checkpoint."""
    return list(calculator.available_heads)


def make_test_checkpoint(path: str, head: str = "", **options) -> None:
    """A small MACE built with mace's own constructor (random weights, float64), saved the
    way its .model files are (a pickled module): the stand-in for a checkpoint that cannot
    be had here. With `head`, a multi-head one (that head and a second, "other", with their
    own atomic energies and shifts, as mace's multi-head fine-tuning makes them). Returns
    the options to use with it (none to change)."""
    import numpy as np
    import torch
    from mace import modules, tools  # first: it lets torch.load read e3nn's own constants
    from e3nn import o3

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    table = tools.AtomicNumberTable(list(range(1, 90)))
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    per_head = {"heads": [head, "other"], "atomic_energies": np.stack([np.full(len(table), -1.0),
                                                                        np.full(len(table), -1.5)]),
                "atomic_inter_scale": [0.1, 0.2], "atomic_inter_shift": [0.0, 0.05]} if head else \
        {"atomic_energies": np.full(len(table), -1.0), "atomic_inter_scale": 0.1, "atomic_inter_shift": 0.0}
    model = modules.ScaleShiftMACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=2, interaction_cls=block,
        interaction_cls_first=block, num_interactions=2, num_elements=len(table),
        hidden_irreps=o3.Irreps("8x0e + 8x1o"), MLP_irreps=o3.Irreps("8x0e"), gate=torch.nn.functional.silu,
        avg_num_neighbors=10.0, atomic_numbers=table.zs, correlation=2, radial_type="bessel", **per_head)
    torch.save(model, path)


def make_batched(device: str, checkpoint: str, dtype: str = "", head: str = ""):
    """evaluate(frames) for the batched engine: each structure's graph made by
    MACECalculator itself, all of them in one batch and one forward pass of its model."""
    import numpy as np
    import torch
    from ase.stress import full_3x3_to_voigt_6_stress
    from mace import data
    from mace.tools import torch_geometric, torch_tools

    from adapters.batched import isolate_failures

    calculator = make_calculator(device, checkpoint, dtype, head)
    model = calculator.models[0]
    model_dtype = next(model.parameters()).dtype
    energy_unit = calculator.energy_units_to_eV
    length_unit = calculator.length_units_to_A

    def graph(atoms):  # as MACECalculator._atoms_to_batch makes it, without its padding for compiled models
        keys = data.KeySpecification(info_keys=calculator.info_keys,
                                     arrays_keys={**calculator.arrays_keys, calculator.charges_key: "charges"})
        with torch_tools.default_dtype(calculator.default_dtype):
            config = data.config_from_atoms(atoms, key_specification=keys, head_name=calculator.head)
            return data.AtomicData.from_config(config, z_table=calculator.z_table, cutoff=calculator.r_max,
                                               heads=calculator.available_heads)

    def forward(frames):
        batch = torch_geometric.Batch.from_data_list([graph(atoms) for atoms in frames]).to(device)
        inputs = {key: value.to(dtype=model_dtype) if torch.is_tensor(value) and torch.is_floating_point(value)
                  else value for key, value in batch.to_dict().items()}
        out = model(inputs, compute_stress=True, training=False)
        energy = out["energy"].detach().cpu().numpy().reshape(-1) * energy_unit
        forces = np.split(out["forces"].detach().cpu().numpy() * energy_unit / length_unit,
                          np.cumsum([len(a) for a in frames])[:-1])
        stress = out["stress"].detach().cpu().numpy().reshape(-1, 3, 3) * energy_unit / length_unit**3
        return [(float(e), f, full_3x3_to_voigt_6_stress(s)) for e, f, s in zip(energy, forces, stress)]

    return lambda frames: isolate_failures(forward, frames)
