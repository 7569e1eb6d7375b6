"""The slide decks (slides/build.py): one per chapter, offline, and they render in a browser.

Builds every deck with the documented command, checks each deck's HTML against its notebook's
slide metadata and each chapter's title against the one style ("Chapter N · Title"), then opens
each deck from file:// in headless Chromium, driven through the Chrome DevTools Protocol over a
pipe (slides/chromium.py, standard library only), and requires: the first slide shown, no
console error or uncaught exception, not one request that leaves the disk, reveal.js counting
the slides the notebook declares, and every slide fitting a 1280x720 screen (a failure there:
run `python slides/paginate.py`). A screenshot of the first deck's title slide is written to
slides/build/title-slide.png.

Needs Node.js/npm (the first build runs `npm ci` in slides/) and Chromium (Debian: apt-get
install chromium). Without them these tests skip locally and FAIL under CI (env var CI set).
"""
import base64
import html
import json
import re
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest

pytestmark = pytest.mark.slow  # builds the decks with npm and renders them in Chromium

from notebook_tools import ROOT, all_notebooks

sys.path.insert(0, str(ROOT / "slides"))
from build import chapter_number, title_of  # noqa: E402
from chromium import browser, each_slide, executable, open_deck  # noqa: E402  (the driver slides/paginate.py uses too)

SLIDES = ROOT / "slides"
BUILD = SLIDES / "build"
NOTEBOOKS = all_notebooks()
SCREENSHOT = BUILD / "title-slide.png"


