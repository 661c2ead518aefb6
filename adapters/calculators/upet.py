"""PET models (lab-cosmo; upet, on metatrain and metatomic), through upet's own ASE calculator."""


#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("stand_in",)


def make_calculator(device: str, checkpoint: str):
    """checkpoint: a upet checkpoint, named as upet names them (pet-oam-xl-v1.0.0.ckpt):
    upet reads the model, size and version back from that name. Conservative forces and
    stress (upet's default); no uncertainty warnings (upet's check would log one per
    structure far from its training data: the benchmark measures, it does not warn)."""
    from upet.calculator import UPETCalculator

    return UPETCalculator(checkpoint_path=checkpoint, device=device, uncertainty_threshold=None)


def make_test_checkpoint(path: str, **options) -> None:
    """A small PET for every element, built by metatrain's own constructor (its default
    hyperparameters, narrower) with an energy target with position and strain gradients,
    saved by its own get_checkpoint as upet's checkpoints are: the stand-in for a file that
    cannot be had here. The options to use: none."""
    import torch
    from metatrain.pet import __model__ as PET
    from metatrain.utils.architectures import get_default_hypers
    from metatrain.utils.data import DatasetInfo
    from metatrain.utils.data.target_info import get_energy_target_info

    torch.manual_seed(0)
    hypers = get_default_hypers("pet")["model"]
    hypers.update(d_pet=16, d_head=16, d_node=16, d_feedforward=16, num_heads=2, num_attention_layers=1,
                  num_gnn_layers=1)
    energy = get_energy_target_info("energy", {"quantity": "energy", "unit": "eV"}, add_position_gradients=True,
                                    add_strain_gradients=True)
    info = DatasetInfo(length_unit="Angstrom", atomic_types=list(range(1, 90)), targets={"energy": energy})
    torch.save(PET(hypers, info).get_checkpoint(), path)
