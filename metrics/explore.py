"""The report to explore in a browser: one self-contained, offline HTML file per run
(report/explore.html) and one over every run (results/explore.html).

Everything is inline (plotly.js, the data, a few lines of our own script): no CDN, no
server; the page opens from disk. The static report (report.md/.html, PNG and SVG) stays
for papers; this one is for looking:

- the box plots of Figs. 4-6 with each point's structure id and formula on hover (every
  point drawn where a box has at most BOX_POINTS of them, else the outliers only, so a
  40,000-structure run stays a page and not a hundred megabytes);
- the energy error per element on periodic tables, one per model;
- the summary, failure, symmetry and speed tables, sortable by a click on a header;
- a failure gallery: per model x dimensionality the GALLERY_CASES worst structures of each
  failure reason (and the largest position errors among successes), each with its numbers,
  and one 3-D viewer, PBE beside relaxed, that a click on a case fills. One viewer for
  all cases: a browser holds only about sixteen WebGL contexts at once.
"""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd

from metrics import geometry, summary
from metrics.labels import labelled
from metrics.plots import COLOURS, ptable_position
from metrics.report import BEYOND, formatted

#: Above this many points in one box, only its outliers are drawn (each with its id).
BOX_POINTS = 2_000
#: Cases per (model, dimensionality, reason) in the failure gallery.
GALLERY_CASES = 3
#: Hard cases (failed by every model, or all but one) whose results join the gallery.
HARD_CASES = 10
#: Per reason, the number that made it fail, largest first (the gallery's order).
SEVERITY = {"fragmented_thickness": "extent_a", "fragmented_width": "extent_a", "fragmented_diameter": "extent_a",
            "diverged": "max_force_ev_per_a", "not_converged": "max_force_ev_per_a", "model_error": "natoms",
            "largest_position_error": "position_mae_a"}
#: The numbers shown beside each case.
CASE_COLUMNS = ["model", "dimension", "reason", "id", "formula", "natoms", "steps", "energy_error_mev_per_atom",
                "position_mae_a", "extent_a", "extent_ref_a", "max_force_ev_per_a", "symmetry", "error"]
BOXES = {"steps": ("steps", "FIRE steps to converge (converged relaxations)", "log"),
         "energy_error": ("energy_error_mev_per_atom", "Energy error E_model - E_PBE (meV/atom, successful)", "linear"),
         "position_mae": ("position_mae_a", "Position MAE after Kabsch alignment (Å, successful)", "linear")}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 76em; padding: 0 1em; color: #222; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.8em; }
