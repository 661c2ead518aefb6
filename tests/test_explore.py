"""The report to explore (metrics.explore, report/explore.html, results/explore.html): its
parts on their own, then both pages in a real browser (headless Chromium): they load with no
console error, every figure draws, the viewer shows atoms, hover text names structures,
tables sort, filters filter, and the layout fits a 1280-pixel window. Screenshots go to
test-artifacts/browser/."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.build import bulk, graphene, molecule, mx2

from helpers import SCREENSHOTS
from metrics import explore
from metrics.per_structure import score
from orchestrator.datasets import write_extxyz
from orchestrator.merge import write_relaxed, write_table
from orchestrator.runfolder import RunFolder
from orchestrator.report import write_leaderboard, write_run_report

pytestmark = pytest.mark.slow  # figures and a real browser: the unit tier, not the fast one


def _structures() -> dict[str, Atoms]:
    wire = Atoms("Cu4", positions=[[0, 0, 2.4 * i] for i in range(4)], cell=[16, 16, 9.6], pbc=True)
    wire.positions += [8, 8, 0]
    out = {"co-0d": molecule("CO", vacuum=8.0), "cu-1d": wire, "mos2-2d": mx2("MoS2", "2H", a=3.18, vacuum=7.5),
           "c-2d": graphene("C2", a=2.46, vacuum=7.5), "cu-3d": bulk("Cu", "fcc", a=3.61, cubic=True),
           "nacl-3d": bulk("NaCl", "rocksalt", a=5.64)}
    for sid, atoms in out.items():
        atoms.pbc = True
        atoms.info.update(id=sid, energy_ref_ev=-2.0 * len(atoms))
    return out


def built_run(root: Path, name: str = "built-run") -> Path:
    """A run folder as `make bench` leaves it, from real structures scored by the real
    scoring: model `alpha` relaxes everything; `beta` pulls MoS2 apart (fragmented), a
    diverged NaCl, and raises on CO (no relaxed structure)."""
    run = root / name
    run.mkdir(parents=True)
    reference = _structures()
    rng = np.random.default_rng(3)
    rows, relaxed = [], {}
    for model in ("alpha", "beta"):
        for sid, ref in reference.items():
            final = ref.copy()
            final.positions += rng.normal(0, 0.01, final.positions.shape)
            reason = ""
            if model == "beta" and sid == "mos2-2d":
                final.positions[final.positions[:, 2] > final.positions[:, 2].mean() + 1.0] += [0, 0, 9.0]
            elif model == "beta" and sid == "nacl-3d":
                reason = "diverged"
            elif model == "beta" and sid == "co-0d":
                reason, final = "model_error", None
            if final is not None:
                relaxed[(model, sid)] = final
            rows.append({"model": model, "id": sid, "natoms": len(ref), "elements": " ".join(sorted(set(
                ref.get_chemical_symbols()))), "converged": reason == "", "failure_reason": reason,
                "steps": int(rng.integers(3, 90)), "energy_ev": ref.info["energy_ref_ev"] + rng.normal(0, 0.05),
                "energy_ref_ev": ref.info["energy_ref_ev"], "max_force_ev_per_a": 0.03 if not reason else 80.0,
                "wall_s": 0.4, "finished_at": 1.0e9 + len(rows), "error": "boom" if reason == "model_error" else ""})
    table = score(pd.DataFrame(rows), reference, relaxed, {"2D": 7.5, "1D": 12.5, "0D": 20.0})
    write_table(RunFolder(run), table)
    write_relaxed(run / "relaxed.extxyz", table, relaxed)
    write_extxyz(run / "reference.extxyz", list(reference.values()))
    (run / "provenance.json").write_text(json.dumps({
        "run_id": name, "status": "complete", "dataset": {"name": "built", "structures": len(reference)},
        "protocol": {"optimizer": "FIRE", "fmax_ev_per_a": 0.04}, "engine": "ase",
        "devices": [{"name": "cpu", "kind": "cpu"}], "models": {}}))
    write_run_report(run)
    return run


def test_gallery_takes_the_worst_of_each_reason():
    scored = pd.DataFrame({"model": ["m"] * 6, "dimension": ["2D"] * 6, "id": list("abcdef"),
                           "failure_reason": ["fragmented_thickness"] * 4 + ["", ""],
                           "extent_a": [8.0, 12.0, 9.0, 30.0, 3.0, 3.0], "position_mae_a": [np.nan] * 4 + [0.1, 0.5]})
    cases = explore.gallery_cases(scored, {"d": "MoS2"}, per_reason=2)
    assert list(zip(cases["reason"], cases["id"])) == [("fragmented_thickness", "d"), ("fragmented_thickness", "b"),
                                                       ("largest_position_error", "f"),
                                                       ("largest_position_error", "e")]
    assert cases.loc[0, "formula"] == "MoS2"


def test_box_points_carry_ids_and_a_large_box_keeps_only_its_outliers():
    small = pd.DataFrame({"model": "m", "dimension": "3D", "id": [f"s{k}" for k in range(10)], "converged": True,
                          "failure_reason": "", "steps": range(1, 11), "energy_error_mev_per_atom": np.arange(10.0),
                          "position_mae_a": 0.01})
    fig = explore.box_figure(small, "energy_error", {"s3": "Cu4"})
    (trace,) = fig.data
    assert trace.boxpoints == "all" and "s3 Cu4" in trace.text
    large = pd.concat([small.assign(id=[f"{k}-{j}" for k in range(10)]) for j in range(explore.BOX_POINTS // 10 + 1)])
    assert explore.box_figure(large, "energy_error", {}).data[0].boxpoints == "outliers"


def test_a_table_cell_is_escaped_and_a_link_is_a_link():
    table = pd.DataFrame({"run": ["<b>r</b>"], "report": ["r/report/explore.html"], "dimension": ["2D"]})
    text = explore.sortable_table(table, "t", links={"run": "report"})
    assert "&lt;b&gt;r&lt;/b&gt;" in text and "<a href=\"r/report/explore.html\">" in text
    assert "data-dimension=\"2D\"" in text and "<th>report</th>" not in text


def test_the_run_report_writes_an_offline_explore_page(tmp_path):
    run = built_run(tmp_path)
    page = (run / "report" / "explore.html").read_text()
    assert "<script src=" not in page and "<link" not in page and "<iframe" not in page  # nothing fetched
    assert page.count("Plotly.newPlot(") == 3 + 2  # box plots and element maps; the viewer is drawn on a click
    assert "Failure gallery" in page and "fragmented_thickness" in page and "nacl-3d" in page
    write_leaderboard(tmp_path)
    board = (tmp_path / "explore.html").read_text()
    assert "built-run/report/explore.html" in board


def _console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _wait(driver, script: str, seconds: float = 20.0):
    """Poll a script until it returns something truthy."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {script}")


