"""The HTML report of a dissection: what it writes, and what a real headless Chromium renders from it."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from discover_ray import build_report
from discover_ray.cli import app
from discover_ray.errors import ReportFolderError
from tests.ray_local.conftest import DeitRuns

LWTA_LAYER = "blocks.1.mlp.act"


@pytest.fixture(scope="module")
def deit_report(deit_runs: DeitRuns, tmp_path_factory):
    """The report of the tiny DeiT CVN run, side by side with its GELU twin."""
    out = tmp_path_factory.mktemp("report") / "cvn"
    report = build_report(deit_runs.root, deit_runs.cvn, out=out, examples=4, top_images=5, twin=deit_runs.twin)
    return report


class _Rows(HTMLParser):
    """Counts the body rows of each example-page table, by the layer its section names."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, int] = {}
        self._layer: str | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "data-layer" in attrs:
            self._layer = attrs["data-layer"]
            self.rows[self._layer] = 0
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._layer:
            self.rows[self._layer] += 1

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False


def test_the_report_holds_cards_examples_plots_and_the_twin(deit_report, deit_runs: DeitRuns):
    folder = deit_report.folder
    assert deit_report.index.is_file() and len(deit_report.layers) == 2 and len(deit_report.examples) == 4
    assert deit_report.thumbnails > 0 and not deit_report.warnings
    assert (folder / "plots/sparsity.png").stat().st_size > 1000 and (folder / deit_report.twin).is_file()
    layer_page = next(folder / p for p in deit_report.layers if "blocks.1.mlp.act" in p)
    assert layer_page.read_text().count('<article class="card"') == 768
    for page in deit_report.examples:  # one winner per block of 16: 48 of 768 units, on every example page
        rows = _Rows()
        rows.feed((folder / page).read_text())
        assert rows.rows[LWTA_LAYER] == 48 and 0 < rows.rows["head"] <= 9
    sources = set(re.findall(r'src="\.\./(img/[0-9a-f]+\.png)"', layer_page.read_text()))
    assert sources and all((folder / s).is_file() for s in sources)  # every thumbnail a card shows was written
    again = build_report(deit_runs.root, deit_runs.cvn, out=folder, examples=4, top_images=5, twin=deit_runs.twin)
    assert again.folder == folder and sorted(p.name for p in folder.parent.iterdir()) == ["cvn"]  # swapped in whole
    assert (folder / ".discover-report").is_file()  # what makes the folder replaceable by the next report


def test_report_errors_name_the_problem(deit_runs: DeitRuns, tmp_path):
    with pytest.raises(KeyError, match="no labels by method 'nope'"):
        build_report(deit_runs.root, deit_runs.cvn, out=tmp_path / "r", method="nope")
    with pytest.raises(KeyError, match="not in the probe set"):
        build_report(deit_runs.root, deit_runs.cvn, out=tmp_path / "r", examples=["no/such.png"])
    assert not (tmp_path / "r").exists() and list(tmp_path.iterdir()) == []  # nothing half-written is left
    runner = CliRunner()
    printed = runner.invoke(app, ["report", deit_runs.cvn, "--store", str(deit_runs.root), "--out", str(tmp_path / "c"),
                                  "--examples", "2", "--top-images", "3"])
    assert printed.exit_code == 0, printed.output
    assert "2 layer pages, 2 example pages" in printed.output and str(tmp_path / "c" / "index.html") in printed.output
    printed = runner.invoke(app, ["report", "nosuchrun", "--store", str(deit_runs.root)])
    assert printed.exit_code == 2 and "no run 'nosuchrun'" in printed.output


