"""Container side: the worker contract (wire), the supervisor, the relaxation engines and the
calculator factories.

Imports ase, numpy and scipy only (ASE's own dependencies); each model package is imported
inside its factory (adapters/calculators/<family>.py).
"""
