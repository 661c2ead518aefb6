"""Box plots in the style of the paper's Figs. 4-6: one figure per metric, one row per
model, one box per dimensionality present (coloured 0D/1D/2D/3D, with a legend).

Boxes span the quartiles, the line is the median, whiskers reach 1.5 IQR, outliers are
small dots. The structures in each distribution are those of metrics.summary (steps:
converged relaxations; errors: successful relaxations). Energy and position axes are
limited to the whiskers, as in the paper's figures, so a few wild outliers do not
squash the boxes; the figure says how many points lie beyond.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from metrics.summary import flag, ordered_dimensions, successful  # noqa: E402

COLOURS = {"0D": "#4C72B0", "1D": "#DD8452", "2D": "#55A868", "3D": "#C44E52"}

#: name -> (column, which rows, axis label, axis scale)
METRICS = {
    "steps": ("steps", "converged", "FIRE steps to converge", "log"),
    "energy_error": ("energy_error_mev_per_atom", "successful", "energy error E_model - E_PBE (meV/atom)", "whiskers"),
    "position_mae": ("position_mae_a", "successful", "position MAE after Kabsch alignment (Å)", "whiskers0"),
}


def _rows(scored: pd.DataFrame, which: str) -> pd.DataFrame:
    if which == "converged":
        return scored[flag(scored, "converged")]
    return successful(scored)


def box_plot(scored: pd.DataFrame, metric: str, title: str | None = None):
    """One metric of METRICS as a matplotlib figure."""
    column, which, label, scale = METRICS[metric]
    data = _rows(scored, which)
    models = list(dict.fromkeys(scored["model"].astype(str)))
    dims = ordered_dimensions(scored["dimension"].astype(str))
    width = 0.8 / max(len(dims), 1)
    height = 1.5 + 0.22 * max(len(models) * len(dims), 3)
    fig, ax = plt.subplots(figsize=(8.0, height))
    stats_lo, stats_hi, values_all = [], [], []
    for j, dim in enumerate(dims):
        positions, series = [], []
        for i, model in enumerate(models):
            v = data.loc[(data["model"].astype(str) == model) & (data["dimension"].astype(str) == dim), column]
            v = v.dropna().to_numpy(dtype=float)
            if len(v):
                # the first dimensionality on top within a model's band
                positions.append(i + (len(dims) - 1) / 2 * width - j * width)
                series.append(v)
                values_all.append(v)
        if not series:
            continue
        parts = ax.boxplot(series, positions=positions, widths=width * 0.85, orientation="horizontal",
                           patch_artist=True, manage_ticks=False,
                           flierprops=dict(marker=".", markersize=2, markerfacecolor="black", markeredgecolor="none"),
                           medianprops=dict(color="black", linewidth=1.2))
        for box in parts["boxes"]:
            box.set(facecolor=COLOURS.get(dim, "#8c8c8c"), alpha=0.75, edgecolor="black", linewidth=0.8)
        for whisker in parts["whiskers"]:
            x = whisker.get_xdata()
            stats_lo.append(min(x))
            stats_hi.append(max(x))
    ax.set_yticks(range(len(models)), models)
    ax.set_ylim(len(models) - 0.5, -0.5)  # first model on top
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or f"{metric.replace('_', ' ')} per model and dimensionality", fontsize=11)
    note = None
    if not values_all:
        ax.text(0.5, 0.5, "no structures to show", transform=ax.transAxes, ha="center", va="center")
    elif scale == "log":
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)
    else:
        lo, hi = min(stats_lo), max(stats_hi)
        if scale == "whiskers0":
            lo = 0.0
        pad = 0.05 * (hi - lo) or 0.05 * max(abs(hi), 1e-3)
        ax.set_xlim(lo - (0 if scale == "whiskers0" else pad), hi + pad)
        everything = np.concatenate(values_all)
        beyond = int(((everything < lo - pad) | (everything > hi + pad)).sum())
        if beyond:
            note = f"{beyond} of {len(everything)} points beyond the axis are not shown"
    if scale == "whiskers" and values_all:
        ax.axvline(0.0, color="grey", linewidth=0.8)
    handles = [Patch(facecolor=COLOURS.get(d, "#8c8c8c"), alpha=0.75, edgecolor="black", label=d) for d in dims]
    if handles:
        ax.legend(handles=handles, title="dimensionality", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False)
    if note:
        fig.text(0.01, 0.005, note, fontsize=8, color="dimgrey", va="bottom")
    fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))
    return fig


def plot_all(scored: pd.DataFrame) -> dict:
    """Every figure of METRICS, keyed by metric name."""
    titles = {"steps": "Steps to converge (converged relaxations)",
              "energy_error": "Energy error (successful relaxations)",
              "position_mae": "Position error (successful relaxations)"}
    return {metric: box_plot(scored, metric, titles[metric]) for metric in METRICS}


OUTCOME_COLOURS = {"match": "#55A868", "decrease": "#C44E52", "increase": "#4C72B0", "changed": "#8C8C8C"}


def symmetry_bars(table: pd.DataFrame):
    """metrics.summary.symmetry as stacked horizontal bars: per (model, dimensionality),
    the fractions that match, decrease, increase or change; one panel per tolerance.
    None when no structure has a group (a run of 0D and 1D only)."""
    table = table[table["n"] > 0]
    if table.empty:
        return None
    precisions = list(dict.fromkeys(table["symprec"]))
    labels = list(dict.fromkeys(f"{m} {d}" for m, d in zip(table["model"], table["dimension"])))
    fig, axes = plt.subplots(1, len(precisions), figsize=(4.2 * len(precisions) + 1.5, 1.6 + 0.35 * len(labels)),
                             squeeze=False, sharey=True)
    for ax, symprec in zip(axes[0], precisions):
        rows = table[table["symprec"] == symprec]
        rows = rows.set_index(rows["model"] + " " + rows["dimension"])
        left = np.zeros(len(labels))
        for outcome, colour in OUTCOME_COLOURS.items():
            values = np.array([rows[outcome].get(label, 0.0) for label in labels], dtype=float) * 100
            ax.barh(labels, values, left=left, color=colour, label=outcome)
            left += values
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of successful relaxations")
        ax.set_title(f"symprec {symprec:g} Å", fontsize=10)
    axes[0, 0].invert_yaxis()  # the axes share y: the first model on top
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, frameon=False, fontsize=8, ncol=len(OUTCOME_COLOURS), loc="lower center")
    fig.suptitle("Symmetry of the relaxed vs the PBE structure (3D: space group, 2D: layer group)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def coordination_lines(table: pd.DataFrame):
    """metrics.summary.coordination as three panels (failed share, energy MAE, median
    position MAE) against the PBE structures' mean coordination, every dimensionality on
    one axis, a line per model; the points are labelled with the dimensionalities they
    hold. None when no structure has a coordination number."""
    from metrics.summary import COORDINATION_BINS

    if table.empty:
        return None
    order = [label for _, label in COORDINATION_BINS if label in set(table["coordination_bin"].astype(str))]
    panels = (("failed_share", "failed (share of finished)"), ("energy_mae_mev", "energy MAE (meV/atom)"),
              ("position_mae_median_a", "position MAE, median (Å)"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels):
        for model in dict.fromkeys(table["model"].astype(str)):
            rows = table[table["model"].astype(str) == model].set_index("coordination_bin")
            values = [float(rows[column].get(label, np.nan)) for label in order]
            ax.plot(range(len(order)), values, marker="o", label=model)
        ax.set_xticks(range(len(order)), order)
        ax.set_xlabel("mean coordination number of the PBE structure")
        ax.set_title(title, fontsize=10)
        if column != "failed_share":
            ax.set_yscale("symlog", linthresh=1.0 if column == "energy_mae_mev" else 0.01)
    spans = table.drop_duplicates("coordination_bin").set_index("coordination_bin")["dimensions"]
    axes[0, 0].set_xticks(range(len(order)), [f"{label}\n{spans.get(label, '')}" for label in order], fontsize=8)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, frameon=False, fontsize=8, ncol=min(len(names), 6), loc="lower center")
    fig.suptitle("Errors and failures against coordination (all dimensionalities on one axis)", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


# ---- periodic tables and the dataset's figures ------------------------------------------

def ptable_position(z: int) -> tuple[int, int]:
    """(row, column) of element z in the usual 18-column periodic table; lanthanides and
    actinides on rows 8 and 9, below a gap."""
    if z <= 2:
        return 0, 0 if z == 1 else 17
    for period, (first, last) in enumerate(((3, 10), (11, 18)), start=1):
        if first <= z <= last:
            return period, z - first if z - first < 2 else z - first + 10
    for period, first in ((3, 19), (4, 37)):
        if first <= z <= first + 17:
            return period, z - first
    for period, first in ((5, 55), (6, 87)):
        if z > first + 31:
            continue
        if z < first + 2:
            return period, z - first
        if z < first + 17:
            return period + 3, z - first  # the f block: columns 2..16
        return period, z - first - 14
    raise ValueError(f"no element {z}")


def periodic_table(ax, values: dict[str, float], label: str, cmap: str = "viridis", norm=None) -> None:
    """A heat map of `values` (by element symbol) on a periodic table in `ax`; elements
    without a value are light grey."""
    from ase.data import chemical_symbols
    from matplotlib import colors as mcolors
    from matplotlib.patches import Rectangle

    finite = [v for v in values.values() if np.isfinite(v)]
    norm = norm or mcolors.Normalize(min(finite, default=0.0), max(finite, default=1.0))
    colormap = plt.get_cmap(cmap)
    for z in range(1, 104):
        symbol = chemical_symbols[z]
        row, col = ptable_position(z)
        value = values.get(symbol)
        face = colormap(norm(value)) if value is not None and np.isfinite(value) else "#eeeeee"
        ax.add_patch(Rectangle((col, row), 0.92, 0.92, facecolor=face, edgecolor="white"))
        dark = value is not None and np.isfinite(value) and np.mean(mcolors.to_rgb(face)) < 0.5
        ax.text(col + 0.46, row + 0.5, symbol, ha="center", va="center", fontsize=6,
                color="white" if dark else "black")
    ax.set_xlim(0, 18)
    ax.set_ylim(10, 0)
    ax.set_aspect("equal")
    ax.axis("off")
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=colormap)
    ax.figure.colorbar(mappable, ax=ax, orientation="horizontal", fraction=0.05, pad=0.02, label=label)


def dataset_elements(counts: pd.DataFrame):
    """The figure dataset_elements: the fraction of structures containing each element, one
    periodic table per dimensionality (metrics.dataset.element_counts), on a common linear
    colour scale, as the paper's Fig. 2."""
    from matplotlib import colors as mcolors

    dims = ordered_dimensions(counts["dimension"])
    fig, axes = plt.subplots(len(dims), 1, figsize=(7.5, 3.6 * len(dims)), squeeze=False)
    top = float(counts["fraction"].max()) if len(counts) else 1.0
    for ax, dim in zip(axes[:, 0], dims):
        group = counts[counts["dimension"] == dim]
        periodic_table(ax, dict(zip(group["element"], group["fraction"].astype(float))), "fraction of structures",
                       norm=mcolors.Normalize(0.0, top))
        ax.set_title(f"{dim}: fraction of structures containing each element", fontsize=10)
    fig.tight_layout()
    return fig


