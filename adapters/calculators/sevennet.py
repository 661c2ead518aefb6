"""SevenNet (Park et al., JCTC 2024); 7net-0, 7net-mf-0 and 7net-l3i5 ship inside the wheel.
A multi-fidelity model (7net-mf-ompa) takes the fidelity to predict as `modal`."""


def make_calculator(device: str, model: str = "7net-0", modal: str | None = None, checkpoint: str | None = None):
    from sevenn.calculator import SevenNetCalculator

    # an explicit checkpoint (mounted read-only) wins: sevenn would otherwise download into site-packages
    return SevenNetCalculator(model=checkpoint or model, device=device, modal=modal)