th, td { padding: 0.2em 0.35em; border-bottom: 1px solid #ddd; text-align: right; }
td { white-space: nowrap; max-width: 22em; overflow-wrap: anywhere; }
td.text { white-space: normal; }
th { background: #f4f4f4; cursor: pointer; user-select: none; vertical-align: bottom; min-width: 3.5em; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
td:first-child, th:first-child { text-align: left; }
tr.selected td { background: #fff3c4; }
.viewer { width: 100%; height: 460px; }
.figure { width: 100%; }
.controls label { margin-right: 1.2em; }
button { font-size: 0.9em; }
"""

#: Click a header to sort its table (numbers as numbers, the rest as text); filters hide rows.
SCRIPT = """
function sortTable(th) {
  const table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
  const asc = !th.classList.contains('sorted-asc');
  table.querySelectorAll('th').forEach(h => h.classList.remove('sorted-asc', 'sorted-desc'));
  th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
  const key = r => { const t = r.cells[col].innerText.trim(), n = parseFloat(t.replace(/,/g, ''));
                     return isNaN(n) || !/^[-+]?[0-9.,]+(e[-+]?[0-9]+)?%?$/i.test(t) ? t : n; };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b);
    if (typeof x === typeof y) return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    return (typeof x === 'number' ? -1 : 1);  // numbers before text (dashes, blanks)
  });
  rows.forEach(r => body.appendChild(r));
}
document.addEventListener('click', e => { if (e.target.matches('table.sortable th')) sortTable(e.target); });
"""


def plotly_js() -> str:
    """plotly.js itself, to inline once per page."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def sortable_table(table: pd.DataFrame, table_id: str = "", links: dict[str, str] | None = None,
                   raw: tuple[str, ...] = (), name: str = "") -> str:
    """A table whose columns sort on a click, headed by metrics.labels (`name`: the table,
    for its unit). `links`: column -> the column holding each cell's link target (not shown
    itself); `raw`: columns whose cells are HTML already. Rows carry their dimension, group
    and dataset as data attributes, for filters."""
    links = links or {}
    shown = [c for c in table.columns if c not in links.values()]
    cells = formatted(table.drop(columns=list(raw)))
    head = "".join(f"<th>{html.escape(text)}</th>" for text in labelled(shown, name))
    wraps = {c for c in cells.columns if len(cells) and cells[c].str.len().max() > 14}  # long text: wrap to fit
    rows = []
    for k in range(len(table)):
        tds = []
        for c in shown:
            text = str(table[c].iloc[k]) if c in raw else html.escape(cells[c].iloc[k])
            if c in links and str(table[links[c]].iloc[k]):
                text = f"<a href=\"{html.escape(str(table[links[c]].iloc[k]))}\">{text}</a>"
            tds.append(f"<td class=\"text\">{text}</td>" if c in wraps else f"<td>{text}</td>")
        data = "".join(f" data-{c}=\"{html.escape(str(table[c].iloc[k]))}\"" for c in ("dimension", "group", "dataset")
                       if c in table)
        rows.append(f"<tr{data}>{''.join(tds)}</tr>")
    ident = f" id=\"{table_id}\"" if table_id else ""
    return (f"<div class=\"scroll\"><table class=\"sortable\"{ident}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _figure_html(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"responsive": True, "displaylogo": False})


def box_figure(scored: pd.DataFrame, metric: str, formulas: dict[str, str]):
    """One of BOXES as a plotly figure: a box per (model, dimensionality), its points'
    hover text the structure id and formula."""
    import plotly.graph_objects as go

    column, title, scale = BOXES[metric]
    rows = scored[summary.flag(scored, "converged")] if metric == "steps" else summary.successful(scored)
    models = list(dict.fromkeys(scored["model"].astype(str)))
    fig = go.Figure()
    for dim in summary.ordered_dimensions(scored["dimension"].astype(str)):
        part = rows[rows["dimension"].astype(str) == dim]
        values = pd.to_numeric(part[column], errors="coerce")
        part, values = part[values.notna()], values[values.notna()]
        if scale == "log":
            part, values = part[values > 0], values[values > 0]
        if part.empty:
            continue
        per_box = part.groupby(part["model"].astype(str)).size()
        ids = part["id"].astype(str)
        fig.add_trace(go.Box(
            x=part["model"].astype(str), y=values, name=dim, offsetgroup=dim, legendgroup=dim,
            marker={"color": COLOURS.get(dim, "#777777"), "size": 3},
            boxpoints="all" if per_box.max() <= BOX_POINTS else "outliers", jitter=0.4, pointpos=0,
            text=[f"{sid} {formulas.get(sid, '')}" for sid in ids],
            hovertemplate="%{text}<br>%{y}<extra>%{x} " + dim + "</extra>"))
    fig.update_layout(title=title, boxmode="group", height=420, margin={"l": 60, "r": 20, "t": 50, "b": 60},
                      legend_title_text="dimensionality", xaxis={"categoryorder": "array", "categoryarray": models})
    if scale == "log":
        fig.update_yaxes(type="log")
    return fig


def element_figure(by_element: pd.DataFrame, model: str):
    """The model's energy MAE per element (successful relaxations containing it) on a
    periodic table per dimensionality, hover: element, MAE, mean, n."""
    import plotly.graph_objects as go
    from ase.data import atomic_numbers, chemical_symbols
    from plotly.subplots import make_subplots

    mine = by_element[by_element["model"].astype(str) == model]
    dims = summary.ordered_dimensions(mine["dimension"].astype(str))
    fig = make_subplots(rows=len(dims), cols=1, subplot_titles=[f"{model}, {d}" for d in dims],
                        vertical_spacing=0.08)
    top = float(np.nanpercentile(mine["mae"], 95)) if len(mine) else 1.0
    skeleton = np.full((10, 18), np.nan)
    symbols = np.full((10, 18), "", dtype=object)
    for z_number, symbol in enumerate(chemical_symbols[1:104], start=1):
        r, c = ptable_position(z_number)
        skeleton[r, c], symbols[r, c] = 0.0, symbol
    for k, dim in enumerate(dims, start=1):
        # every element in grey beneath, so the table reads as a periodic table
        fig.add_trace(go.Heatmap(z=skeleton, text=symbols, texttemplate="%{text}", hoverinfo="skip", showscale=False,
                                 colorscale=[[0, "#eeeeee"], [1, "#eeeeee"]], textfont={"color": "#aaaaaa"},
                                 xgap=2, ygap=2), row=k, col=1)
        z = np.full((10, 18), np.nan)
        text = np.full((10, 18), "", dtype=object)
        hover = np.full((10, 18), "", dtype=object)
        for row in mine[mine["dimension"].astype(str) == dim].itertuples(index=False):
            r, c = ptable_position(atomic_numbers[row.element])
            z[r, c], text[r, c] = row.mae, row.element
            hover[r, c] = f"{row.element}: MAE {row.mae:.1f}, mean {row.mean:+.1f} meV/atom, n = {row.n}"
        fig.add_trace(go.Heatmap(z=z, text=text, texttemplate="%{text}", customdata=hover,
                                 hovertemplate="%{customdata}<extra></extra>", colorscale="Magma", reversescale=True,
                                 zmin=0, zmax=max(top, 1e-3), xgap=2, ygap=2, showscale=k == 1,
                                 colorbar={"title": {"text": "MAE meV/atom"}}), row=k, col=1)
        fig.update_yaxes(autorange="reversed", showticklabels=False, showgrid=False, row=k, col=1)
        fig.update_xaxes(showticklabels=False, showgrid=False, row=k, col=1)
    fig.update_layout(height=300 * max(len(dims), 1) + 40, margin={"l": 20, "r": 20, "t": 40, "b": 20},
                      plot_bgcolor="white")
    return fig


def gallery_cases(scored: pd.DataFrame, formulas: dict[str, str], per_reason: int = GALLERY_CASES) -> pd.DataFrame:
    """Per (model, dimensionality): the `per_reason` worst structures of each failure
    reason (by SEVERITY) and the largest position errors among the successful ones; then
    every model's result for the HARD_CASES first hard cases (metrics.summary.hard_cases)."""
    reasons = scored["failure_reason"].fillna("").astype(str)
    labelled = scored.assign(reason=np.where(reasons == "", "largest_position_error", reasons))
    hard = labelled[labelled["id"].astype(str).isin(summary.hard_cases(scored)["id"].head(HARD_CASES))]
    labelled = labelled[labelled["reason"].isin(SEVERITY)]
    picked = []
    for (_, _, reason), group in labelled.groupby(["model", "dimension", "reason"], sort=False):
        order = pd.to_numeric(group[SEVERITY[reason]], errors="coerce").fillna(-np.inf)
        picked.append(group.loc[order.sort_values(ascending=False, kind="stable").index[:per_reason]])
    picked.append(hard.assign(reason=[f"hard case: {r}" for r in hard["reason"]]))
    cases = pd.concat(picked, ignore_index=True)
    cases = cases.assign(formula=[formulas.get(sid, "") for sid in cases["id"].astype(str)])
    for column in CASE_COLUMNS:
        if column not in cases:
            cases[column] = np.nan
    return cases[CASE_COLUMNS].reset_index(drop=True)


#: The viewer's scene: the atoms and this much room around them (Å), whatever the cell.
VIEW_MARGIN_A = 1.5
#: Pixels per Å at which an atom's sphere is drawn, for a scene VIEW_PIXELS wide.
VIEW_PIXELS = 420


def _atoms_traces(atoms, scene: str, name: str, span: float) -> list:
    """Atoms as spheres coloured by element (Jmol colours) and sized by covalent radius in
    a scene `span` Å wide, their bonds (geometry.bonded, as for the fragments, between the
    atoms as drawn), and the cell's edges, faint."""
    import plotly.graph_objects as go
    from ase.data import covalent_radii
    from ase.data.colors import jmol_colors

    pos = atoms.positions
    colours = [f"rgb({int(r * 255)},{int(g * 255)},{int(b * 255)})" for r, g, b in jmol_colors[atoms.numbers]]
    symbols = atoms.get_chemical_symbols()
    size = np.clip(2 * 0.5 * covalent_radii[atoms.numbers] / span * VIEW_PIXELS, 4, 60)  # half the covalent sphere
    atoms_trace = go.Scatter3d(
        x=pos[:, 0], y=pos[:, 1], z=pos[:, 2], mode="markers", scene=scene, name=name, showlegend=False,
        marker={"size": size, "color": colours, "line": {"width": 0}, "opacity": 1},
        text=[f"{s}{i}" for i, s in enumerate(symbols)], hovertemplate="%{text}<br>%{x:.3f} %{y:.3f} %{z:.3f} Å"
                                                                         "<extra>" + name + "</extra>")
    first, second = np.nonzero(np.triu(geometry.bonded(atoms.numbers, pos, atoms.cell.array, "", unwrap=False)))
    bonds = [_segments([(pos[i], pos[j]) for i, j in zip(first, second)]), "#555555", 3]
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float) @ atoms.cell.array
    edges = [(0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 3), (2, 6), (3, 7), (4, 5), (4, 6), (5, 7), (6, 7)]
    cell = [_segments([(corners[a], corners[b]) for a, b in edges]), "rgba(150,150,150,0.35)", 1]
    lines = [go.Scatter3d(x=xs, y=ys, z=zs, mode="lines", scene=scene, showlegend=False, hoverinfo="skip",
                          line={"color": colour, "width": width}) for (xs, ys, zs), colour, width in (bonds, cell)]
    return [atoms_trace, *lines]


