"""NequIP and Allegro (nequip 0.19; the mir-group foundation models), through nequip's own ASE calculator."""


#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("batched", "stand_in")


def make_calculator(device: str, checkpoint: str):
    """checkpoint: a packaged model (.nequip.zip, as nequip.net serves them) or a training
    checkpoint (.ckpt), loaded by nequip's own loader as its eager model on `device`, with its
    own neighbour list and type mapping, TF32 off. nequip recommends AOT-compiling a package for
    one machine (nequip-compile) for speed; the eager model is the same model without a
    per-machine build step, on CPU and GPU alike."""
    from nequip.integrations.ase import NequIPCalculator

    # the foundation models' type names are the chemical symbols: the identity map (said, not guessed)
    return NequIPCalculator._from_saved_model(checkpoint, device=device, allow_tf32=False,
                                              chemical_species_to_atom_type_map=True)


def make_batched(device: str, checkpoint: str):
    """evaluate(frames) for the batched engine: each structure made into nequip's data as
    NequIPCalculator makes it (its transforms: neighbour list, type mapping), all of them
    batched by nequip's own batched_from_list into one call of the model, read back per frame."""
    from ase.stress import full_3x3_to_voigt_6_stress
    from nequip.data import AtomicDataDict

    from adapters.batched import isolate_failures

    calculator = make_calculator(device, checkpoint)

    def forward(frames):
        out = calculator.model(AtomicDataDict.batched_from_list([calculator.atoms_to_data(a) for a in frames]))
        results = []
        for k in range(len(frames)):
            frame = AtomicDataDict.frame_from_batched(out, k)
            stress = frame[AtomicDataDict.STRESS_KEY].detach().cpu().numpy().reshape(3, 3)
            results.append((float(frame[AtomicDataDict.TOTAL_ENERGY_KEY].detach().cpu().reshape(())),
                            frame[AtomicDataDict.FORCE_KEY].detach().cpu().numpy(),
                            full_3x3_to_voigt_6_stress(stress)))
        return results

    return lambda frames: isolate_failures(forward, frames)


def make_test_checkpoint(path: str, **options) -> None:
    """A small NequIP for elements H to Pu, made as nequip's foundation models are made, with
    its own commands: trained by `nequip-train` for one step (on nequip's own EMT test data of
    copper; data statistics from it), then packaged by `nequip-package build` into a
    .nequip.zip at `path`: the stand-in for the file that cannot be had here. Options: none."""
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    from ase.data import chemical_symbols

    stat = {"_target_": "nequip.data.Mean"}
    config = {
        "run": ["train"], "seed": 1, "cutoff_radius": 5.0, "type_names": chemical_symbols[1:95],
        "data": {
            "_target_": "nequip.data.datamodule.NequIPDataModule", "seed": "${seed}",
            "split_dataset": {"train": 2, "val": 2, "dataset": {
                "_target_": "nequip.data.dataset.EMTTestDataset", "element": "Cu", "supercell": [2, 2, 2],
                "num_frames": 4, "seed": "${seed}",
                "transforms": [{"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": "${cutoff_radius}"},
                               {"_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
                                "model_type_names": "${type_names}",
                                "chemical_species_to_atom_type_map": "${list_to_identity_dict:${type_names}}"}]}},
            "train_dataloader": {"_target_": "torch.utils.data.DataLoader", "batch_size": 2},
            "val_dataloader": {"_target_": "torch.utils.data.DataLoader", "batch_size": 2},
            "stats_manager": {"_target_": "nequip.data.DataStatisticsManager", "type_names": "${type_names}", "metrics": [
                {"name": "num_neighbors_mean", "field": {"_target_": "nequip.data.NumNeighbors"}, "metric": stat},
                {"name": "per_atom_energy_mean", "metric": stat,
                 "field": {"_target_": "nequip.data.PerAtomModifier", "field": "total_energy"}},
                {"name": "forces_rms", "field": "forces", "metric": {"_target_": "nequip.data.RootMeanSquare"}}]}},
        "trainer": {"_target_": "lightning.Trainer", "max_steps": 1, "logger": False, "enable_progress_bar": False,
                    "callbacks": [{"_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "dirpath": "${hydra:runtime.output_dir}", "save_last": True}]},
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            "loss": {"_target_": "nequip.train.MetricsManager", "metrics": [
                {"name": "forces_mse", "field": "forces", "coeff": 1, "metric": {"_target_": "nequip.train.MeanSquaredError"}}]},
            "val_metrics": {"_target_": "nequip.train.MetricsManager", "metrics": [
                {"name": "forces_mae", "field": "forces", "coeff": 1,
                 "metric": {"_target_": "nequip.train.MeanAbsoluteError"}}]},
            "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.01},
            "model": {"_target_": "nequip.model.NequIPGNNModel", "seed": "${seed}", "model_dtype": "float32",
                      "type_names": "${type_names}", "r_max": "${cutoff_radius}", "l_max": 1, "parity": True,
                      "num_layers": 2, "num_features": 8, "radial_mlp_depth": 1, "radial_mlp_width": 8,
                      "per_type_energy_shifts": "${training_data_stats:per_atom_energy_mean}",
                      "per_type_energy_scales": "${training_data_stats:forces_rms}",
                      "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}"}},
        "global_options": {"allow_tf32": False},
    }
    with tempfile.TemporaryDirectory() as work:
        Path(work, "stand-in.yaml").write_text(json.dumps(config))  # JSON is YAML, as hydra reads it
        run = Path(work, "run")
        for command in (["nequip-train", "-cp", work, "-cn", "stand-in", f"hydra.run.dir={run}"],
                        ["nequip-package", "build", str(run / "last.ckpt"), path]):
            done = subprocess.run(command, capture_output=True, text=True, cwd=work)
            if done.returncode:
                raise RuntimeError(f"{command[0]} failed:\n{done.stderr[-3000:]}")
