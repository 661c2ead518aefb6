"""The paper's own numbers, to put beside a run: Table II of Benedini et al.

data/benedini2025_table2.csv holds the failed relaxations per uMLIP (paper tag) and
dimensionality, of 10,000 structures each, and the folder of images/ that runs the same
uMLIP here. A run's model matches a row by that folder name or by the tag (any case).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

TABLE_II = Path(__file__).resolve().parent / "data" / "benedini2025_table2.csv"
#: The paper's counts are over this many structures per dimensionality.
PAPER_STRUCTURES = 10_000
#: The registry name of the paper's dataset (benchmark.yaml).
PAPER_DATASET = "0123d"


@lru_cache(maxsize=1)
def _wide() -> pd.DataFrame:
    return pd.read_csv(TABLE_II, comment="#", dtype={"tag": str, "model": str})


def table_ii() -> pd.DataFrame:
    """Long form: tag, model, dimension, failed (of PAPER_STRUCTURES)."""
    return _wide().melt(id_vars=["tag", "model"], var_name="dimension", value_name="failed")


def paper_tag(model: str) -> str | None:
    """The paper's tag of a model folder (or of a tag given as a name), else None."""
    wide = _wide()
    for tag, folder in zip(wide["tag"], wide["model"]):
        if model.lower() in (tag.lower(), folder.lower()):
            return tag
    return None


def beside_paper(failures: pd.DataFrame) -> pd.DataFrame:
    """This run's failures (metrics.summary.failures) next to Table II, for the models
    of the run that the paper has: model, tag, dimension, structures, failed, failed_pct,
    paper_failed, paper_failed_pct (over PAPER_STRUCTURES), complete (every structure has a
    result: no `timeout`, no `missing`; only then are the two comparable)."""
    columns = ["model", "tag", "dimension", "structures", "failed", "failed_pct", "paper_failed", "paper_failed_pct",
               "complete"]
    paper = table_ii().set_index(["tag", "dimension"])["failed"]
    rows = []
    for row in failures.itertuples(index=False):
        tag = paper_tag(str(row.model))
        if tag is None or (tag, row.dimension) not in paper.index:
            continue
        paper_failed = int(paper.loc[(tag, row.dimension)])
        rows.append({"model": row.model, "tag": tag, "dimension": row.dimension, "structures": row.structures,
                     "failed": row.failed, "failed_pct": row.failed_pct, "paper_failed": paper_failed,
                     "paper_failed_pct": 100.0 * paper_failed / PAPER_STRUCTURES,
                     "complete": bool(getattr(row, "complete", True))})
    return pd.DataFrame(rows, columns=columns)