def _coloured_pixels(png: bytes) -> int:
    """Pixels that are neither near-white nor grey: drawn atoms."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return int((spread > 40).sum())


def _save_full_page(driver, name: str) -> None:
    """A screenshot of the whole page, not only the window (Chrome's DevTools protocol)."""
    import base64

    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                                                "scale": 1}})
    (SCREENSHOTS / name).write_bytes(base64.b64decode(shot["data"]))


def test_the_explore_pages_in_a_real_browser(tmp_path, browser):
    run = built_run(tmp_path)
    write_leaderboard(tmp_path)
    browser.get((run / "report" / "explore.html").as_uri())
    plots = _wait(browser, "const p = document.querySelectorAll('.js-plotly-plot');"
                           "return p.length >= 6 && Array.from(p).every(g => g._fullLayout) ? p.length : 0")
    # three box plots, an element map per model, the gallery's viewer
    assert plots == 3 + 2 + 1
    assert _console_errors(browser) == []

    # every 2-D figure has drawn elements: boxes and points, heatmap images
    drawn = browser.execute_script("""
        return Array.from(document.querySelectorAll('.js-plotly-plot')).filter(g => g.id !== 'gallery-viewer')
          .map(g => [g.id, g.querySelectorAll('.boxlayer path, .hm image, .heatmaplayer image').length]);""")
    assert all(count > 0 for _, count in drawn), drawn

    # hover over a drawn point: the label names the structure
    from selenium.webdriver.common.action_chains import ActionChains

    point = browser.find_element("css selector", "#box-energy_error .boxlayer path.point")
    ActionChains(browser).move_to_element(point).perform()
    label = _wait(browser, "const h = document.querySelector('#box-energy_error .hoverlayer .hovertext');"
                           "return h ? h.textContent : ''")
    assert any(sid in label for sid in _structures()), label

    # the viewer shows atoms: its first case's atoms are in the scene and coloured on screen
    viewer = browser.find_element("id", "gallery-viewer")
    browser.execute_script("arguments[0].scrollIntoView()", viewer)
    time.sleep(1.0)
    atoms_drawn = browser.execute_script("const g = document.getElementById('gallery-viewer');"
                                         "return g._fullData.filter(t => t.mode === 'markers').map(t => t._length)")
    assert len(atoms_drawn) in (1, 2) and min(atoms_drawn) > 0
    assert _coloured_pixels(viewer.screenshot_as_png) > 500
    viewer.screenshot(str(SCREENSHOTS / "gallery-viewer.png"))

    # a click on another case shows it
    first = browser.find_element("id", "gallery-caption").text
    browser.find_elements("css selector", "button[data-case]")[-1].click()
    time.sleep(0.5)
    assert browser.find_element("id", "gallery-caption").text != first

    # tables sort on a click
    header = browser.find_element("xpath", "//table[@id='table-failures']//th[normalize-space()='failed']")
    header.click()
    header.click()  # descending
    column = browser.execute_script(
        "const t = document.getElementById('table-failures'); const k = arguments[0].cellIndex;"
        "return Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[k].innerText))", header)
    assert column == sorted(column, reverse=True) and column[0] > 0

    # a molecule fills its scene: the camera fits the atoms, not the 16 Å box around them
    row = browser.find_element("xpath", "//table[@id='gallery-cases']//tr[td[normalize-space()='co-0d']]")
    row.find_element("css selector", "button[data-case]").click()
    time.sleep(0.5)
    spans = browser.execute_script("const s = document.getElementById('gallery-viewer')._fullLayout.scene;"
                                   "return ['xaxis', 'yaxis', 'zaxis'].map(a => s[a].range[1] - s[a].range[0])")
    assert max(spans) < 5.0, spans  # CO is 1.13 Å long, with 1.5 Å around it
    viewer.screenshot(str(SCREENSHOTS / "gallery-molecule.png"))

    # it fits a 1280-pixel window, every table whole (none cut inside its scrolling box)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1280
    assert _tables_cut(browser) == []
    _save_full_page(browser, "run-explore.png")
    assert _console_errors(browser) == []

    browser.get((tmp_path / "explore.html").as_uri())
    _wait(browser, "return document.querySelectorAll('#leaderboard tbody tr').length")
    rows = browser.execute_script("return document.querySelectorAll('#leaderboard tbody tr').length")
    assert rows == 2 * 4  # two models x four dimensionalities
    select = browser.find_element("css selector", "select[data-filter='dimension']")
    from selenium.webdriver.support.ui import Select

    Select(select).select_by_visible_text("2D")
    visible = browser.execute_script("return Array.from(document.querySelectorAll('#leaderboard tbody tr'))"
                                     ".filter(r => r.style.display !== 'none').map(r => r.dataset.dimension)")
    assert visible == ["2D", "2D"]
    link = browser.find_element("css selector", "#leaderboard a").get_attribute("href")
    assert link.endswith("built-run/report/explore.html") and Path(link.removeprefix("file://")).is_file()
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1280
    assert _tables_cut(browser) == []
    _save_full_page(browser, "leaderboard-explore.png")
    assert _console_errors(browser) == []

    for page in (run / "report" / "report.html", tmp_path / "leaderboard.html"):  # the static pages too
        browser.get(page.as_uri())
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 1280, page
        assert _tables_cut(browser) == [], page
    _save_full_page(browser, "run-report.png")


