"""DeePMD-kit (PyTorch backend): DPA3."""

import os


def make_calculator(device: str, checkpoint: str, head: str | None = None):
    # deepmd chooses its device when first imported: CUDA whenever torch sees a GPU
    if device == "cpu":
        os.environ["DEVICE"] = "cpu"
    from deepmd.calculator import DP

    # a frozen model (.pth) is loaded by path; `head` picks one of a multi-task model's heads
    return DP(model=checkpoint, head=head) if head else DP(model=checkpoint)


def make_test_checkpoint(path: str, **options) -> dict:
    """A small DPA3 for every element, built by deepmd's own get_model (random weights; the
    descriptor settings of deepmd's DPA3 example, made smaller) and frozen as `dp --pt freeze`
    freezes a model (TorchScript): the stand-in for the file that cannot be had here. Options
    to use: none."""
    import torch
    from ase.data import chemical_symbols
    from deepmd.pt.model.model import get_model

    torch.manual_seed(0)
    model = get_model({
        "type_map": chemical_symbols[1:],  # every element, as a universal model has
        "descriptor": {"type": "dpa3", "repflow": {
            "n_dim": 16, "e_dim": 8, "a_dim": 8, "nlayers": 2, "e_rcut": 6.0, "e_rcut_smth": 5.3, "e_sel": 60,
            "a_rcut": 4.0, "a_rcut_smth": 3.5, "a_sel": 20, "axis_neuron": 4, "update_angle": True,
            "smooth_edge_update": True, "edge_init_use_dist": True, "use_exp_switch": True,
            "update_style": "res_residual", "update_residual": 0.1, "update_residual_init": "const"},
            "activation_function": "silut:10.0", "precision": "float32", "seed": 1},
        "fitting_net": {"neuron": [16, 16], "resnet_dt": True, "precision": "float32",
                        "activation_function": "silut:10.0", "seed": 1},
    })
    model.eval()
    torch.jit.save(torch.jit.script(model), path)
    return {}