def dataset_distributions(table: pd.DataFrame, distances: dict[str, np.ndarray]):
    """The figure dataset_distributions: atoms per cell, interatomic distances below 7 Å and
    PBE energy per atom, one curve per dimensionality (metrics.dataset)."""
    dims = ordered_dimensions(table["dimension"])
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.4))
    top = int(table["natoms"].max()) if len(table) else 1
    for dim in dims:
        colour = COLOURS.get(dim, "#8c8c8c")
        group = table[table["dimension"] == dim]
        axes[0].hist(group["natoms"], bins=np.arange(0.5, top + 1.5), histtype="step", color=colour, label=dim)
        if len(distances.get(dim, [])):
            axes[1].hist(distances[dim], bins=140, range=(0, 7), density=True, histtype="step", color=colour)
        axes[2].hist(group["energy_per_atom_ev"], bins=60, histtype="step", color=colour)
    for ax, label in zip(axes, ("atoms per cell", "interatomic distance (Å)", "PBE energy (eV/atom)")):
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("structures")
    axes[1].set_ylabel("density")
    axes[0].legend(title="dimensionality", frameon=False)
    fig.tight_layout()
    return fig


def energy_by_element(by_element: pd.DataFrame, model: str):
    """The figure energy_by_element_<model> (figure_name): the model's energy MAE (meV/atom, successful
    relaxations containing the element) on a periodic table per dimensionality, on a
    common colour scale up to the 95th percentile."""
    from matplotlib import colors as mcolors

    mine = by_element[by_element["model"] == model]
    dims = ordered_dimensions(mine["dimension"])
    fig, axes = plt.subplots(len(dims), 1, figsize=(7.5, 3.6 * len(dims)), squeeze=False)
    top = float(np.nanpercentile(mine["mae"], 95)) if len(mine) else 1.0
    for ax, dim in zip(axes[:, 0], dims):
        group = mine[mine["dimension"] == dim]
        periodic_table(ax, dict(zip(group["element"], group["mae"])), "energy MAE (meV/atom)", cmap="magma_r",
                       norm=mcolors.Normalize(0.0, max(top, 1e-3)))
        ax.set_title(f"{model}, {dim}: energy MAE per element", fontsize=10)
    fig.tight_layout()
    return fig


def element_figure_name(model: str) -> str:
    """The file name (no suffix) of a model's energy_by_element figure."""
    return "energy_by_element_" + "".join(c if c.isalnum() or c in "-." else "_" for c in model)