def _segments(pairs) -> tuple[list, list, list]:
    """x, y, z of line segments for one Scatter3d trace (None between segments)."""
    xs, ys, zs = [], [], []
    for start, end in pairs:
        for axis, out in enumerate((xs, ys, zs)):
            out += [float(start[axis]), float(end[axis]), None]
    return xs, ys, zs


def _fitted_scene(positions: np.ndarray) -> tuple[dict, float]:
    """A scene whose axes span the atoms and VIEW_MARGIN_A around them (the camera fits the
    structure, not its cell, which for a molecule is mostly vacuum), and that span."""
    low, high = positions.min(axis=0) - VIEW_MARGIN_A, positions.max(axis=0) + VIEW_MARGIN_A
    centre, span = (low + high) / 2, float((high - low).max())
    hidden = {"showbackground": False, "showgrid": False, "zeroline": False, "showticklabels": False, "title": "",
              "showspikes": False}
    axes = {f"{axis}axis": {**hidden, "range": [centre[k] - span / 2, centre[k] + span / 2]}
            for k, axis in enumerate("xyz")}
    camera = {"eye": {"x": 0.95, "y": 0.95, "z": 0.75}}  # closer than plotly's default: the atoms fill the scene
    return {"aspectmode": "cube", "camera": camera, **axes}, span


