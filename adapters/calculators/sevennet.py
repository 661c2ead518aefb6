"""SevenNet (Park et al., JCTC 2024); 7net-0, 7net-mf-0 and 7net-l3i5 ship inside the wheel."""


def make_calculator(device: str, model: str = "7net-0", modal: str | None = None):
    from sevenn.calculator import SevenNetCalculator

    return SevenNetCalculator(model=model, device=device, modal=modal)
