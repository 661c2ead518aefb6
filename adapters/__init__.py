"""Container side: the relaxation entrypoint and calculator factories.

Imports ase and numpy only; each model package is imported inside its factory.
"""