def test_a_folder_the_report_did_not_write_is_refused_and_kept(deit_runs: DeitRuns, tmp_path):
    theirs = tmp_path / "notes"
    theirs.mkdir()
    (theirs / "thesis.txt").write_text("someone's file")
    with pytest.raises(ReportFolderError, match="not empty and holds no earlier report"):
        build_report(deit_runs.root, deit_runs.cvn, out=theirs, examples=1)
    printed = CliRunner().invoke(app, ["report", deit_runs.cvn, "--store", str(deit_runs.root), "--out", str(theirs)])
    assert printed.exit_code == 2 and "nothing was written" in " ".join(printed.output.split())
    assert sorted(p.name for p in theirs.iterdir()) == ["thesis.txt"] and (theirs / "thesis.txt").read_text() == "someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no staging folder left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert build_report(deit_runs.root, deit_runs.cvn, out=empty, examples=1).index.is_file()


@pytest.mark.browser
def test_the_report_renders_in_chromium(deit_report, chromium, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = chromium
    folder = deit_report.folder

    def open_page(relative: str) -> None:
        driver.get((folder / relative).resolve().as_uri())
        WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")

    def images_loaded(limit: int | None = None) -> bool:
        return driver.execute_script(
            "const ims = Array.from(document.images).slice(0, arguments[0] || undefined);"
            "ims.forEach(i => i.scrollIntoView());"
            "return ims.length > 0 && ims.every(i => i.complete && i.naturalWidth > 0);", limit)

    open_page("index.html")
    WebDriverWait(driver, 20).until(lambda d: images_loaded())
    assert driver.find_element(By.CSS_SELECTOR, "a.button").get_attribute("href").endswith("twin.html")

    layer_page = next(p for p in deit_report.layers if "blocks.1.mlp.act" in p)
    open_page(layer_page)
    cards = driver.find_elements(By.CSS_SELECTOR, ".card")
    assert len(cards) == 768
    WebDriverWait(driver, 20).until(lambda d: images_loaded(40))
    shot = tmp_path / "layer.png"
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    visible = "return Array.from(document.querySelectorAll('.card')).filter(c => !c.hidden)"
    concept = driver.execute_script(visible + "[0].querySelector('.label').firstChild.textContent.trim()")
    word = concept.split()[-1]
    search = driver.find_element(By.ID, "search")
    search.send_keys(word)
    found = driver.execute_script(visible + ".map(c => [JSON.parse(c.dataset.ranked), c.querySelector('.match').textContent])")
    assert 0 < len(found) < 768 and driver.find_element(By.ID, "shown").text == f"{len(found)} of 768 units"
    ranks = []
    for ranked, note in found:  # every shown card says where it matched, its own label first
        rank = next((i for i, c in enumerate(ranked) if word in c), None)
        assert rank is not None or note.startswith("matches the label by")
        assert note == ("matches its label" if rank == 0 else f"matches its concept #{rank + 1}" if rank else note)
        ranks.append(len(ranked) + 1 if rank is None else rank)
    assert ranks == sorted(ranks) and ranks[0] == 0  # units whose label matches come first
    search.clear()
    search.send_keys("no concept is called this")
    assert driver.execute_script(visible + ".length") == 0
    search.clear()
    search.send_keys(" ")  # an input event with an empty query shows every card again
    assert driver.execute_script(visible + ".length") == 768

    Select(driver.find_element(By.ID, "sort")).select_by_value("score-asc")
    scores = driver.execute_script("return Array.from(document.querySelectorAll('.card')).map(c => +c.dataset.score)")
    assert scores == sorted(scores)

    open_page(deit_report.examples[0])
    WebDriverWait(driver, 20).until(lambda d: images_loaded())
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('section.active')).map(s => "
        "[s.dataset.layer, s.querySelectorAll('tbody tr').length, s.querySelector('.count').textContent])")
    assert [LWTA_LAYER, 48, "48"] in rows

    open_page(deit_report.twin)
    WebDriverWait(driver, 20).until(lambda d: images_loaded())
    sides = driver.execute_script(
        "return Array.from(document.querySelectorAll('.pair-block')[0].querySelectorAll('.side .meta'))"
        ".map(m => m.textContent)")
    assert sides[0].startswith("48 of 768 active") and not sides[1].startswith("48 of 768")
    print(f"screenshot: {shot}")
