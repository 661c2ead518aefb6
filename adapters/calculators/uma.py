"""UMA, FAIR Chemistry's universal models for atoms (fairchem-core 2.x), through its own ASE calculator."""

#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("batched", "stand_in", "heads")

#: UMA's task (its dataset head: omat, omol, oc20, odac, omc), checked by adapters.contract;
#: fairchem itself refuses a task the checkpoint lacks.
HEAD_OPTION = "task"

#: fairchem's named inference settings: "batch" is its full-precision (no TF32), uncompiled model
#: with the mixture of linear experts left unmerged, the one mode whose numbers do not depend on
#: the order of the structures (the default "merges" the experts for the first composition it
#: sees and falls back to this on the next, and compiles; on CUDA it also multiplies in TF32).
INFERENCE_SETTINGS = "batch"

#: The datasets (tasks) of the released UMA 1.1 checkpoints, for the stand-in.
TASKS = ("oc20", "omat", "omol", "odac", "omc")


def _predict_unit(device: str, checkpoint: str, inference_settings: str):
    from fairchem.core.units.mlip_unit import load_predict_unit

    # a path loads without fairchem's isolated-atom references: a single atom without
    # periodicity, the one structure they serve, is not in the benchmark
    return load_predict_unit(checkpoint, inference_settings=inference_settings, device=device)


def make_calculator(device: str, checkpoint: str, task: str = "omat",
                    inference_settings: str = INFERENCE_SETTINGS):
    from fairchem.core.calculate.ase_calculator import FAIRChemCalculator

    return FAIRChemCalculator(_predict_unit(device, checkpoint, inference_settings), task_name=task)


def heads(calculator) -> list[str]:
    """The tasks of the calculator's checkpoint, as fairchem reads them from the file."""
    return list(calculator.predictor.dataset_to_tasks)


def make_batched(device: str, checkpoint: str, task: str = "omat",
                 inference_settings: str = INFERENCE_SETTINGS):
    """evaluate(frames) for the batched engine: each structure made into fairchem's AtomicData
    as FAIRChemCalculator makes it, all of them in one batch through the same predict unit,
    read back per structure as the calculator reads them (stress 3x3 to Voigt)."""
    from ase.stress import full_3x3_to_voigt_6_stress
    from fairchem.core.datasets.atomic_data import atomicdata_list_to_batch

    from adapters.batched import isolate_failures

    calculator = make_calculator(device, checkpoint, task, inference_settings)

    def forward(frames):
        batch = atomicdata_list_to_batch([calculator.a2g(atoms) for atoms in frames])
        prediction = calculator.predictor.predict(batch)
        energy = prediction["energy"].detach().cpu().numpy()
        forces = prediction["forces"].detach().cpu().numpy()
        stress = prediction["stress"].detach().cpu().numpy().reshape(-1, 3, 3)
        ends = batch.natoms.cumsum(0).tolist()
        return [(float(energy[k]), forces[end - len(atoms):end], full_3x3_to_voigt_6_stress(stress[k]))
                for k, (atoms, end) in enumerate(zip(frames, ends))]

    return lambda frames: isolate_failures(forward, frames)


def make_test_checkpoint(path: str, **options) -> None:
    """A small UMA (random weights): fairchem's own hydra model with UMA's mixture-of-experts
    eSCN backbone and its dataset-specific energy, forces and stress head, one task per UMA 1.1
    dataset, each with its element references; saved as fairchem saves an inference checkpoint
    (MLIPInferenceCheckpoint: model config, state, the averaged model's state, tasks): the
    stand-in for the gated file that cannot be had here. The options to use: none."""
    import hydra
    import torch
    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    backbone = {
        "model": "fairchem.core.models.uma.escn_moe.eSCNMDMoeBackbone", "model_version": 1.1,
        "max_num_elements": 100, "sphere_channels": 16, "hidden_channels": 16, "edge_channels": 16, "lmax": 2,
        "mmax": 2, "num_layers": 2, "num_distance_basis": 16, "cutoff": 6.0, "max_neighbors": 30, "otf_graph": True,
        "distance_function": "gaussian", "norm_type": "rms_norm_sh", "act_type": "gate", "ff_type": "spectral",
        "direct_forces": False, "regress_forces": True, "regress_stress": True, "chg_spin_emb_type": "rand_emb",
        "dataset_mapping": {name: name for name in TASKS}, "use_dataset_embedding": True, "num_experts": 4,
        "use_composition_embedding": True, "moe_expert_coefficient_norm": "softmax", "moe_layer_type": "pytorch"}
    model_config = {
        "_target_": "fairchem.core.models.base.HydraModel", "backbone": backbone, "otf_graph": True,
        "pass_through_head_outputs": True,
        "heads": {"efs": {"module": "fairchem.core.models.uma.escn_moe.DatasetSpecificSingleHeadWrapper",
                          "head_cls": "fairchem.core.models.uma.escn_md.MLP_EFS_Head", "dataset_names": list(TASKS),
                          "head_kwargs": {"wrap_property": False}}}}
    references = [0.0] + [-1.0 - 0.01 * z for z in range(1, 101)]  # eV per element, index = Z

    def task(dataset: str, prop: str, level: str, dim: list[int]) -> dict:
        spec = {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task", "name": f"{dataset}_{prop}",
                "level": level, "property": prop, "datasets": [dataset],
                "out_spec": {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec", "dim": dim,
                             "dtype": "float32"},
                "normalizer": {"_target_": "fairchem.core.modules.normalization.normalizer.Normalizer",
                               "mean": 0.0, "rmsd": 1.0}}
        if prop == "energy":
            spec["element_references"] = {
                "_target_": "fairchem.core.modules.normalization.element_references.ElementReferences",
                "element_references": {"_target_": "torch.DoubleTensor", "_args_": [references]}}
        return spec

    torch.manual_seed(0)
    model = hydra.utils.instantiate(model_config)
    torch.save(MLIPInferenceCheckpoint(
        model_config=model_config, model_state_dict=model.state_dict(),
        ema_state_dict=torch.optim.swa_utils.AveragedModel(model).state_dict(),
        tasks_config=[task(name, prop, level, dim) for name in TASKS for prop, level, dim in
                      (("energy", "system", [1]), ("forces", "atom", [3]), ("stress", "system", [1, 9]))]), path)
