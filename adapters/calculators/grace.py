"""GRACE (Bochkarev, Lysogorskiy & Drautz; tensorpotential, on TensorFlow)."""

import os
import tarfile
import tempfile
from pathlib import Path


#: What this family provides beyond make_calculator (the hooks: adapters.calculators).
CAPABILITIES = ("stand_in",)


def _unpack(archive_path: str) -> Path:
    """The SavedModel folder of a GRACE model tarball, unpacked into a fresh scratch folder
    (the weights mount is read-only, and the package's own cache would download)."""
    dest = Path(tempfile.mkdtemp(prefix="grace-"))
    with tarfile.open(archive_path) as archive:
        members = archive.getmembers()
        # Debian's Python 3.11.2 predates tarfile's extraction filters: refuse what they would
        unsafe = [m.name for m in members if not (m.isfile() or m.isdir())
                  or Path(m.name).is_absolute() or ".." in Path(m.name).parts]
        if unsafe:
            raise ValueError(f"{archive_path}: refusing to unpack {unsafe[0]!r}")
        archive.extractall(dest, members=members)
    folders = sorted({path.parent for path in dest.rglob("saved_model.pb")})
    if len(folders) != 1:
        raise ValueError(f"{archive_path}: expected one TensorFlow SavedModel, found {len(folders)}")
    return folders[0]


def make_calculator(device: str, checkpoint: str):
    # tensorpotential first: it picks the Keras that TensorFlow then loads
    from tensorpotential.calculator import TPCalculator
    import tensorflow as tf

    # TensorFlow sizes its thread pools by the machine's cores, not by the worker's share
    threads = int(os.environ.get("OMP_NUM_THREADS", "0"))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    return TPCalculator(model=str(_unpack(checkpoint)))


def make_test_checkpoint(path: str, **options) -> None:
    """A small GRACE-2L for every element, built by tensorpotential's own preset (random weights), exported by
    its own save_model as a SavedModel and packed as the released tarballs are (one top
    folder): the stand-in for the file that cannot be had here. The options to use: none."""
    from ase.data import chemical_symbols
    from tensorpotential.potentials.presets import GRACE_2LAYER_v1_24  # before TensorFlow, as above
    import tensorflow as tf
    from tensorpotential.tpmodel import TPModel

    tf.random.set_seed(0)
    elements = chemical_symbols[1:]  # every element, as a universal model has
    instructions = GRACE_2LAYER_v1_24(element_map={e: i for i, e in enumerate(elements)}, lmax=(2, 2),
                                      n_rad_max=(4, 4), embedding_size=8, n_mlp_dens=4, max_order=2)
    model = TPModel(instructions.get_instructions())
    model.build(tf.float64)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "GRACE-stand-in"
        model.save_model(str(folder), jit_compile=False)
        with tarfile.open(path, "w:gz") as archive:
            archive.add(folder, arcname=folder.name)