def viewer_figure(reference, relaxed, model: str):
    """The PBE structure beside the relaxed one (None: the relaxation left none), each in
    a 3-D scene to rotate, fitted to its atoms. The PBE structure is drawn contiguous across
    the vacuum and the relaxed one followed from it (geometry.follow), as the metrics see
    them: a molecule cut by the cell boundary is whole, a fragment that drifted away is
    where it went."""
    from plotly.subplots import make_subplots

    axes = geometry.periodic_axes(reference)
    reference = reference.copy()
    if relaxed is not None and len(relaxed) == len(reference):
        relaxed = relaxed.copy()
        relaxed.positions, reference.positions, _ = geometry.follow(relaxed.positions, relaxed.cell.array,
                                                                    reference.positions, reference.cell.array, axes)
    else:
        reference.positions = geometry.unwrap_vacuum(reference.positions, reference.cell.array, axes)
    titles = ["PBE", f"relaxed by {model}" if relaxed is not None else f"{model}: no relaxed structure"]
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "scene"}]], subplot_titles=titles,
                        horizontal_spacing=0.02)
    scenes = {}
    for col, (scene, atoms, name) in enumerate((("scene", reference, "PBE"), ("scene2", relaxed, model)), start=1):
        if atoms is None:
            continue
        scenes[scene], span = _fitted_scene(atoms.positions)
        for trace in _atoms_traces(atoms, scene, name, span):
            fig.add_trace(trace, row=1, col=col)
    fig.update_layout(**scenes, height=460, margin={"l": 0, "r": 0, "t": 30, "b": 0})
    return fig


