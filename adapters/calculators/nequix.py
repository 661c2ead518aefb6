"""Nequix (Koker, Kotak & Smidt; nequix, on JAX), through its own ASE calculator."""

import os


#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("stand_in",)


def make_calculator(device: str, checkpoint: str):
    """checkpoint: a .nqx file (nequix's JAX format). The JAX backend, as nequix runs by
    default, without the openequivariance kernels (an optional, separately built package).
    JAX is told before it loads: which device (a worker sees only its own GPU), not to take
    most of the GPU's memory at start (workers may share a GPU), and on the CPU to run XLA's
    computations on one thread, as every worker's BLAS does."""
    if device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from nequix.calculator import NequixCalculator

    return NequixCalculator(model_path=checkpoint, backend="jax", use_kernel=False)


def make_test_checkpoint(path: str, **options) -> None:
    """A small Nequix for every element, built by nequix's own constructor (its random
    initialisation) and saved by its own save_model in the .nqx format: the stand-in for a
    file that cannot be had here. The options to use: none."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    from nequix.model import Nequix, save_model

    config = {"atomic_numbers": list(range(1, 90)), "hidden_irreps": "8x0e + 8x1o", "lmax": 1, "cutoff": 5.0,
              "n_layers": 2, "radial_basis_size": 8, "radial_mlp_size": 16, "radial_mlp_layers": 2,
              "radial_polynomial_p": 2.0, "mlp_init_scale": 4.0, "index_weights": True, "layer_norm": False,
              "shift": -3.0, "scale": 1.0, "avg_n_neighbors": 12.0}
    model = Nequix(key=jax.random.key(0), n_species=len(config["atomic_numbers"]),
                   **{k: v for k, v in config.items() if k != "atomic_numbers"})
    save_model(path, model, config)