def missing(what):
    """Skip locally, fail under CI: a missing tool must never look like a pass."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI must test the slide decks: .ci/run installs it)", pytrace=False)
    pytest.skip(what)


def deck_of(notebook):
    return BUILD / (notebook.stem + ".slides.html")


def slide_types(notebook):
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    return [c["metadata"].get("slideshow", {}).get("slide_type", "-") for c in nb["cells"]]


@pytest.fixture(scope="module")
def decks():
    if shutil.which("npm") is None and not (SLIDES / "node_modules").is_dir():
        missing("npm is not installed: slides/build.py needs Node.js and npm to fetch reveal.js")
    result = subprocess.run([sys.executable, "slides/build.py"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"python slides/build.py failed:\n{result.stdout}\n{result.stderr}"
    return {nb: deck_of(nb) for nb in NOTEBOOKS}


class DeckHTML(HTMLParser):
    """Section nesting and every URL the page loads by itself (scripts, stylesheets, ...)."""

    def __init__(self, text):
        super().__init__()
        self.depth = 0
        self.sections = {}  # nesting depth -> count
        self.loaded = []    # (tag, url)
        self.solutions = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.depth += 1
            self.sections[self.depth] = self.sections.get(self.depth, 0) + 1
        elif tag == "details" and "solution" in (attrs.get("class") or "").split():
            self.solutions += 1
        for attr in ("src", "href"):
            if attrs.get(attr) and not (tag == "a" and attr == "href"):  # links are not loaded
                self.loaded.append((tag, attrs[attr]))

    def handle_endtag(self, tag):
        if tag == "section":
            self.depth -= 1


def test_one_deck_per_chapter(decks):
    built = sorted(p.name for p in BUILD.glob("*.slides.html"))
    assert built == sorted(deck.name for deck in decks.values())
    assert len(built) == len(NOTEBOOKS) >= 1
    index = (BUILD / "index.html").read_text(encoding="utf-8")
    for deck in decks.values():
        assert f'href="{deck.name}"' in index


def test_the_index_lists_the_chapters_in_course_order_with_the_readmes_numbers(decks):
    index = (BUILD / "index.html").read_text(encoding="utf-8")
    numbers = re.findall(r'<span class="number">([0-9a-z]+)</span>', index)
    assert numbers == ["1", "1b", "2", "3", "4", "4b", "4c", "5", "5b", "6a", "6b", "6c"], numbers
    # Each entry: the chapter's number, then its title without the "Chapter N · " it repeats.
    titles = re.findall(r'</span><a href="[^"]+">([^<]*)</a>', index)
    assert titles == [html.escape(title_of(nb).removeprefix(f"Chapter {chapter_number(nb)} · "))
                      for nb in sorted(NOTEBOOKS, key=lambda nb: numbers.index(chapter_number(nb)))], titles
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for number in numbers:
        assert f"| {number} · " in readme, f"the README's chapter table has no row {number}"


def test_deck_titles_in_one_style():
    """Every chapter's title, the first slide of its deck, reads "Chapter N · Title" with N its
    number in the README (and the index lists it as N and the Title)."""
    wrong = [f"{nb.relative_to(ROOT)}: {title_of(nb)!r}" for nb in NOTEBOOKS
             if not re.fullmatch(rf"Chapter {re.escape(chapter_number(nb))} · \S.*", title_of(nb))]
    assert not wrong, "titles not in the style '# Chapter N · Title':\n" + "\n".join(wrong)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_deck_has_a_slide_per_slide_cell(decks, notebook):
    """reveal.js nests: a "slide" cell opens a horizontal <section> (a top-level slide) holding
    a vertical <section> for itself and one more per "subslide" cell below it. So the deck has
    as many top-level sections as "slide" cells, and as many navigable slides (inner sections)
    as "slide" plus "subslide" cells; nothing nests deeper."""
    types = slide_types(notebook)
    visible = [t for t in types if t not in ("skip", "notes")]
    assert visible and visible[0] == "slide", \
        f"{notebook.name}: the first shown cell (the title) must have slide_type 'slide'"
    page = DeckHTML(decks[notebook].read_text(encoding="utf-8"))
    assert page.depth == 0, "unbalanced <section> tags"
    assert page.sections.get(1, 0) == types.count("slide")
    assert page.sections.get(2, 0) == types.count("slide") + types.count("subslide")
    assert set(page.sections) == {1, 2}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_deck_loads_nothing_from_the_web(decks, notebook):
    page = DeckHTML(decks[notebook].read_text(encoding="utf-8"))
    assert any(tag == "script" for tag, _ in page.loaded), "parser found no scripts"
    remote = [(tag, url) for tag, url in page.loaded
              if not url.startswith("data:") and ("://" in url or url.startswith("//"))]
    assert not remote, f"loaded from the web: {remote}"
    for tag, url in page.loaded:
        if not url.startswith(("data:", "#")):  # embedded images, references inside the page
            path = (BUILD / url.split("?")[0]).resolve()
            assert path.is_file() and BUILD in path.parents, f"<{tag}> {url} is not a file in slides/build/"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_solutions_are_folded(decks, notebook):
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    hidden = [c for c in nb["cells"] if c["cell_type"] == "code"
              and c["metadata"].get("jupyter", {}).get("source_hidden")
              and c["metadata"].get("slideshow", {}).get("slide_type") != "skip"]
    assert DeckHTML(decks[notebook].read_text(encoding="utf-8")).solutions == len(hidden)


# --- In Chromium (slides/chromium.py) -------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    if executable() is None:
        missing("Chromium is not installed (Debian: apt-get install chromium)")
    with browser(tmp_path_factory.mktemp("chromium")) as started:
        yield started


SHOWN_SLIDE = """(() => {
  const shown = document.querySelector('.reveal .slides > section.present > section.present');
  const first = document.querySelector('.reveal .slides > section > section');
  const box = shown ? shown.getBoundingClientRect() : {width: 0, height: 0};
  const number = document.querySelector('.reveal .slide-number');
  return {isFirst: shown !== null && shown === first, text: shown ? shown.innerText : '',
          width: box.width, height: box.height, number: number ? number.innerText : ''};
})()"""


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_deck_renders_in_chromium(decks, chromium, notebook):
    session, target, problems = open_deck(chromium, decks[notebook])
    try:
        shown = chromium.evaluate(session, SHOWN_SLIDE)
    finally:
        chromium.call("Target.closeTarget", targetId=target)
    assert not problems, f"{decks[notebook].name} in Chromium:\n" + "\n".join(problems)
    assert shown["isFirst"] and shown["width"] > 0 and shown["height"] > 0, shown
    text = " ".join(shown["text"].split()).casefold()  # the theme shows headings in capitals
    assert title_of(notebook).casefold() in text, shown["text"][:300]
    types = slide_types(notebook)
    assert shown["number"].replace(" ", "") == f"1/{types.count('slide') + types.count('subslide')}", \
        f"reveal.js counts {shown['number']!r} slides"


SLIDE_HEIGHTS = """(slide, at) => {
  const heading = slide.querySelector('h1, h2, h3, h4');
  const cells = [...slide.querySelectorAll('.jp-Cell')].filter(cell => !cell.closest('aside.notes'));
  return {slide: `${at.h + 1}.${at.v + 1}`, height: slide.scrollHeight, fit: slide.dataset.fit,
          cells: cells.length, starts: (heading ? heading.innerText : slide.innerText).trim().slice(0, 70)};
}"""


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_slide_fits_a_1280x720_screen(decks, chromium, notebook):
    """No slide scrolls: each one's content, every fragment shown, fits the height reveal.js lays
    it out in, and so a 1280x720 screen (reveal.js scales the whole slide to the screen). Only a
    slide of one cell may be scaled down to fit (the template's script does it): several cells
    that do not fit together belong on subslides of their own (slides/paginate.py puts them there)."""
    session, target, _ = open_deck(chromium, decks[notebook])
    try:
        chromium.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=720,
                      deviceScaleFactor=1, mobile=False)
        found = each_slide(chromium, session, SLIDE_HEIGHTS)
    finally:
        chromium.call("Target.closeTarget", targetId=target)
    found["tall"] = [slide for slide in found["slides"] if slide["height"] > found["height"]]
    found["squeezed"] = [slide for slide in found["slides"] if slide.get("fit") and slide["cells"] > 1]
    assert not found["tall"], (f"{notebook.name}: slides taller than {found['height']} px (split the cell, "
                               f"or start a subslide):\n" + "\n".join(map(str, found["tall"])))
    assert not found["squeezed"], (f"{notebook.name}: slides of several cells scaled down to fit (run "
                                   f"`python slides/paginate.py`):\n" + "\n".join(map(str, found["squeezed"])))


def test_title_slide_screenshot(decks, chromium):
    """A 1280x720 PNG of the first chapter's title slide, with something drawn on it."""
    from matplotlib.image import imread
    import numpy as np

    deck = decks[NOTEBOOKS[0]]
    SCREENSHOT.unlink(missing_ok=True)
    session, target, problems = open_deck(chromium, deck)
    try:
        chromium.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=720,
                      deviceScaleFactor=1, mobile=False)
        size = chromium.evaluate(session, "new Promise(done => requestAnimationFrame(() => "
                                          "requestAnimationFrame(() => done([innerWidth, innerHeight]))))")
        assert size == [1280, 720], size  # reveal.js has laid the slide out again for this size
        png = chromium.call("Page.captureScreenshot", session, format="png")["data"]
    finally:
        chromium.call("Target.closeTarget", targetId=target)
    assert not problems, problems
    SCREENSHOT.write_bytes(base64.b64decode(png))
    image = imread(SCREENSHOT)
    assert image.shape[:2] == (720, 1280), image.shape
    gray = image[..., :3].mean(axis=2)
    background = np.median(gray)
    drawn = np.abs(gray - background) > 0.2
    assert 0.005 < drawn.mean() < 0.6, f"{drawn.mean():.2%} of the screenshot differs from its background"


