"""Box plots in the style of the paper's Figs. 4-6: one figure per metric, one row per
model, one box per dimensionality present (coloured 0D/1D/2D/3D, with a legend).

Boxes span the quartiles, the line is the median, whiskers reach 1.5 IQR, outliers are
small dots. The structures in each distribution are those of metrics.summary (steps:
converged relaxations; errors: successful relaxations). Energy and position axes are
limited to the whiskers, as in the paper's figures, so a few wild outliers do not
squash the boxes; the figure says how many points lie beyond.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from metrics.summary import DIMENSIONS, successful  # noqa: E402

COLOURS = {"0D": "#4C72B0", "1D": "#DD8452", "2D": "#55A868", "3D": "#C44E52"}

#: name -> (column, which rows, axis label, axis scale)
METRICS = {
    "steps": ("steps", "converged", "FIRE steps to converge", "log"),
    "energy_error": ("energy_error_mev_per_atom", "successful", "energy error E_model - E_PBE (meV/atom)", "whiskers"),
    "position_mae": ("position_mae_a", "successful", "position MAE after Kabsch alignment (Å)", "whiskers0"),
}


def _rows(scored: pd.DataFrame, which: str) -> pd.DataFrame:
    if which == "converged":
        return scored[scored["converged"].astype(str).str.lower().isin(["true", "1", "1.0"])]
    return successful(scored)


def box_plot(scored: pd.DataFrame, metric: str, out_dir: Path, title: str | None = None) -> list[Path]:
    """Draw one metric of METRICS; write <out_dir>/<metric>.png and .svg; return both paths."""
    column, which, label, scale = METRICS[metric]
    data = _rows(scored, which)
    models = list(dict.fromkeys(scored["model"].astype(str)))
    present = set(scored["dimension"].astype(str))
    dims = [d for d in DIMENSIONS if d in present] + sorted(present - set(DIMENSIONS))
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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{metric}.png", out_dir / f"{metric}.svg"]
    fig.savefig(paths[0], dpi=150)
    with plt.rc_context({"svg.fonttype": "none"}):  # text stays text: searchable, editable
        fig.savefig(paths[1])
    plt.close(fig)
    return paths


def plot_all(scored: pd.DataFrame, out_dir: Path) -> dict[str, list[Path]]:
    """Every figure of METRICS, keyed by metric name."""
    titles = {"steps": "Steps to converge (converged relaxations)",
              "energy_error": "Energy error (successful relaxations)",
              "position_mae": "Position error (successful relaxations)"}
    return {metric: box_plot(scored, metric, out_dir, titles[metric]) for metric in METRICS}
