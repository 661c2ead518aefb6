"""CHGNet (Deng et al., Nat. Mach. Intell. 2023); weights ship inside the wheel."""


def make_calculator(device: str, model: str = "0.3.0"):
    from chgnet.model import CHGNet, CHGNetCalculator

    return CHGNetCalculator(CHGNet.load(model_name=model), use_device=device)