def _tables_cut(browser) -> list:
    """Tables wider than the page, or than the box they scroll in: (index, width, room)."""
    return browser.execute_script("""
        return Array.from(document.querySelectorAll('table')).map((t, k) => {
          const room = Math.min(t.parentElement.clientWidth, document.documentElement.clientWidth);
          return [k, t.scrollWidth, room];
        }).filter(([k, width, room]) => width > room + 1);""")


def test_the_viewer_shows_a_molecule_cut_by_the_cell_boundary_whole():
    co = Atoms("CO", positions=[[0.3, 8, 8], [15.17, 8, 8]], cell=[16, 16, 16], pbc=True)  # 1.13 Å apart
    for relaxed in (None, co.copy()):
        fig = explore.viewer_figure(co, relaxed, "m")
        for trace in (t for t in fig.data if t.mode == "markers"):
            assert np.ptp(trace.x) == pytest.approx(1.13, abs=1e-6)


def test_a_hard_case_on_the_leaderboard_links_to_its_runs_gallery(tmp_path):
    from metrics.report import beyond_the_paper

    run = built_run(tmp_path)
    from orchestrator.report import read_results

    scored = read_results(run / "results.csv")
    third = scored[scored["model"] == "beta"].assign(model="gamma")  # fails what beta fails: hard cases
    scored = pd.concat([scored, third], ignore_index=True)
    beyond = beyond_the_paper([("built-run", scored, {})], {"built-run": "built-run/report/explore.html"})
    hard = beyond["hard_cases"]
    assert set(hard["id"]) == {"co-0d", "mos2-2d", "nacl-3d"} and set(hard["failed"]) == {2}
    page = explore.leaderboard_page(pd.DataFrame({"run": ["built-run"], "dimension": ["0D"], "model": ["alpha"]}),
                                    {"built-run": "built-run/report/explore.html"}, beyond)
    assert '<a href="built-run/report/explore.html#gallery">nacl-3d</a>' in page
    assert 'id="gallery"' in (run / "report" / "explore.html").read_text()
    cases = explore.gallery_cases(scored, {})
    assert set(cases[cases["reason"].str.startswith("hard case")]["id"]) == {"co-0d", "mos2-2d", "nacl-3d"}