DIAGRAM_SLIDE = BUILD / "diagram-slide.png"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_decks_hold_the_chapters_diagrams(decks, notebook):
    """Every diagram cell's stored PNG is embedded in the deck (the decks need no file besides)."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    diagram_cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "diagrams.show(" in "".join(c["source"])
                     and c["metadata"].get("slideshow", {}).get("slide_type") != "skip"]
    deck = decks[notebook].read_text(encoding="utf-8")
    for cell in diagram_cells:
        png = next(out["data"]["image/png"] for out in cell["outputs"] if "image/png" in out.get("data", {}))
        png = "".join(png) if isinstance(png, list) else png
        assert png.strip()[:200] in deck, f"a diagram of {notebook.name} is missing from its deck"


def test_a_diagram_slide_screenshot(decks, chromium):
    """A 1280x720 PNG of the slide that shows chapter 3's first diagram (GPTModel end to end)."""
    from matplotlib.image import imread
    import numpy as np

    deck = next(deck for nb, deck in decks.items() if nb.name == "LLM-GPT-arch.ipynb")
    DIAGRAM_SLIDE.unlink(missing_ok=True)
    session, target, problems = open_deck(chromium, deck)
    try:
        chromium.call("Emulation.setDeviceMetricsOverride", session, width=1280, height=720,
                      deviceScaleFactor=1, mobile=False)
        shown = chromium.evaluate(session, """new Promise(done => require(["lib/reveal.js/dist/reveal.js"], Reveal => {
          const img = document.querySelector('.reveal .slides img');
          const slide = img.closest('section');
          const indices = Reveal.getIndices(slide);
          Reveal.slide(indices.h, indices.v, slide.querySelectorAll('.fragment').length - 1);
          setTimeout(() => {  // after the slide transition (reveal.js animates for about 0.8 s)
            const box = img.getBoundingClientRect();
            done({visible: box.width > 200 && box.height > 100 && box.left >= 0 && box.right <= innerWidth
                           && box.top < innerHeight && box.bottom > 0, slide: Reveal.getIndices()});
          }, 1500);
        }))""")
        png = chromium.call("Page.captureScreenshot", session, format="png")["data"]
    finally:
        chromium.call("Target.closeTarget", targetId=target)
    assert not problems, problems
    assert shown["visible"], shown
    DIAGRAM_SLIDE.write_bytes(base64.b64decode(png))
    image = imread(DIAGRAM_SLIDE)
    assert image.shape[:2] == (720, 1280), image.shape
    gray = image[..., :3].mean(axis=2)
    assert (np.abs(gray - np.median(gray)) > 0.2).mean() > 0.01, "the diagram slide looks empty"
