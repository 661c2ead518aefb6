"""FAIR Chemistry (fairchem-core 1.x): the OMat24 models EquiformerV2 (eqV2) and eSEN."""

import copy

#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("stand_in",)

#: What the OMat24 checkpoints predict and how their trainer reads it (eqV2's stress head gives
#: the isotropic and anisotropic parts, which the trainer recombines).
OUTPUTS = {
    "energy": {"level": "system", "property": "energy"},
    "forces": {"level": "atom", "property": "forces", "train_on_free_atoms": True, "eval_on_free_atoms": True},
    "stress": {"level": "system", "property": "stress"},
}
#: Small backbones in the released models' layouts (hydra: a backbone and its heads), for stand-ins.
STAND_INS = {
    "eqv2": {
        "trainer": "equiformerv2_forces",
        "backbone": {"model": "equiformer_v2_backbone", "use_pbc": True, "use_pbc_single": True, "otf_graph": True,
                     "max_neighbors": 20, "max_radius": 6.0, "max_num_elements": 96, "num_layers": 2,
                     "sphere_channels": 16, "attn_hidden_channels": 16, "num_heads": 2, "attn_alpha_channels": 8,
                     "attn_value_channels": 4, "ffn_hidden_channels": 16, "lmax_list": [2], "mmax_list": [1],
                     "grid_resolution": 8, "num_sphere_samples": 32, "edge_channels": 16, "num_distance_basis": 64,
                     "alpha_drop": 0.0, "drop_path_rate": 0.0},
        "heads": {"energy": {"module": "equiformer_v2_energy_head"},
                  "forces": {"module": "equiformer_v2_force_head"},
                  "stress": {"module": "rank2_symmetric_head", "output_name": "stress",
                             "use_source_target_embedding": True, "decompose": True}},
        "stress": {"decomposition": {"stress_isotropic": {"irrep_dim": 0}, "stress_anisotropic": {"irrep_dim": 2}}},
    },
    "esen": {
        "trainer": "ocp",
        "backbone": {"model": "esen_backbone", "otf_graph": True, "max_neighbors": 20, "cutoff": 6.0,
                     "max_num_elements": 100, "sphere_channels": 16, "hidden_channels": 16, "edge_channels": 16,
                     "lmax": 2, "mmax": 2, "num_layers": 2, "num_distance_basis": 32, "direct_forces": False,
                     "regress_forces": True, "regress_stress": True, "use_pbc": True, "use_pbc_single": True},
        "heads": {"efs": {"module": "esen_mlp_efs_head"}},
        "stress": {},
    },
}


def _register_models() -> None:
    """fairchem finds its models and trainers by importing every module of the package, some of
    which need compiled packages the OMat24 models never use (torch_sparse for DimeNet++): import
    those these models need, and tell fairchem's registry its imports are done."""
    import importlib
    import pkgutil

    from fairchem.core.common.registry import registry

    for name in ("trainers", "models.equiformer_v2", "models.esen"):
        package = importlib.import_module(f"fairchem.core.{name}")
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)
    importlib.import_module("fairchem.core.models.base")  # the hydra model
    registry.register("imports_setup", True)


def make_calculator(device: str, checkpoint: str):
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    _register_models()

    # the checkpoint holds the model's config and weights; fairchem's own CPU switch
    return OCPCalculator(checkpoint_path=checkpoint, cpu=device == "cpu", seed=0)


def _config(kind: str) -> dict:
    spec = STAND_INS[kind]
    outputs = copy.deepcopy(OUTPUTS)
    outputs["stress"].update(spec["stress"])
    return {
        "trainer": spec["trainer"],
        "model": {"name": "hydra", "otf_graph": True, "pass_through_head_outputs": True,
                  "backbone": spec["backbone"], "heads": spec["heads"]},
        "outputs": outputs,
        "loss_functions": [{"energy": {"fn": "per_atom_mae"}}, {"forces": {"fn": "l2mae"}}],
        "evaluation_metrics": {"metrics": {"energy": ["mae"], "forces": ["mae"]}},
        "optim": {"batch_size": 1, "eval_batch_size": 1, "num_workers": 0, "lr_initial": 1e-4,
                  "optimizer": "AdamW", "max_epochs": 1},
        "dataset": {"format": "ase_db", "src": "unused"},
        "task": {},
    }


def make_test_checkpoint(path: str, **options) -> None:
    """A small eqV2 or eSEN (as the released file name at `path` says: esen_*.pt or eqV2_*.pt),
    fairchem's own hydra model (random weights) from a config in the released checkpoints'
    layout, saved as they are (config and state dict): the stand-in for the gated file that
    cannot be had here. Options to use: none."""
    from pathlib import Path

    import torch
    from fairchem.core.common.registry import registry

    _register_models()
    torch.manual_seed(0)
    config = _config("esen" if Path(path).name.lower().startswith("esen") else "eqv2")
    model = registry.get_model_class("hydra")(**{k: v for k, v in config["model"].items() if k != "name"})
    torch.save({"config": config, "state_dict": model.state_dict(), "normalizers": {}}, path)
