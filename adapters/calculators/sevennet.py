"""SevenNet (Park et al., JCTC 2024); 7net-0, 7net-mf-0 and 7net-l3i5 ship inside the wheel.
A multi-fidelity model (7net-mf-ompa, 7net-omni) takes the fidelity to predict as `modal`."""


#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("batched", "stand_in", "heads")

#: The option naming the fidelity of a multi-fidelity checkpoint (checked by adapters.contract);
#: SevenNetCalculator itself refuses one the checkpoint lacks.
HEAD_OPTION = "modal"


def make_calculator(device: str, model: str = "7net-0", modal: str | None = None, checkpoint: str | None = None):
    from sevenn.calculator import SevenNetCalculator

    # an explicit checkpoint (mounted read-only) wins: sevenn would otherwise download into site-packages
    return SevenNetCalculator(model=checkpoint or model, device=device, modal=modal)


def heads(calculator) -> list[str]:
    """The fidelities of the calculator's checkpoint."""
    return list(calculator.model.modal_map or {})


def make_batched(device: str, model: str = "7net-0", modal: str | None = None, checkpoint: str | None = None):
    """evaluate(frames) for the batched engine: the structures' graphs collated into one
    batch and one forward pass, with the model, cutoff and fidelity of make_calculator."""
    import numpy as np
    from sevenn import _keys as KEY
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import unlabeled_atoms_to_graph
    from torch_geometric.loader.dataloader import Collater

    from adapters.batched import isolate_failures

    calculator = make_calculator(device, model=model, modal=modal, checkpoint=checkpoint)
    network = calculator.model
    network.set_is_batch_data(True)
    collate = Collater([], follow_batch=None, exclude_keys=None)

    def graph(atoms):
        calculator.set_atoms(atoms)  # refuses elements the model does not know
        data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, calculator.cutoff, with_shift=False))
        if calculator.modal:
            data[KEY.DATA_MODALITY] = calculator.modal
        return data

    def forward(graphs):
        output = network(collate(graphs).to(device))
        energy = output[KEY.PRED_TOTAL_ENERGY].detach().cpu().numpy().reshape(-1)
        forces = output[KEY.PRED_FORCE].detach().cpu().numpy()
        stress = -output[KEY.PRED_STRESS].detach().cpu().numpy().reshape(-1, 6)[:, [0, 1, 2, 4, 5, 3]]  # ASE Voigt
        split = np.cumsum([int(g[KEY.NUM_ATOMS]) for g in graphs])[:-1]
        return [(float(e), f, s) for e, f, s in zip(energy, np.split(forces, split), stress)]

    def evaluate(frames):
        outputs, graphs, where = [None] * len(frames), [], []
        for k, atoms in enumerate(frames):
            try:
                graphs.append(graph(atoms))
                where.append(k)
            except Exception as exc:  # this structure only
                outputs[k] = exc
        if not graphs:
            return outputs
        for k, result in zip(where, isolate_failures(forward, graphs)):
            outputs[k] = result
        return outputs

    return evaluate


def make_test_checkpoint(path: str, modal: str | None = None, **options) -> None:
    """The stand-in for a checkpoint that cannot be had here: for a multi-fidelity model,
    SevenNet-MF-0, the multi-fidelity checkpoint inside the wheel (the same loader and fidelity
    selection), with its PBE fidelity renamed `modal`, the one model.yaml asks for (mpa), and its
    R2SCAN kept; 7net-0 for a single-fidelity model. The options to use: model.yaml's."""
    import shutil
    from pathlib import Path

    import sevenn
    import torch
    from sevenn import _keys as KEY

    wheel = Path(sevenn.__file__).parent / "pretrained_potentials"
    if not modal:
        shutil.copyfile(wheel / "SevenNet_0__11Jul2024" / "checkpoint_sevennet_0.pth", path)
        return
    checkpoint = torch.load(wheel / "SevenNet_MF_0" / "checkpoint_sevennet_mf_0.pth", map_location="cpu",
                            weights_only=False)
    config = checkpoint["config"]
    renamed = {"PBE": modal}
    config[KEY.MODAL_MAP] = {renamed.get(name, name): index for name, index in config[KEY.MODAL_MAP].items()}
    config[KEY.MODAL_LIST] = [renamed.get(name, name) for name in config[KEY.MODAL_LIST]]
    config[KEY.DEFAULT_MODAL] = renamed.get(config[KEY.DEFAULT_MODAL], config[KEY.DEFAULT_MODAL])
    torch.save(checkpoint, path)