def gallery_html(cases: pd.DataFrame, reference: dict, relaxed: dict) -> str:
    """The gallery's table of cases and its one viewer; each case's figure is kept as
    JSON and drawn in the viewer when its row is clicked (the first case at load)."""
    if cases.empty:
        return "<p>No structure to show.</p>"
    figures = {}
    for k, case in enumerate(cases.itertuples(index=False)):
        ref = reference.get(str(case.id))
        if ref is not None:
            figures[k] = json.loads(viewer_figure(ref, relaxed.get((str(case.model), str(case.id))),
                                                  str(case.model)).to_json())
    buttons = [f"<button data-case=\"{k}\">view</button>" if k in figures else "" for k in range(len(cases))]
    table = sortable_table(cases.assign(case=buttons)[["case", *cases.columns]], "gallery-cases", raw=("case",))
    payload = json.dumps(figures, separators=(",", ":")).replace("</", "<\\/")
    return f"""<div id="gallery-viewer" class="viewer"></div>
<p id="gallery-caption"></p>
{table}
<script>
const galleryFigures = {payload};
function showCase(k) {{
  const fig = galleryFigures[k];
  if (!fig) return;
  Plotly.react('gallery-viewer', fig.data, fig.layout, {{responsive: true, displaylogo: false}});
  document.querySelectorAll('#gallery-cases tr').forEach(r => r.classList.remove('selected'));
  const button = document.querySelector('button[data-case="' + k + '"]');
  const row = button.closest('tr');
  row.classList.add('selected');
  document.getElementById('gallery-caption').innerText = Array.from(row.closest('table').tHead.rows[0].cells)
    .slice(1).map((h, i) => h.innerText + ': ' + row.cells[i + 1].innerText).join(' · ');
}}
document.addEventListener('click', e => {{ if (e.target.matches('button[data-case]')) showCase(e.target.dataset.case); }});
showCase(Object.keys(galleryFigures)[0]);
</script>"""


