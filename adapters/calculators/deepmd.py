"""DeePMD-kit (PyTorch backend): DPA3."""

import os


#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("stand_in", "heads")

#: The branch of a multi-task checkpoint (DPA-3.1's "Omat24"), checked by adapters.contract;
#: deepmd itself refuses a name the checkpoint lacks.
HEAD_OPTION = "head"


def make_calculator(device: str, checkpoint: str, head: str | None = None):
    # deepmd chooses its device when first imported: CUDA whenever torch sees a GPU
    if device == "cpu":
        os.environ["DEVICE"] = "cpu"
    from deepmd.calculator import DP

    # a frozen model (.pth) or a training checkpoint (.pt) is loaded by path; `head` picks one
    # of a multi-task checkpoint's branches
    return DP(model=checkpoint, head=head) if head else DP(model=checkpoint)


def heads(calculator) -> list[str]:
    """The branches of the calculator's multi-task checkpoint (none for a frozen model), as
    deepmd reads them from the file."""
    import torch

    path = str(calculator.dp.deep_eval.model_path)
    if not path.endswith(".pt"):
        return []
    state = torch.load(path, map_location="cpu", weights_only=True)
    return list(state.get("model", state)["_extra_state"]["model_params"].get("model_dict", {}))


def make_test_checkpoint(path: str, head: str | None = None, **options) -> None:
    """A small DPA3 for every element, built by deepmd's own get_model (random weights; the
    descriptor settings of deepmd's DPA3 example, made smaller) and frozen as `dp --pt freeze`
    freezes a model (TorchScript): the stand-in for the file that cannot be had here. With
    `head`, a multi-task training checkpoint (.pt) instead, as deepmd saves one: that branch
    and a second, "other", with its own fitting net, in deepmd's ModelWrapper with the
    branches' parameters in its state. Options to use: none."""
    import copy

    import torch
    from ase.data import chemical_symbols
    from deepmd.pt.model.model import get_model
    from deepmd.pt.train.wrapper import ModelWrapper

    torch.manual_seed(0)
    params = {
        "type_map": chemical_symbols[1:],  # every element, as a universal model has
        "descriptor": {"type": "dpa3", "repflow": {
            "n_dim": 16, "e_dim": 8, "a_dim": 8, "nlayers": 2, "e_rcut": 6.0, "e_rcut_smth": 5.3, "e_sel": 60,
            "a_rcut": 4.0, "a_rcut_smth": 3.5, "a_sel": 20, "axis_neuron": 4, "update_angle": True,
            "smooth_edge_update": True, "edge_init_use_dist": True, "use_exp_switch": True,
            "update_style": "res_residual", "update_residual": 0.1, "update_residual_init": "const"},
            "activation_function": "silut:10.0", "precision": "float32", "seed": 1},
        "fitting_net": {"neuron": [16, 16], "resnet_dt": True, "precision": "float32",
                        "activation_function": "silut:10.0", "seed": 1},
    }
    if head:
        branches = {head: params, "other": {**params, "fitting_net": {**params["fitting_net"], "seed": 2}}}
        wrapper = ModelWrapper({name: get_model(copy.deepcopy(branch)) for name, branch in branches.items()},
                               model_params={"model_dict": branches})
        torch.save({"model": wrapper.state_dict()}, path)
        return
    model = get_model(params)
    model.eval()
    torch.jit.save(torch.jit.script(model), path)