def page(title: str, body: list[str]) -> str:
    """A whole page: plotly.js, the style and the sorting script inline."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{plotly_js()}</script><script>{SCRIPT}</script></head>"
            f"<body><h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n")


def run_page(run_name: str, scored: pd.DataFrame, named: dict[str, pd.DataFrame], reference: dict,
             relaxed: dict) -> str:
    """explore.html of one run. named: the report's tables (metrics.report.run_report_tables);
    reference: PBE Atoms by id; relaxed: relaxed Atoms by (model, id), of the gallery's
    cases at least."""
    formulas = {sid: atoms.get_chemical_formula() for sid, atoms in reference.items()}
    body = [f"<p>Run <b>{html.escape(run_name)}</b>: {scored['id'].nunique():,} structures, "
            f"{scored['model'].nunique()} model(s). Tables sort on a click; figures zoom, pan and tell a "
            "point's structure on hover. The static report (report.html) has the same numbers for papers.</p>"]
    for heading, name in (("Summary", "summary"), ("Failures (Table II)", "failures"), ("Symmetry kept", "symmetry"),
                          ("Speed card", "speed")):
        if name in named:
            body += [f"<h2>{heading}</h2>", sortable_table(named[name], f"table-{name}", name=name)]
    body.append("<h2>Figures</h2>")
    for metric in BOXES:
        body.append(f"<div class=\"figure\">{_figure_html(box_figure(scored, metric, formulas), f'box-{metric}')}</div>")
    by_element = named.get("energy_by_element", pd.DataFrame())
    if len(by_element):
        body.append("<h2>Energy error per element</h2>")
        for k, model in enumerate(dict.fromkeys(by_element["model"].astype(str))):
            body.append(f"<div class=\"figure\">{_figure_html(element_figure(by_element, model), f'elements-{k}')}"
                        "</div>")
    body += ["<h2 id=\"gallery\">Failure gallery</h2>",
             f"<p>Per model and dimensionality, the {GALLERY_CASES} worst structures of each failure reason (the "
             "largest extent, force or size) and the largest position errors among the successful relaxations. "
             "Click a case to see the PBE structure beside the relaxed one; drag to rotate.</p>",
             gallery_html(gallery_cases(scored, formulas), reference, relaxed)]
    return page(f"0123D benchmark: {run_name} (explore)", body)


def leaderboard_page(table: pd.DataFrame, reports: dict[str, str], beyond: dict[str, pd.DataFrame] | None = None
                     ) -> str:
    """results/explore.html: every (run, model, dimensionality) of the leaderboard table
    (metrics.report.leaderboard) in one sortable table, filtered by dimensionality, model
    group and dataset; each run linking to its explore.html (`reports`: run -> path); then
    the views beyond the paper (metrics.report.beyond_the_paper), a hard case linking to its
    run's failure gallery."""
    view = table.copy()
    view["report"] = view["run"].map(reports).fillna("")
    columns = ["dimension", "model", "group", "run", "dataset", "structures", "failed", "failed_pct", "paper_failed",
               "energy_mae_mev", "position_mae_median_a", "symmetry_match", "median_steps", "us_per_atom_step",
               "projected_h", "devices", "engine", "report"]
    view = view[[c for c in columns if c in view]]
    filters = []
    for key, label in (("dimension", "dimensionality"), ("group", "model group"), ("dataset", "dataset")):
        values = sorted(set(view[key].astype(str))) if key in view else []
        options = "".join(f"<option>{html.escape(v)}</option>" for v in values)
        filters.append(f"<label>{label} <select data-filter=\"{key}\"><option value=\"\">all</option>{options}"
                       "</select></label>")
    body = [f"<p>{view['run'].nunique()} finished run(s). Sort by a click on a header; filter below. "
            "A run links to its report to explore.</p>",
            f"<p class=\"controls\">{''.join(filters)} <span id=\"shown\"></span></p>",
            sortable_table(view, "leaderboard", links={"run": "report"}),
            """<script>
function applyFilters() {
  const wanted = {};
  document.querySelectorAll('select[data-filter]').forEach(s => { if (s.value) wanted[s.dataset.filter] = s.value; });
  let shown = 0;
  document.querySelectorAll('#leaderboard tbody tr').forEach(r => {
    const keep = Object.entries(wanted).every(([k, v]) => r.dataset[k] === v);
    r.style.display = keep ? '' : 'none'; shown += keep;
  });
  document.getElementById('shown').innerText = shown + ' row(s)';
}
document.querySelectorAll('select[data-filter]').forEach(s => s.addEventListener('change', applyFilters));
applyFilters();
</script>"""]
    for name, frame in (beyond or {}).items():
        heading, caption = BEYOND[name]
        links = {"id": "gallery"} if name == "hard_cases" else None
        body += [f"<h2>{html.escape(heading)}</h2><p>{html.escape(caption)}</p>",
                 sortable_table(frame, f"leaderboard-{name}", links=links, name=name) if len(frame) else "<p>none</p>"]
    return page("0123D leaderboard (explore)", body)
